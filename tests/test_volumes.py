"""3D in pixel space: MONAI's 3D UNet trains on 3D phantoms and writes volumes with masks."""

import h5py
import numpy as np

from engine.config import load_preset
from engine.data.phantoms import make_phantoms
from engine.inference.sample import SampleJob
from engine.io.medsynth_h5 import read_image_set
from engine.io.medsynth_writer import write_image_set
from engine.jobs import Loss, Requests
from engine.training.train import TrainJob


def tiny_3d(steps: int):
    cfg = load_preset("demo-3d")
    cfg.model.image_size = 16
    cfg.model.block_out_channels = [8, 16]
    cfg.model.attention_levels = [False, True]
    cfg.model.attention_head_dim = 8
    cfg.train.steps = steps
    cfg.train.log_every = 2
    cfg.train.checkpoint_every = 1000
    return cfg


def test_3d_model_trains_and_samples_volumes_with_masks(tmp_path):
    data = write_image_set(tmp_path / "vol.h5", make_phantoms(6, size=16, dims=3))
    volumes = read_image_set(data)
    assert volumes.images.shape == (6, 1, 16, 16, 16) and volumes.spatial_dims == 3
    events = []
    TrainJob(tiny_3d(6), tmp_path / "run", data=volumes).run(events.append, Requests())
    losses = [e.loss for e in events if isinstance(e, Loss)]
    assert len(losses) == 6 and all(np.isfinite(losses))  # a 6-step run logs every step
    out = tmp_path / "synth.h5"
    SampleJob(tmp_path / "run", 3, out, steps=3, batch=2, seed=7, redraw_mismatches=False).run(
        lambda ev: None, Requests())
    with h5py.File(out) as f:
        assert f.attrs["spatial_dims"] == 3 and f.attrs["n_complete"] == 3
        assert f["images"].shape == (3, 1, 16, 16, 16) and f["images"].chunks == (1, 1, 16, 16, 16)
        assert f["masks"].shape == (3, 16, 16, 16) and f["masks"].dtype == np.uint8
        assert list(f["seeds"][:]) == [7, 8, 9] and set(f["labels"][:]) <= {0, 1, 2, 3}
        assert np.isfinite(f["images"][:]).all()


def test_3d_model_with_masks_as_condition_generates_volumes_for_given_masks(tmp_path):
    volumes = read_image_set(write_image_set(tmp_path / "vol.h5", make_phantoms(4, size=16, dims=3, seed=2)))
    cfg = tiny_3d(2)
    cfg.data.mask_mode = "condition"
    TrainJob(cfg, tmp_path / "run", data=volumes).run(lambda ev: None, Requests())
    out = tmp_path / "synth.h5"
    SampleJob(tmp_path / "run", 2, out, steps=2, batch=2, seed=3).run(lambda ev: None, Requests())
    with h5py.File(out) as f:
        assert f["images"].shape == (2, 1, 16, 16, 16)
        # Each volume was generated for a training mask, which the file keeps beside it.
        for m in f["masks"][:]:
            assert any(np.array_equal(m, v) for v in volumes.masks)


def test_a_file_of_volumes_opens_in_the_gallery_and_the_three_views(tmp_path, qtbot):
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    from medsynth_gui.main_window import MainWindow

    s = make_phantoms(3, size=16, dims=3)
    path = write_image_set(tmp_path / "vol.h5", s)
    win = MainWindow()
    win.quiet_errors = True
    qtbot.addWidget(win)
    assert win.open_path(path) and win.gallery.count() == 3
    win.open_sample(str(path), 1)
    assert len(win.viewer.slice_views) == 3
    # Stored (D, H, W) → the viewer's voxel order (X, Y, Z).
    np.testing.assert_array_equal(win.current.image, s.images[1, 0].transpose(2, 1, 0))
    np.testing.assert_array_equal(win.current.mask, s.masks[1].transpose(2, 1, 0))
