"""Training memory, estimated before any weight is allocated, and a refusal when a run will not fit.

The estimate runs the real networks once on PyTorch's "meta" device, where tensors have
shapes but no storage: every activation autograd would keep for the backward pass is
counted as it is saved. That follows the actual architecture (attention, skip
connections, checkpointed blocks) where a formula would drift from it. On top come the
weights, their gradients, Adam's two moments, the EMA copy, and a margin for the
backward pass's temporaries and allocator fragmentation.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.config import RunConfig, load_preset, shape_fault
from engine.errors import InputError
from engine.models.networks import (
    build_autoencoder,
    build_model,
    diffusion_size,
    io_channels,
    pixel_channels,
    unet_blocks,
)

GIB = 2**30
# Backward temporaries, cuDNN workspaces and fragmentation; measured peaks of 2D runs sit
# within this margin of saved activations + states.
MARGIN = 1.25
# CUDA context and libraries take this much of the card before PyTorch allocates anything.
CUDA_RESERVED = 0.75 * GIB


@dataclass
class StageEstimate:
    stage: str
    params: int
    state_bytes: int  # weights, gradients, optimizer moments, EMA
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return int((self.state_bytes + self.activation_bytes) * MARGIN)


@dataclass
class MemoryReport:
    device: str
    capacity_bytes: int
    stages: list[StageEstimate]
    data_bytes: int = 0  # the training tensors, which stay on the device for the whole run

    @property
    def peak_bytes(self) -> int:
        return max(s.total_bytes for s in self.stages) + self.data_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.capacity_bytes

    def describe(self) -> str:
        parts = ", ".join(f"{s.stage} {(s.total_bytes + self.data_bytes) / GIB:.2f} GiB" for s in self.stages)
        return (f"estimated memory: {parts}; {self.device} offers {self.capacity_bytes / GIB:.1f} GiB")


def _saved_activation_bytes(run: Callable[[], object], regions: list[torch.nn.Module]) -> int:
    """Bytes autograd keeps for backward during `run()`; with checkpointed `regions`, the peak
    is what is kept outside them plus their inputs plus the largest one being recomputed."""
    total = [0]
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in seen:
            seen.add(id(t))
            total[0] += t.numel() * t.element_size()
        return t

    inside: list[int] = []
    inputs: list[int] = []
    hooks = []
    for region in regions:
        start: list[int] = []

        def pre(mod, args, kwargs, _start=start):
            _start.append(total[0])
            x = kwargs.get("hidden_states", args[0] if args else None)
            if torch.is_tensor(x):
                inputs.append(x.numel() * x.element_size())

        def post(mod, args, kwargs, out, _start=start):
            inside.append(total[0] - _start.pop())

        hooks.append(region.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(region.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        for h in hooks:
            h.remove()
    if not regions:
        return total[0]
    return total[0] - sum(inside) + sum(inputs) + max(inside, default=0)


def _cast_copy_bytes(cfg: RunConfig, device: str, params: int) -> int:
    """Autocast keeps a 16-bit copy of the weights for the backward pass.

    Activations are counted at float32 even under autocast: convolutions save 16-bit inputs
    but norms and activations save float32 ones, and the meta device cannot autocast to tell
    them apart, so the count is an upper bound rather than a guess in between.
    """
    return params * 2 if device == "cuda" and cfg.train.mixed_precision != "no" else 0


def _on_meta(build: Callable[[RunConfig], torch.nn.Module], cfg: RunConfig) -> tuple[torch.nn.Module, int]:
    """The network with shapes but no storage, and its parameter count. Built without checkpointing:
    the estimate accounts for checkpointed regions itself, from the plain forward."""
    plain = copy.deepcopy(cfg)
    plain.train.gradient_checkpointing = False
    with torch.device("meta"):
        net = build(plain)
    return net, sum(p.numel() for p in net.parameters())


def _diffusion_stage(cfg: RunConfig, device: str) -> StageEstimate:
    model, params = _on_meta(build_model, cfg)
    dims = max(cfg.facts.spatial_dims, 2)
    b = cfg.train.batch
    x = torch.zeros((b, io_channels(cfg)[0]) + (diffusion_size(cfg),) * dims, device="meta")
    t = torch.zeros(b, dtype=torch.long, device="meta")
    labels = torch.zeros(b, dtype=torch.long, device="meta") if cfg.facts.num_classes > 0 else None
    regions = unet_blocks(model) if cfg.train.gradient_checkpointing else []
    act = _saved_activation_bytes(lambda: model(x, t, class_labels=labels), regions)
    # weights + gradients + Adam m, v + EMA, all float32
    return StageEstimate("diffusion", params, params * 4 * 5 + _cast_copy_bytes(cfg, device, params), act)


def _autoencoder_stage(cfg: RunConfig, device: str) -> StageEstimate:
    ae, params = _on_meta(build_autoencoder, cfg)
    dims = max(cfg.facts.spatial_dims, 2)
    x = torch.zeros((cfg.autoencoder.batch, pixel_channels(cfg)) + (cfg.model.image_size,) * dims, device="meta")
    regions = [ae.encoder, ae.decoder] if cfg.train.gradient_checkpointing else []
    act = _saved_activation_bytes(lambda: ae(x), regions)
    # weights + gradients + Adam m, v (stage 1 keeps no EMA)
    return StageEstimate("autoencoder", params, params * 4 * 4 + _cast_copy_bytes(cfg, device, params), act)


def _fine_tune_stage(cfg: RunConfig, device: str) -> StageEstimate:
    """A pretrained SD model's fine-tune: the frozen weights resident, only the trained ones with gradients, Adam
    and EMA; activations through the whole UNet (they feed the adapters' gradients at every level)."""
    from engine.models import stable_diffusion as sd

    unet, frozen, width = sd.networks_on_meta(cfg.pretrained)
    total = sum(p.numel() for p in unet.parameters())
    trained = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    b, s = cfg.train.batch, diffusion_size(cfg)
    x = torch.zeros((b, io_channels(cfg)[0], s, s), device="meta")
    t = torch.zeros(b, dtype=torch.long, device="meta")
    states = torch.zeros((b, 77, width), device="meta")
    regions = [*unet.down_blocks, unet.mid_block, *unet.up_blocks] if cfg.train.gradient_checkpointing else []
    act = _saved_activation_bytes(lambda: unet(x, t, encoder_hidden_states=states), regions)
    state = (total - trained + frozen) * 4 + trained * 4 * 5 + _cast_copy_bytes(cfg, device, total)
    return StageEstimate("fine-tune", trained, state, act)


def estimate(cfg: RunConfig, device: str = "cuda") -> list[StageEstimate]:
    """Per-stage training memory of a config whose channels are known (after the data is read)."""
    if cfg.fine_tune:
        return [_fine_tune_stage(cfg, device)]
    stages = []
    if cfg.autoencoder.enabled:
        stages.append(_autoencoder_stage(cfg, device))
    stages.append(_diffusion_stage(cfg, device))
    return stages


def capacity(device: str, limit_gib: float = 0.0) -> int:
    """Bytes the run may use: the setting if given, else the GPU's memory or the free RAM."""
    if limit_gib > 0:
        return int(limit_gib * GIB)
    if device == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory - CUDA_RESERVED)
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


