"""Latent diffusion in 2D: chest X-ray-style folders (16-bit PNGs, masks, labels.csv) train an autoencoder and then
a diffusion model on its latent; samples come back as 16-bit X-rays with masks in HDF5; each stage stops and
resumes; the memory estimate refuses a 2D latent run that cannot fit and names what would make it fit."""

from __future__ import annotations

import copy
import csv
import re

import h5py
import numpy as np
import pytest
from PIL import Image

from engine.config import load_preset
from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.export import export
from engine.inference.sample import SampleJob
from engine.info import describe
from engine.jobs import Cancelled, Progress, Requests, execute
from engine.models.networks import io_channels
from engine.runtime import memory
from engine.training import checkpoints
from engine.training.run_dir import RunDir
from engine.training.train import TrainJob
from tests.conftest import StopAfter

TOP = 4095  # 12-bit detector values, stored in 16-bit PNGs as X-ray archives do
N = 20  # enough that stage 1 holds two images back to measure its reconstruction error on
GIB = 2**30


def cxr_folder(root, n: int = N, size: int = 32):
    """images/*.png (16-bit, 0..4095), masks/*.png (grey levels 0 / 128 / 255) and labels.csv (stem,class),
    drawn from the phantoms so the class (lesion count) and the mask agree with the image."""
    ph = make_phantoms(n, size=size, seed=11)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lo, hi = float(ph.images.min()), float(ph.images.max())
    rows = [("stem", "class")]
    for i in range(n):
        img = np.round((ph.images[i, 0] - lo) / (hi - lo) * TOP).astype(np.uint16)
        stem = f"cxr_{i:03d}"
        Image.fromarray(img).save(root / "images" / f"{stem}.png")
        Image.fromarray(np.array([0, 128, 255], np.uint8)[ph.masks[i]]).save(root / "masks" / f"{stem}.png")
        rows.append((stem, ph.class_names[ph.labels[i]]))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def tiny_cxr(folder, ae_steps: int = 4, steps: int = 4):
    """The cxr-256 preset shrunk to 32 px: an autoencoder 4x smaller per axis (4 x 8² latents)."""
    cfg = load_preset("cxr-256")
    cfg.data.path = str(folder)
    cfg.model.image_size = 32
    cfg.model.block_out_channels = [8, 16]
    cfg.model.attention_levels = [False, True]
    cfg.model.attention_head_dim = 8
    cfg.autoencoder.channels = [8, 8, 16]
    cfg.autoencoder.batch = 2
    cfg.autoencoder.steps = ae_steps
    cfg.autoencoder.checkpoint_every = 1000
    cfg.train.steps = steps
    cfg.train.batch = 4
    cfg.train.log_every = 2
    cfg.train.checkpoint_every = 1000
    cfg.train.preview_every = 0
    return cfg


@pytest.fixture(scope="module")
def cxr(tmp_path_factory):
    return cxr_folder(tmp_path_factory.mktemp("cxr") / "cxr")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cxr):
    """An uninterrupted tiny cxr run: 4 autoencoder steps, then 4 diffusion steps."""
    run = tmp_path_factory.mktemp("full") / "run"
    events: list = []
    TrainJob(tiny_cxr(cxr), run, data=None).run(events.append, Requests())
    return run, events


