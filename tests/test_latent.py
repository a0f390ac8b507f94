"""Latent diffusion in 3D: the autoencoder trains first, the diffusion model learns its latents,
and sampling decodes volumes with masks; stage 1 can be cancelled and resumed."""

import h5py
import numpy as np
import pytest

from engine.config import load_preset
from engine.data.phantoms import make_phantoms
from engine.inference.sample import SampleJob
from engine.jobs import Cancelled, Progress, Requests, execute
from engine.training import checkpoints
from engine.training.run_dir import RunDir
from engine.training.train import TrainJob
from tests.conftest import StopAfter


def tiny_latent(ae_steps: int = 4, steps: int = 4, mask_mode: str = "joint"):
    cfg = load_preset("demo-3d")
    cfg.model.image_size = 16
    cfg.model.block_out_channels = [8, 16]
    cfg.model.attention_levels = [False, True]
    cfg.model.attention_head_dim = 8
    cfg.autoencoder.enabled = True
    cfg.autoencoder.channels = [8, 16]
    cfg.autoencoder.latent_channels = 3
    cfg.autoencoder.steps = ae_steps
    cfg.autoencoder.checkpoint_every = 1000
    cfg.train.steps = steps
    cfg.train.log_every = 2
    cfg.train.checkpoint_every = 1000
    cfg.data.mask_mode = mask_mode
    return cfg


@pytest.fixture(scope="module")
def volumes():
    return make_phantoms(6, size=16, dims=3, seed=3)


def test_tiny_latent_model_trains_and_samples_volumes_with_masks(tmp_path, volumes):
    events = []
    result = TrainJob(tiny_latent(), tmp_path / "run", data=volumes).run(events.append, Requests())
    stages = [e.stage for e in events if isinstance(e, Progress)]
    assert stages.index("autoencoder") < stages.index("train")  # stage 1 before stage 2
    assert result["step"] == 4
    ckpt = RunDir(tmp_path / "run").latest()
    state = checkpoints.read_state(ckpt)
    assert (ckpt / "autoencoder.safetensors").exists() and state["latent_scale"] > 0
    assert state["config"]["autoencoder"]["enabled"] is True
    out = tmp_path / "synth.h5"
    SampleJob(tmp_path / "run", 2, out, sampler_name="dpm", steps=3, batch=2, seed=5).run(
        lambda ev: None, Requests())
    with h5py.File(out) as f:
        assert f.attrs["n_complete"] == 2
        # The diffusion model works on 8^3 latents; the file holds decoded 16^3 volumes and masks.
        assert f["images"].shape == (2, 1, 16, 16, 16) and f["masks"].shape == (2, 16, 16, 16)
        assert np.isfinite(f["images"][:]).all()
        lo, hi = f["images"][:].min(), f["images"][:].max()
        assert 0.0 - 1e-3 <= lo and hi <= 1000.0 + 1e-3  # back in the phantoms' units, inside their range


def test_latent_model_with_masks_as_condition_keeps_the_given_masks(tmp_path, volumes):
    from engine.io.medsynth_h5 import read_image_set
    from engine.io.medsynth_writer import write_image_set

    # Sampling reads the condition masks back from the training data's file.
    stored = read_image_set(write_image_set(tmp_path / "vol.h5", volumes))
    TrainJob(tiny_latent(mask_mode="condition"), tmp_path / "run", data=stored).run(lambda ev: None, Requests())
    out = tmp_path / "synth.h5"
    SampleJob(tmp_path / "run", 2, out, steps=2, batch=2, seed=1).run(lambda ev: None, Requests())
    with h5py.File(out) as f:
        masks = f["masks"][:]
    # Each sample's mask is a training mask picked by its seed, passed through unchanged.
    for m in masks:
        assert any(np.array_equal(m, v) for v in volumes.masks)


def test_cancel_in_stage_1_then_resume_finishes_both_stages(tmp_path, volumes):
    cfg = tiny_latent(ae_steps=6, steps=2)
    done = execute(TrainJob(cfg, tmp_path / "run", data=volumes), lambda ev: None, StopAfter(3))
    assert done.cancelled and done.result["stage"] == "autoencoder"
    assert RunDir(tmp_path / "run").latest() is None
    assert checkpoints.read_state(RunDir(tmp_path / "run").autoencoder.latest())["step"] == 3

    events = []
    TrainJob(None, tmp_path / "run", resume=True, data=volumes).run(events.append, Requests())
    ae_steps = [e.done for e in events if isinstance(e, Progress) and e.stage == "autoencoder"]
    assert ae_steps[0] == 4 and ae_steps[-1] == 6  # stage 1 went on from step 3
    assert checkpoints.read_state(RunDir(tmp_path / "run").latest())["step"] == 2


def test_latent_run_resumed_in_stage_2_matches_the_uninterrupted_run(tmp_path, volumes):
    from safetensors.torch import load_file

    TrainJob(tiny_latent(ae_steps=3, steps=4), tmp_path / "full", data=volumes).run(lambda ev: None, Requests())
    cancel_in_stage_2 = StopAfter(5)  # 3 autoencoder steps, then 2 diffusion steps
    with pytest.raises(Cancelled):
        TrainJob(tiny_latent(ae_steps=3, steps=4), tmp_path / "cut", data=volumes).run(lambda ev: None,
                                                                                        cancel_in_stage_2)
    assert checkpoints.read_state(RunDir(tmp_path / "cut").latest())["step"] == 2
    TrainJob(None, tmp_path / "cut", resume=True, data=volumes).run(lambda ev: None, Requests())
    full = load_file(str(RunDir(tmp_path / "full").latest() / "ema.safetensors"))
    cut = load_file(str(RunDir(tmp_path / "cut").latest() / "ema.safetensors"))
    for k, v in full.items():
        np.testing.assert_allclose(cut[k].numpy(), v.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
