import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.errors import InputError
from engine.io.medsynth_h5 import (
    Header,
    open_file,
    read_header,
    read_image_set,
    read_metrics,
    read_sample,
    write_metrics,
)
from engine.io.medsynth_writer import SampleWriter, write_image_set
from tests.data import make_old_h5 as old


def test_phantom_set_round_trips_through_hdf5(tmp_path, phantoms16):
    path = write_image_set(tmp_path / "p.h5", phantoms16)
    back = read_image_set(path)
    np.testing.assert_array_equal(back.images, phantoms16.images)
    np.testing.assert_array_equal(back.masks, phantoms16.masks)
    np.testing.assert_array_equal(back.labels, phantoms16.labels)
    assert back.class_names == phantoms16.class_names and back.label_names == phantoms16.label_names
    assert back.modality == "MR" and back.kind == "real"


def test_count_only_covers_written_batches(tmp_path):
    w = SampleWriter(tmp_path / "w.h5", 5, (1, 4, 4), masks=True, labels=False)
    w.append(np.ones((2, 1, 4, 4), np.float32), np.array([7, 8]), np.ones((2, 4, 4), np.uint8))
    # A second reader sees the two complete samples while the writer still holds the file (written beside
    # its name until it is done).
    assert not (tmp_path / "w.h5").exists()
    with open_file(w.writing) as f:
        assert f.attrs["n_complete"] == 2 and list(f["seeds"][:2]) == [7, 8]
    with pytest.raises(ValueError):
        w.append(np.ones((4, 1, 4, 4), np.float32), np.arange(4))
    w.close()
    assert read_image_set(tmp_path / "w.h5").images.shape == (2, 1, 4, 4)


def test_not_medsynth_files_are_named(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InputError, match="plain.h5.*not a MedSynth file"):
        open_file(plain)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="junk.h5.*not a readable HDF5"):
        open_file(junk)