def test_tiny_cxr_run_trains_both_stages_and_samples_16_bit_xrays_with_masks(tmp_path, full_run):
    run, events = full_run
    stages = [e.stage for e in events if isinstance(e, Progress)]
    assert stages.index("autoencoder") < stages.index("train")  # stage 1 before stage 2
    state = checkpoints.read_state(RunDir(run).latest())
    assert state["step"] == 4 and state["latent_scale"] > 0
    assert state["config"]["facts"]["spatial_dims"] == 2
    # The reconstruction error is measured on the two images stage 1 never trained on.
    recon = state["autoencoder_reconstruction"]
    assert recon["images"] == 2 and recon["held_out"] is True and 0 < recon["mae_fraction"] < 1

    out = tmp_path / "synth.h5"
    SampleJob(run, 3, out, steps=3, batch=3, seed=5).run(lambda ev: None, Requests())
    with h5py.File(out) as f:
        # The diffusion model works on 4 x 8² latents; the file holds decoded 32² X-rays, masks and classes.
        assert f["images"].shape == (3, 1, 32, 32) and f["masks"].shape == (3, 32, 32)
        assert f.attrs["n_complete"] == 3 and int(f.attrs["spatial_dims"]) == 2
        assert set(f["labels"][:]) <= set(range(4)) and "lesion" in f.attrs["class_names"]
        images = f["images"][:]
        assert '"bits": 16' in f.attrs["normalisation"] and "128" in f.attrs["mask_coding"]
    assert np.isfinite(images).all() and images.min() >= -1e-3 and images.max() <= TOP + 1e-3  # the data's units

    # A PNG export writes them back as 16-bit pictures of detector values, masks in the user's grey levels.
    export(out, tmp_path / "png", "png")
    png = Image.open(sorted((tmp_path / "png" / "images").glob("*.png"))[0])
    assert png.mode.startswith("I") and np.asarray(png).max() <= TOP
    mask = np.asarray(Image.open(sorted((tmp_path / "png" / "masks").glob("*.png"))[0]))
    assert set(np.unique(mask)) <= {0, 128, 255}

    text = describe(run)
    assert "latent: 4 x 8 x 8 (from 3 x 32 x 32, 4x smaller per axis)" in text
    assert "reconstruction error on 2 held-back training images" in text and "PSNR" in text


