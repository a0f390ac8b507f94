"""Noise schedules and the reverse-diffusion loop shared by training previews and sampling."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)

from engine.config import TrainConfig
from engine.jobs import Requests
from engine.settings import Objective, Sampler

Scheduler = (DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler | FlowMatchEulerDiscreteScheduler
             | FlowMatchHeunDiscreteScheduler)

# MONAI's RFlowScheduler (as MAISI trains) shifts a 3D flow's timesteps by the volume's size against 32^3.
FLOW_BASE_EDGE = 32


def flow_shift(spatial: Sequence[int]) -> float:
    """The timestep shift of a flow model whose network sees `spatial` (its input's spatial shape).

    3D: MAISI's resolution shift (MONAI RFlowScheduler's timestep_transform, ratio (numel / 32^3)^(1/3)): a larger
    volume keeps more of its structure at a given noise level, so more of training and sampling goes to high noise.
    Diffusers' flow schedulers take the same map as `shift` (sigma' = s sigma / (1 + (s - 1) sigma)). 2D: none.
    """
    if len(spatial) != 3:
        return 1.0
    return (math.prod(spatial) / FLOW_BASE_EDGE ** 3) ** (1.0 / 3)


def _flow(tc: TrainConfig, spatial: Sequence[int]) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=tc.num_train_timesteps, shift=flow_shift(spatial))


def train_scheduler(tc: TrainConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=tc.num_train_timesteps, beta_schedule=tc.beta_schedule,
                         beta_start=tc.beta_start, beta_end=tc.beta_end, prediction_type=tc.objective)


def noise_levels(tc: TrainConfig, spatial: Sequence[int]) -> torch.Tensor:
    """Per training timestep index, how noisy a sample is: the cumulative alpha of the DDPM schedule, or for flow
    the sigma of diffusers' flow schedule (x_t = (1 - sigma) x0 + sigma noise; index 0 is pure noise)."""
    if tc.objective == Objective.FLOW:
        return _flow(tc, spatial).sigmas.clone()
    return train_scheduler(tc).alphas_cumprod


def sampler(name: str, tc: TrainConfig, latent: bool = False, spatial: Sequence[int] = ()) -> Scheduler:
    """A sampler built on the exact noise schedule the model was trained with (`spatial`, the network input's
    spatial shape, sets a 3D flow model's shift).

    Latents are not bounded to [-1, 1] as normalised pixels are, so they are never clipped.
    """
    if name == "euler":
        return _flow(tc, spatial)
    if name == "heun":
        return FlowMatchHeunDiscreteScheduler(num_train_timesteps=tc.num_train_timesteps, shift=flow_shift(spatial))
    common = dict(num_train_timesteps=tc.num_train_timesteps, beta_schedule=tc.beta_schedule,
                  beta_start=tc.beta_start, beta_end=tc.beta_end, prediction_type=tc.objective)
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=not latent)
    # "trailing" spacing reaches the pure-noise end of the schedule even with few steps,
    # which matters for the cosine schedule at 20-50 steps.
    if name == "ddim":
        return DDIMScheduler(**common, timestep_spacing="trailing", clip_sample=not latent)
    if name == "dpm":
        # Clipping lambda keeps the solver finite where the cosine schedule's alpha reaches ~0
        # (diffusers documents -5.1 for squaredcos_cap_v2); without it samples blow up.
        clip = -5.1 if tc.beta_schedule == "squaredcos_cap_v2" else float("-inf")
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing="trailing", lambda_min_clipped=clip)
    raise ValueError(f"unknown sampler {name!r}; expected one of {Sampler.values()}")


def initial_noise(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    """One noise tensor per sample from its own generator, so a sample depends only on its seed."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


@torch.no_grad()
def denoise(model: torch.nn.Module, scheduler: Scheduler, steps: int, shape: tuple[int, ...],
            generators: list[torch.Generator], device: torch.device,
            labels: torch.Tensor | None = None, cond: torch.Tensor | None = None,
            null_class: int | None = None, guidance: float = 1.0,
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
            on_step: Callable[[int, int], None] | None = None, clip: bool = True,
            requests: Requests | None = None) -> torch.Tensor:
    """Run the reverse process for one batch. ``on_step(done, total)`` hears of each step; a stop in
    ``requests`` raises Cancelled between steps.

    Classifier-free guidance runs the conditional and unconditional halves in one
    batch: one network call per step instead of two. A flow sampler's timesteps are sigma x 1000, as the flow
    model saw them in training; Heun's second-order steps repeat a timestep (2 x steps - 1 network calls).
    """
    scheduler.set_timesteps(steps)
    x = initial_noise(shape, generators).to(device)
    use_cfg = labels is not None and null_class is not None and guidance != 1.0
    if labels is not None:
        labels = labels.to(device)
    if cond is not None:
        cond = cond.to(device)
    for i, t in enumerate(scheduler.timesteps):
        # Flow samplers take the sample as it is.
        inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        if cond is not None:
            inp = torch.cat([inp, cond], dim=1)
        tt = t.to(device).expand(inp.shape[0]) if torch.is_tensor(t) else torch.full((inp.shape[0],), t, device=device)
        with autocast():
            if use_cfg:
                both = torch.cat([labels, torch.full_like(labels, null_class)])
                out = model(torch.cat([inp, inp]), torch.cat([tt, tt]), class_labels=both).sample.float()
                c, u = out.chunk(2)
                pred = u + guidance * (c - u)
            else:
                pred = model(inp, tt, class_labels=labels).sample.float()
        x = scheduler.step(pred, t, x, generator=generators).prev_sample
        if on_step is not None:
            on_step(i + 1, len(scheduler.timesteps))
        if requests is not None:
            requests.check()
    return x.clamp(-1.0, 1.0) if clip else x