# The latent presets a run too large for pixel space is pointed to, by spatial dimensions: (smaller, larger).
LATENT_PRESETS = {2: ("cxr-256", "cxr-512"), 3: ("brain-128", "ct-128")}


def _suggestions(cfg: RunConfig, device: str, cap: int, data_bytes: int) -> list[str]:
    """Changes that would make the run fit, each checked with the same estimate."""
    tries: list[tuple[str, RunConfig]] = []
    if not cfg.train.gradient_checkpointing:
        c = copy.deepcopy(cfg)
        c.train.gradient_checkpointing = True
        tries.append(("gradient checkpointing (train.gradient_checkpointing = true)", c))
    for batch in sorted({cfg.train.batch // 2, cfg.train.batch // 4, 1}, reverse=True):
        if 1 <= batch < cfg.train.batch:
            c = copy.deepcopy(cfg)
            c.train.batch = batch
            c.train.gradient_checkpointing = True
            tries.append((f"batch {batch} with gradient checkpointing", c))
    dims = max(cfg.facts.spatial_dims, 2)
    if not cfg.autoencoder.enabled and not cfg.fine_tune:
        # The same network on the latent of the latent presets' autoencoder (8x smaller per axis in 2D).
        small, large = LATENT_PRESETS[dims]
        c = copy.deepcopy(cfg)
        c.autoencoder = copy.deepcopy(load_preset(small).autoencoder)
        c.train.gradient_checkpointing = True
        if shape_fault(c) is None:
            tries.append((f"a latent model (the {small} / {large} presets, or their [autoencoder] settings)", c))
    for batch in sorted({cfg.autoencoder.batch // 2, cfg.autoencoder.batch // 4, 1}, reverse=True):
        if cfg.autoencoder.enabled and 1 <= batch < cfg.autoencoder.batch:
            c = copy.deepcopy(cfg)
            c.autoencoder.batch = batch
            c.train.gradient_checkpointing = True
            tries.append((f"autoencoder.batch = {batch} with gradient checkpointing", c))
    found = []
    for text, c in tries:
        need = max(s.total_bytes for s in estimate(c, device)) + data_bytes
        if need <= cap:
            found.append(f"{text} (~{need / GIB:.1f} GiB)")
    return found


def check(cfg: RunConfig, device: str, preset: str = "", data_bytes: int = 0) -> MemoryReport:
    """Estimate; raise InputError with suggestions when the run would not fit its device."""
    cap = capacity(device, cfg.train.memory_limit_gib)
    report = MemoryReport(device, cap, estimate(cfg, device), data_bytes)
    if report.fits:
        return report
    worst = max(report.stages, key=lambda s: s.total_bytes)
    dims = max(cfg.facts.spatial_dims, 2)
    what = (f"{'preset ' + preset + ' at ' if preset else ''}{cfg.model.image_size}^{dims}, batch "
            f"{cfg.autoencoder.batch if worst.stage == 'autoencoder' else cfg.train.batch}")
    hints = _suggestions(cfg, device, cap, data_bytes)
    hint = ("; would fit with: " + "; or ".join(hints)) if hints else \
        "; nothing smaller fits either: lower model.image_size or use a larger GPU"
    need = (worst.total_bytes + data_bytes) / GIB
    raise InputError(None, f"{what} needs about {need:.1f} GiB for its {worst.stage} stage, "
                           f"but {device} offers {cap / GIB:.1f} GiB{hint}")
