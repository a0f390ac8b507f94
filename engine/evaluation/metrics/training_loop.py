"""The one training loop the utility networks share: AdamW, cosine decay, seeded batches, cancellation.

Conventions (the project's): images float32 (N, C, *spatial) scaled to [0, 1] by the caller.

Cancellation: the loop polls the job's ``requests`` once a step and raises
``engine.jobs.Cancelled``; the job keeps what it measured before. Nothing partial is
returned, because a utility figure from an unfinished training budget would mislead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from engine.jobs import Requests

Progress = Callable[[int, int], None]

BATCH = 16


def as_images(images: np.ndarray | torch.Tensor, spatial_dims: int | None = None) -> torch.Tensor:
    """Images as a float32 tensor (N, C, *spatial), refused when their shape or values are unfit."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.dim() < 4:
        raise ValueError(f"expected images (N, C, H, W) or (N, C, D, H, W); got shape {tuple(x.shape)}")
    if spatial_dims is not None and x.dim() != spatial_dims + 2:
        raise ValueError(f"spatial_dims={spatial_dims} but images have shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("images hold NaN or infinite values")
    return x


def augment_intensity(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Intensity gain and offset only: no flips (left/right is anatomy) and no warps (the masks would need them)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    gain = 1.0 + 0.1 * (2 * torch.rand(shape, generator=g) - 1)
    offset = 0.05 * (2 * torch.rand(shape, generator=g) - 1)
    return x * gain + offset


def fit(net: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor, y: torch.Tensor, *, steps: int, batch: int, seed: int, lr: float,
        device: torch.device, augment: bool, progress: Progress | None, requests: Requests | None) -> nn.Module:
    """The one training loop: AdamW, cosine decay, batches in a seeded order, epoch by epoch."""
    if len(x) == 0:
        raise ValueError("no training samples")
    g = torch.Generator().manual_seed(seed)
    batch = min(batch, len(x))
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    # Decay to a tenth: a short budget ends better on a small learning rate than on a large one.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=lr / 10)
    order, pos = torch.randperm(len(x), generator=g), 0
    for step in range(steps):
        if requests is not None:
            requests.check(f"cancelled after {step} of {steps} steps")
        if pos + batch > len(x):
            order, pos = torch.randperm(len(x), generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        xb = x[idx]
        if augment:
            xb = augment_intensity(xb, g)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb.to(device)), y[idx].to(device))
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, steps)
    return net.eval()


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    # The same seed gives the same initial weights, so real/synth/both differ only by their data;
    # fork_rng keeps the caller's global random state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