def test_cancel_in_each_stage_then_resume_equals_the_uninterrupted_run(tmp_path, cxr, full_run):
    from safetensors.torch import load_file

    cut = tmp_path / "cut"
    done = execute(TrainJob(tiny_cxr(cxr), cut), lambda ev: None, StopAfter(2))
    assert done.cancelled and done.result["stage"] == "autoencoder"
    assert checkpoints.read_state(RunDir(cut).autoencoder.latest())["step"] == 2
    assert "in stage 1 (the autoencoder): step 2 of 4" in describe(cut)
    assert "not recorded" in describe(cut)

    events: list = []
    with pytest.raises(Cancelled):  # 2 more autoencoder steps, then 2 diffusion steps
        TrainJob(None, cut, resume=True).run(events.append, StopAfter(4))
    ae_steps = [e.done for e in events if isinstance(e, Progress) and e.stage == "autoencoder"]
    assert ae_steps == [3, 4]  # stage 1 went on from step 2
    assert checkpoints.read_state(RunDir(cut).latest())["step"] == 2

    TrainJob(None, cut, resume=True).run(lambda ev: None, Requests())
    full_ckpt, cut_ckpt = RunDir(full_run[0]).latest(), RunDir(cut).latest()
    assert checkpoints.read_state(cut_ckpt)["autoencoder_reconstruction"] == \
        checkpoints.read_state(full_ckpt)["autoencoder_reconstruction"]
    for name in ("ema", "autoencoder"):
        full = load_file(str(full_ckpt / f"{name}.safetensors"))
        cut_weights = load_file(str(cut_ckpt / f"{name}.safetensors"))
        for k, v in full.items():
            np.testing.assert_allclose(cut_weights[k].numpy(), v.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def filled_2d(preset: str, labels: int = 3, classes: int = 2):
    """A 2D preset with the channel counts that reading an X-ray folder would fill in."""
    cfg = load_preset(preset)
    cfg.facts.spatial_dims, cfg.facts.image_channels = 2, 1
    cfg.facts.mask_labels, cfg.facts.num_classes = labels, classes
    cfg.facts.in_channels = io_channels(cfg)[0]
    return cfg


def test_cxr_presets_fit_their_devices_by_the_estimate():
    for preset, limit in (("cxr-256", 8), ("cxr-512", 22)):
        stages = memory.estimate(filled_2d(preset), "cuda")
        assert [s.stage for s in stages] == ["autoencoder", "diffusion"]
        assert max(s.total_bytes for s in stages) < limit * GIB, preset


def test_an_impossible_2d_latent_run_is_refused_naming_the_change_that_fits():
    cfg = filled_2d("cxr-512")
    cfg.autoencoder.batch = 16
    cfg.train.gradient_checkpointing = False
    cfg.train.memory_limit_gib = 8
    with pytest.raises(InputError) as err:
        memory.check(cfg, "cuda", "cxr-512")
    text = str(err.value)
    assert "cxr-512 at 512^2, batch 16 needs about" in text and "autoencoder stage" in text
    assert "offers 8.0 GiB" in text and "would fit with: " in text
    assert "autoencoder.batch" in text
    # The named change is real: applied, it passes the same check.
    fixed = copy.deepcopy(cfg)
    fixed.autoencoder.batch = 1
    fixed.train.gradient_checkpointing = True
    assert memory.check(fixed, "cuda").fits


def test_a_pixel_space_x_ray_run_too_large_is_told_of_the_latent_presets():
    cfg = filled_2d("cxr-512")
    cfg.autoencoder.enabled = False
    cfg.train.memory_limit_gib = 10
    with pytest.raises(InputError) as err:
        memory.check(cfg, "cuda", "cxr-512")
    assert "a latent model (the cxr-256 / cxr-512 presets" in str(err.value)


def test_the_train_panel_shows_stage_1_then_stage_2_and_resumes_a_run_stopped_in_stage_1(qtbot, tmp_path, cxr):
    pytest.importorskip("pytestqt")
    from PySide6.QtCore import QSettings

    from medsynth_gui.panels.train_panel import TrainPanel

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)  # the panel remembers fields: in the test's own folder
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.preset.setCurrentText("demo")
    assert not panel._form.isRowVisible(panel.ae_steps_spin)  # a pixel-space preset has no stage 1
    panel.preset.setCurrentText("cxr-256")
    assert panel._form.isRowVisible(panel.ae_steps_spin) and panel.ae_steps_spin.value() == 4000
    panel.data_edit.setText(str(cxr))
    panel.run_edit.setText(str(tmp_path / "run"))
    panel.size_spin.setValue(32)
    panel.steps_spin.setValue(3)
    panel.batch_spin.setValue(4)
    panel.ae_steps_spin.setValue(60)
    seen: list[str] = []
    panel.runner.event.connect(lambda ev: seen.append(panel.status.text()))
    finished: list[str] = []
    panel.run_finished.connect(finished.append)

    panel.start()
    qtbot.waitUntil(lambda: "stage 1 of 2, autoencoder" in panel.status.text(), timeout=120_000)
    with qtbot.waitSignal(panel.runner.done, timeout=60_000) as blocker:
        panel.stop()
    assert blocker.args[0].cancelled and blocker.args[0].result["stage"] == "autoencoder"
    assert "Stopped in stage 1" in panel.status.text() and not finished  # nothing to generate from yet
    stopped = checkpoints.read_state(RunDir(tmp_path / "run").autoencoder.latest())["step"]
    assert 0 < stopped < 60

    seen.clear()
    with qtbot.waitSignal(panel.runner.done, timeout=240_000) as blocker:
        panel.resume()
    assert not blocker.args[0].cancelled and blocker.args[0].result["step"] == 3
    stage_1 = [i for i, st in enumerate(seen) if st.startswith("stage 1 of 2, autoencoder")]
    stage_2 = [i for i, st in enumerate(seen) if st.startswith("loss ")]
    assert stage_1 and stage_2 and max(stage_1) < min(stage_2), seen  # stage 1 went on, then stage 2
    # Resumed, not restarted: the first step shown is past the stop (the status may skip steps under load).
    first = int(re.search(r"autoencoder (\d+)/60", seen[stage_1[0]]).group(1))
    assert stopped < first <= 60, seen[stage_1[0]]
    assert "Finished at step 3" in panel.status.text() and finished == [str(tmp_path / "run")]


def test_each_suggested_change_is_named_once():
    # Batch 4 halves to 2 and quarters to 1: "batch 1" was offered twice before.
    cfg = filled_2d("cxr-256")
    cfg.autoencoder.enabled = False
    cfg.model.attention_levels = [False, False, True]
    cfg.train.batch = 4
    cfg.train.memory_limit_gib = 16
    with pytest.raises(InputError) as err:
        memory.check(cfg, "cpu", "cxr-256")
    hints = str(err.value).split("would fit with: ")[1].split("; or ")
    assert len(hints) == len(set(hints)) >= 3, hints
    assert any(h.startswith("batch 1 with gradient checkpointing") for h in hints)


