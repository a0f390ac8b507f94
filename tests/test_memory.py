"""The memory estimate counts what autograd really keeps, and a run that would not fit is refused
before anything is written, with a suggestion that does fit."""

import copy

import pytest
import torch

from engine.config import load_preset
from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.jobs import Requests
from engine.models.networks import build_model, io_channels
from engine.runtime import memory
from engine.training.train import TrainJob

GIB = 2**30


def filled(preset: str, labels: int = 4, classes: int = 0):
    """A preset with the channel counts that reading the data would fill in."""
    cfg = load_preset(preset)
    cfg.facts.spatial_dims = 3
    cfg.facts.image_channels = 1
    cfg.facts.mask_labels = labels
    cfg.facts.num_classes = classes
    cfg.facts.in_channels = io_channels(cfg)[0]
    return cfg


def test_meta_count_equals_what_a_real_forward_keeps():
    cfg = filled("demo-3d", labels=3, classes=4)
    cfg.model.image_size = 16
    cfg.train.batch = 2
    model = build_model(cfg)
    x = torch.randn(2, io_channels(cfg)[0], 16, 16, 16)
    real = memory._saved_activation_bytes(
        lambda: model(x, torch.zeros(2, dtype=torch.long), class_labels=torch.zeros(2, dtype=torch.long)), [])
    est = memory.estimate(cfg, "cpu")[0]
    assert est.activation_bytes == real > 0


def test_gradient_checkpointing_lowers_the_estimate_in_2d_and_3d():
    for cfg in (filled("brain-64"), load_preset("demo")):
        if cfg.facts.spatial_dims == 0:
            cfg.facts.spatial_dims, cfg.facts.image_channels, cfg.facts.mask_labels = 2, 1, 3
        cfg.train.gradient_checkpointing = False
        on = copy.deepcopy(cfg)
        on.train.gradient_checkpointing = True
        plain, ckpt = memory.estimate(cfg)[0], memory.estimate(on)[0]
        assert ckpt.activation_bytes < 0.8 * plain.activation_bytes


@pytest.mark.parametrize("preset", ["brain-64", "brain-128", "ct-128"])
def test_gpu_presets_fit_a_24_gb_card_by_the_estimate(preset):
    cfg = filled(preset, labels=8 if preset == "ct-128" else 4)
    stages = memory.estimate(cfg, "cuda")
    assert [s.stage for s in stages] == (["autoencoder", "diffusion"] if "128" in preset else ["diffusion"])
    assert max(s.total_bytes for s in stages) < 22 * GIB


def test_a_run_that_does_not_fit_is_refused_with_a_suggestion_that_fits(tmp_path):
    cfg = filled("brain-64")
    cfg.train.batch = 8
    cfg.train.gradient_checkpointing = False
    cfg.train.memory_limit_gib = 12
    with pytest.raises(InputError) as err:
        memory.check(cfg, "cuda", "brain-64")
    text = str(err.value)
    assert "brain-64 at 64^3, batch 8 needs about" in text and "offers 12.0 GiB" in text
    assert "would fit with: " in text and "batch" in text
    # The suggestions are real: the first one, applied, passes the same check.
    fixed = copy.deepcopy(cfg)
    fixed.train.gradient_checkpointing = True
    fixed.train.batch = 4
    assert memory.check(fixed, "cuda").fits


def test_training_refuses_before_writing_anything(tmp_path):
    cfg = load_preset("demo-3d")
    cfg.model.image_size = 16
    cfg.train.memory_limit_gib = 0.001
    with pytest.raises(InputError, match="needs about"):
        TrainJob(cfg, tmp_path / "run", data=make_phantoms(2, size=16, dims=3)).run(lambda ev: None, Requests())
    assert not (tmp_path / "run").exists()


def test_checkpointed_3d_unet_gives_the_same_gradients_and_weight_names():
    cfg = filled("demo-3d", labels=3, classes=2)
    cfg.model.image_size = 8
    cfg.train.gradient_checkpointing = False
    torch.manual_seed(0)
    plain = build_model(cfg)
    cfg.train.gradient_checkpointing = True
    ckpt = build_model(cfg)
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, io_channels(cfg)[0], 8, 8, 8)
    t, labels = torch.tensor([3, 500]), torch.tensor([0, 1])
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        model(x, t, class_labels=labels).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
