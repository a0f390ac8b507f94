"""Noise schedules and the reverse-diffusion loop shared by training previews and sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from engine.config import TrainConfig
from engine.jobs import Requests
from engine.settings import Sampler


def train_scheduler(tc: TrainConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=tc.num_train_timesteps, beta_schedule=tc.beta_schedule,
                         prediction_type=tc.prediction)


def sampler(name: str, tc: TrainConfig, latent: bool = False
            ) -> DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler:
    """A sampler built on the exact noise schedule the model was trained with.

    Latents are not bounded to [-1, 1] as normalised pixels are, so they are never clipped.
    """
    common = dict(num_train_timesteps=tc.num_train_timesteps, beta_schedule=tc.beta_schedule,
                  prediction_type=tc.prediction)
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
def denoise(model: torch.nn.Module, scheduler: DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler,
            steps: int, shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device,
            labels: torch.Tensor | None = None, cond: torch.Tensor | None = None,
            null_class: int | None = None, guidance: float = 1.0,
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
            on_step: Callable[[int, int], None] | None = None, clip: bool = True,
            requests: Requests | None = None) -> torch.Tensor:
    """Run the reverse process for one batch. ``on_step(done, total)`` hears of each step; a stop in
    ``requests`` raises Cancelled between steps.

    Classifier-free guidance runs the conditional and unconditional halves in one
    batch: one network call per step instead of two.
    """
    scheduler.set_timesteps(steps)
    x = initial_noise(shape, generators).to(device)
    use_cfg = labels is not None and null_class is not None and guidance != 1.0
    if labels is not None:
        labels = labels.to(device)
    if cond is not None:
        cond = cond.to(device)
    for i, t in enumerate(scheduler.timesteps):
        inp = scheduler.scale_model_input(x, t)
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
