"""One diffusion training step's parts: the batch a step draws, noising it and the loss, the learning rate.

The training job (in pixel space, and on a latent model's latents in stage 2) and the bare loop of
bench/train_throughput.py call the same `noised_loss`, so the benchmark times the step the engine trains.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from engine.config import TrainConfig


def step_generator(seed: int, step: int, rank: int = 0, world: int = 1) -> torch.Generator:
    """The generator of one step's random draws, seeded by (seed, step, rank): a resumed run
    draws exactly what the uninterrupted run would have."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * world + rank)


def lr_at(step: int, base: float, warmup: int, total: int = 0, schedule: str = "constant") -> float:
    if step < warmup:
        return base * (step + 1) / max(1, warmup)
    if schedule == "cosine" and total > warmup:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return base


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "huber":
        return F.huber_loss(pred, target, delta=delta)
    raise ValueError(f"unknown loss {kind!r}")


@dataclass
class Batch:
    """What one step trains on: clean samples, their noise and timesteps, and what conditions them."""

    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    cond: torch.Tensor | None = None  # mask channels of a mask-conditioned model
    labels: torch.Tensor | None = None  # class labels, some swapped for the "no class" token


def per_sample(x: torch.Tensor) -> tuple[int, ...]:
    """The view that broadcasts one scalar per sample over channels and space."""
    return (-1,) + (1,) * (x.dim() - 1)


def draw_batch(g: torch.Generator, tc: TrainConfig, x_all: torch.Tensor, cond_all: torch.Tensor | None,
               labels_all: torch.Tensor | None, null: int | None, device: torch.device) -> Batch:
    """Samples, noise, timesteps, the left-right flip and the class dropout of one step, all drawn from `g`
    on the CPU in a fixed order, so the draw does not depend on the device."""
    idx = torch.randint(x_all.shape[0], (tc.batch,), generator=g).to(device)
    x0 = x_all[idx]
    noise = torch.randn(x0.shape, generator=g).to(device)
    t = torch.randint(0, tc.num_train_timesteps, (tc.batch,), generator=g).to(device)
    cond = None if cond_all is None else cond_all[idx]
    if tc.flip:
        flip = (torch.rand(tc.batch, generator=g) < 0.5).to(device).view(per_sample(x0))
        x0 = torch.where(flip, x0.flip(-1), x0)
        if cond is not None:
            cond = torch.where(flip, cond.flip(-1), cond)
    labels = None
    if labels_all is not None:
        labels = labels_all[idx]
        # Classifier-free guidance needs the model to know the "no class" token too.
        drop = (torch.rand(tc.batch, generator=g) < tc.cfg_dropout).to(device)
        labels = torch.where(drop, torch.full_like(labels, null), labels)
    return Batch(x0, noise, t, cond, labels)


def noised_loss(forward: Callable[..., Any], batch: Batch, levels: torch.Tensor, tc: TrainConfig,
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                channels_last: bool = False) -> torch.Tensor:
    """Noise the batch to its timesteps, run the network, and return the loss against the config's target
    in float32: the noise, v for v-prediction, or for flow the velocity noise - x0.

    `levels` are engine.models.diffusion.noise_levels: cumulative alphas, or for flow the sigmas, whose
    timestep the network sees as sigma x num_train_timesteps (diffusers' flow convention)."""
    lv = levels[batch.t].view(per_sample(batch.x0))
    t = batch.t
    if tc.objective == "flow":
        noisy = (1 - lv) * batch.x0 + lv * batch.noise
        target = batch.noise - batch.x0
        t = levels[batch.t] * tc.num_train_timesteps
    else:
        noisy = lv.sqrt() * batch.x0 + (1 - lv).sqrt() * batch.noise
        target = batch.noise if tc.objective == "epsilon" else lv.sqrt() * batch.noise - (1 - lv).sqrt() * batch.x0
    inp = noisy if batch.cond is None else torch.cat([noisy, batch.cond], dim=1)
    if channels_last:
        inp = inp.contiguous(memory_format=torch.channels_last)
    with autocast():
        pred = forward(inp, t, class_labels=batch.labels).sample
    return diffusion_loss(pred.float(), target, tc.loss, tc.huber_delta)