@pytest.mark.slow
def test_file_stays_readable_when_the_writer_is_killed(tiny_run, tmp_path):
    target = tmp_path / "killed.h5"
    out = tmp_path / "killed.h5.partial"  # what the writer fills, and what a kill leaves
    cmd = [sys.executable, "-m", "medsynth", "sample", str(tiny_run), "--n", "20000", "--batch", "2",
           "--steps", "8", "--out", str(target), "--keep-mismatched"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.time() + 120
        complete = 0
        while time.time() < deadline and complete < 6:
            time.sleep(0.3)
            if out.exists():
                try:
                    # The writer holds HDF5's file lock; readers of a growing file skip it.
                    with h5py.File(out, "r", locking=False) as f:
                        complete = int(f.attrs["n_complete"])
                except OSError:
                    pass  # opened between creation and the first flush
        assert complete >= 6, "the sampler never got going"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with h5py.File(out, "r") as f:
        n = int(f.attrs["n_complete"])
        assert 6 <= n < 20000
        images = f["images"][:n]
        assert np.isfinite(images).all() and (np.abs(images).reshape(n, -1).max(axis=1) > 0).all()
        assert list(f["seeds"][:n]) == list(range(n))
    assert len(read_image_set(out)) == n and not target.exists()


def test_a_set_of_volumes_keeps_its_affine_through_the_file(tmp_path):
    from engine.data.phantoms import make_phantoms
    from engine.io.medsynth_h5 import read_image_set
    from engine.io.medsynth_writer import write_image_set

    s = make_phantoms(2, size=8, dims=3)
    s.spacing = (1.5, 1.5, 2.0)
    s.affine = np.diag([1.5, 1.5, 2.0, 1.0])
    s.affine[:3, 3] = [-5.25, -5.25, -7.0]
    back = read_image_set(write_image_set(tmp_path / "v.h5", s))
    np.testing.assert_allclose(back.affine, s.affine)
    assert back.spacing == (1.5, 1.5, 2.0)


def test_the_header_round_trips_every_field(tmp_path):
    h = Header(kind="real", spatial_dims=3, class_names=["a", "b"], label_names={1: "liver", 2: "tumour"},
               mask_coding={1: 127, 2: 254}, spacing=(0.7, 0.8, 2.5),
               affine=np.array([[-0.7, 0, 0, 1], [0, -0.8, 0, 2], [0, 0, 2.5, 3], [0, 0, 0, 1]]),
               intensity_units="HU", normalisation={"modality": "CT", "lo": -1000.0, "hi": 1000.0},
               config={"data": {"path": "ct"}, "model": {"image_size": 32}}, checkpoint_sha256="cd" * 32,
               medsynth_version="9.9", created="2026-01-02T03:04:05+00:00", n_planned=7, n_complete=5,
               format="medsynth", format_version=1)
    with h5py.File(tmp_path / "h.h5", "w") as f:
        f.attrs.update(h.to_attrs())
        f.create_dataset("images", data=np.zeros((7, 1, 2, 2, 2), np.float32))
    with open_file(tmp_path / "h.h5") as f:
        back = read_header(f)
    for name in Header.__dataclass_fields__:
        mine, theirs = getattr(h, name), getattr(back, name)
        if isinstance(mine, np.ndarray):
            np.testing.assert_array_equal(theirs, mine)
        else:
            assert theirs == mine and type(theirs) is type(mine), name
    # Every field above differs from its default, so none came back by luck.
    default = Header()
    assert all(not np.array_equal(getattr(h, n), getattr(default, n)) for n in Header.__dataclass_fields__
               if n not in ("format", "format_version"))


def test_a_header_without_counts_takes_them_from_the_images(tmp_path):
    with h5py.File(tmp_path / "bare.h5", "w") as f:
        f.attrs["format"] = "medsynth"
        f.create_dataset("images", data=np.zeros((4, 1, 3, 5, 6), np.float32))
    with open_file(tmp_path / "bare.h5") as f:
        h = read_header(f)
    assert (h.n_planned, h.n_complete, h.spatial_dims, h.spacing, h.class_names) == (4, 4, 3, None, [])


def test_metrics_merge_keeps_earlier_keys_and_replace_starts_afresh(tmp_path):
    path = write_image_set(tmp_path / "m.h5", _tiny_set())
    with h5py.File(path, "r+") as f:
        write_metrics(f, {"frd": 2.0}, {"frd": {"value": 2.0}})
        write_metrics(f, {"fid": 10.0}, {"fid": {"value": 10.0}}, arrays={"nn_corr": np.array([0.1, 0.2])},
                      array_attrs={"train_data": "train.h5"})
        write_metrics(f, {"redrawn": 3.0})  # figures alone: they are the summary entry too
    with open_file(path) as f:
        figures, summary = read_metrics(f)
        assert f["metrics/nn_corr"].attrs["train_data"] == "train.h5"
    assert figures == {"frd": 2.0, "fid": 10.0, "redrawn": 3.0}
    assert summary == {"frd": {"value": 2.0}, "fid": {"value": 10.0}, "redrawn": 3.0}
    with h5py.File(path, "r+") as f:
        write_metrics(f, {"frd": 1.0}, {"frd": {"value": 1.0}}, replace=True)
    with open_file(path) as f:
        assert read_metrics(f) == ({"frd": 1.0}, {"frd": {"value": 1.0}})
        assert "nn_corr" in f["metrics"]  # arrays stay until an evaluation writes new ones


def test_a_file_mid_write_reads_only_its_complete_samples(tmp_path):
    from engine.io.sources.h5 import sample_view

    s = _tiny_set()
    path = tmp_path / "live.h5"
    with SampleWriter(path, 4, s.images.shape[1:], masks=True, labels=True, class_names=["x", "y"]) as w:
        w.append(s.images[:2], np.array([5, 6]), s.masks[:2], s.labels[:2])
        live = w.writing  # filled beside its name until done
        with open_file(live) as f:
            h = read_header(f)
            assert (h.n_planned, h.n_complete) == (4, 2)
            assert read_sample(f, 1).seed == 6
            with pytest.raises(InputError, match="live.h5.partial: has no complete sample 2 \\(0..1\\)"):
                read_sample(f, 2)
        assert len(read_image_set(live)) == 2
        with pytest.raises(InputError, match="no complete sample 3"):
            sample_view(live, 3)
        w.append(s.images[2:3], np.array([7]), s.masks[2:3], s.labels[2:3])
        assert len(read_image_set(live)) == 3
    assert len(read_image_set(path)) == 3 and not live.exists()


def test_an_older_builds_2d_file_reads_through_the_engine():
    e = old.expected_2d()
    back = read_image_set(old.FILE_2D)
    np.testing.assert_array_equal(back.images, e["images"])
    np.testing.assert_array_equal(back.masks, e["masks"])
    np.testing.assert_array_equal(back.labels, e["labels"])
    assert back.names == e["names"] and back.class_names == old.CLASS_NAMES
    assert back.label_names == old.LABEL_NAMES and back.mask_coding == old.MASK_CODING
    assert back.spacing == old.SPACING_2D and back.modality == "MR" and back.kind == "synthetic"
    with open_file(old.FILE_2D) as f:
        h = read_header(f)
        s = read_sample(f, 2)
        assert read_metrics(f) == (old.FIGURES, old.SUMMARY)
    assert (h.format_version, h.n_planned, h.n_complete, h.spatial_dims) == (1, old.N_PLANNED_2D, 3, 2)
    assert h.normalisation == old.NORMALISATION and h.intensity_units == "a.u." and h.checkpoint_sha256 == "ab" * 32
    assert h.config == {"data": {"path": "phantoms.h5"}} and h.volume_affine is None
    np.testing.assert_array_equal(s.image, e["images"][2])
    np.testing.assert_array_equal(s.mask, e["masks"][2])
    assert (s.label, s.seed, s.name) == (1, 9, e["names"][2])


def test_an_older_builds_3d_file_reads_through_the_engine():
    e = old.expected_3d()
    back = read_image_set(old.FILE_3D)
    np.testing.assert_array_equal(back.images, e["images"])
    np.testing.assert_array_equal(back.masks, e["masks"])
    assert back.labels is None and back.names is None and back.kind == "real" and back.modality == "CT"
    assert back.spacing == old.SPACING_3D and back.label_names == old.LABEL_NAMES
    np.testing.assert_array_equal(back.affine, old.AFFINE_3D)


def test_an_older_builds_files_read_through_the_apps_loader():
    from engine.io.sources.h5 import sample_view
    from medsynth_gui.loaders import h5_names

    e = old.expected_2d()
    shown = sample_view(old.FILE_2D, 1)
    np.testing.assert_array_equal(shown.image, e["images"][1, 0])
    np.testing.assert_array_equal(shown.mask, e["masks"][1])
    assert shown.title == f"medsynth_v1_2d.h5 #1 · {e['names'][1]} · 1 lesion · seed 8"
    assert shown.spacing == old.SPACING_2D[::-1] and shown.affine is None  # (rows, cols) = (y, x)
    assert shown.label_names == old.LABEL_NAMES and shown.units == "a.u."
    assert h5_names(old.FILE_2D)[:3] == e["names"]
    e = old.expected_3d()
    vol = sample_view(old.FILE_3D, 1)
    np.testing.assert_array_equal(vol.image, np.transpose(e["images"][1, 0], (2, 1, 0)))  # (X, Y, Z)
    np.testing.assert_array_equal(vol.mask, np.transpose(e["masks"][1], (2, 1, 0)))
    assert vol.spacing == old.SPACING_3D and vol.units == "HU"
    np.testing.assert_array_equal(vol.affine, old.AFFINE_3D)


def test_an_older_builds_file_reads_in_the_apps_gallery(qtbot):
    pytest.importorskip("pytestqt")
    from medsynth_gui.thumbnails import ThumbnailModel

    e = old.expected_2d()
    m = ThumbnailModel()
    m.load(old.FILE_2D)
    assert (m.n_planned, m.n_complete, m.rowCount()) == (old.N_PLANNED_2D, 3, 3)
    assert m.class_names == old.CLASS_NAMES and m.label_names == old.LABEL_NAMES
    assert m.header.kind == "synthetic" and m.window == (0.0, 100.0)
    assert m.aspect == old.SPACING_2D[1] / old.SPACING_2D[0]
    np.testing.assert_array_equal(m.labels, e["labels"])
    np.testing.assert_array_equal(m.seeds, e["seeds"])
    m.load(old.FILE_3D)
    assert m.volume and m.n_complete == 2 and m.labels is None


def _tiny_set():
    from engine.data.dataset import ImageSet

    rng = np.random.default_rng(0)
    return ImageSet(images=rng.random((3, 1, 6, 6), dtype=np.float32), masks=(rng.random((3, 6, 6)) > 0.7)
                    .astype(np.uint8), labels=np.array([0, 1, 0]), class_names=["x", "y"])


def test_an_older_builds_file_is_described_and_exported(tmp_path):
    from PIL import Image

    from engine.export import export
    from engine.info import describe

    text = describe(old.FILE_2D)
    assert "MedSynth HDF5 v1 (synthetic), 3 of 4 samples complete" in text
    assert "classes: no lesion, 1 lesion" in text and "per class: 1, 2" in text
    assert "mask labels: 1=lesion, 2=rim" in text and "mask coding (label → value in the user's files): 1 → 127" \
        in text
    assert "intensity: MR a.u. range [0.0, 100.0]" in text and "spacing: [0.5, 0.75]" in text
    assert "metrics: frd=1.25, nn_share_above=0" in text
    assert "orientation:" in describe(old.FILE_3D)
    r = export(old.FILE_2D, tmp_path / "png", "png")
    assert r["n"] == 3
    rows = (tmp_path / "png" / "samples.csv").read_text().splitlines()
    assert rows[1:] == ["images/synth_00000.png,masks/synth_00000.png,7,0,no lesion",
                        "images/synth_00001.png,masks/synth_00001.png,8,1,1 lesion",
                        "images/synth_00002.png,masks/synth_00002.png,9,1,1 lesion"]
    # Masks come back in the user's grey levels, as the file's mask coding says.
    assert set(np.unique(np.asarray(Image.open(tmp_path / "png" / "masks" / "synth_00000.png")))) == {0, 127, 254}