def test_full_16_bit_tiff_xrays_come_back_as_16_bit_values(tmp_path):
    # The full 0..65535 range of a 16-bit TIFF, no masks, a class per image.
    ph = make_phantoms(10, size=32, seed=4)
    (tmp_path / "tif" / "images").mkdir(parents=True)
    rows = [("stem", "class")]
    for i in range(10):
        img = np.round((ph.images[i, 0] - ph.images.min()) / np.ptp(ph.images) * 65535).astype(np.uint16)
        Image.fromarray(img).save(tmp_path / "tif" / "images" / f"x{i}.tif")
        rows.append((f"x{i}", "normal" if i % 2 else "pneumonia"))
    with open(tmp_path / "tif" / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    TrainJob(tiny_cxr(tmp_path / "tif", ae_steps=2, steps=2), tmp_path / "run").run(lambda ev: None, Requests())
    out = tmp_path / "synth.h5"
    SampleJob(tmp_path / "run", 2, out, steps=2, batch=2, seed=1).run(lambda ev: None, Requests())
    with h5py.File(out) as f:
        images = f["images"][:]
        assert "masks" not in f and '"bits": 16' in f.attrs["normalisation"]
    assert images.min() >= -1e-3 and images.max() <= 65535 + 1e-3 and images.max() > 255  # not 8-bit, not [-1, 1]
    export(out, tmp_path / "png", "png")
    png = np.asarray(Image.open(sorted((tmp_path / "png" / "images").glob("*.png"))[0]))
    assert png.dtype == np.uint16 and png.max() > 255


def test_masks_as_a_condition_in_the_latent_are_kept_as_given(tmp_path, cxr):
    cfg = tiny_cxr(cxr, ae_steps=2, steps=2)
    cfg.data.mask_mode = "condition"
    TrainJob(cfg, tmp_path / "run").run(lambda ev: None, Requests())
    assert checkpoints.read_state(RunDir(tmp_path / "run").latest())["config"]["facts"]["in_channels"] == 4 + 2
    out = tmp_path / "synth.h5"
    SampleJob(tmp_path / "run", 2, out, steps=2, batch=2, seed=1).run(lambda ev: None, Requests())
    given = [np.asarray(Image.open(p)) for p in sorted((cxr / "masks").glob("*.png"))]
    with h5py.File(out) as f:
        masks = f["masks"][:]
        assert f["images"].shape == (2, 1, 32, 32)
    # Each sample's mask is a training mask picked by its seed, back in the user's grey levels when exported.
    coded = [np.array([0, 128, 255], np.uint8)[m] for m in masks]
    for m in coded:
        assert any(np.array_equal(m, g) for g in given)


def test_an_x_ray_latent_flow_model_samples_labelled_x_rays_with_euler_in_10_steps(tmp_path, cxr):
    """The issue's user path in small: cxr-256 (shrunk) trained with the flow objective, both stages, then sampled
    with the model's own default — Euler x 10 — into images, masks and classes in the data's 16-bit units."""
    from engine.jobs import Message

    cfg = tiny_cxr(cxr)
    cfg.train.objective = "flow"
    run = tmp_path / "run"
    TrainJob(cfg, run).run(lambda ev: None, Requests())
    assert checkpoints.read_state(RunDir(run).latest())["config"]["train"]["objective"] == "flow"
    said: list[str] = []
    job = SampleJob(run, 3, tmp_path / "synth.h5", batch=3, seed=2)
    job.run(lambda ev: said.append(ev.text) if isinstance(ev, Message) else None, Requests())
    assert (job.sampler_name, job.steps) == ("euler", 10)
    assert any("with euler x 10 steps" in s for s in said)
    with h5py.File(tmp_path / "synth.h5") as f:
        assert f["images"].shape == (3, 1, 32, 32) and f["masks"].shape == (3, 32, 32) and len(f["labels"]) == 3
        images = f["images"][:]
    assert np.isfinite(images).all() and images.min() >= -1e-3 and images.max() <= TOP + 1e-3
