"""Stage 1 of latent diffusion: train the KL autoencoder, then encode the training set into its latent space.

The autoencoder lives in the run folder's stage-1 folder (RunDir.autoencoder) with the
same safetensors format and the same (seed, step, rank) batches as the diffusion model,
so a cancelled stage 1 resumes exactly too. Each diffusion checkpoint later carries a
copy of the finished autoencoder, which makes a checkpoint folder all a sampler needs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from engine.config import RunConfig, public_config
from engine.jobs import Checkpoint, Emit, Message, Progress, Requests
from engine.models.networks import build_autoencoder, count_parameters
from engine.runtime.estimate import StepTimer, describe
from engine.training import checkpoints
from engine.training.run_dir import RunDir
from engine.training.steps import step_generator


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    var = sigma.pow(2)
    per_sample = 0.5 * (mu.pow(2) + var - torch.log(var.clamp_min(1e-12)) - 1.0)
    return per_sample.flatten(1).sum(1).mean()


def _restore(cfg: RunConfig, out: RunDir) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
    """The autoencoder and its optimizer, from stage 1's latest checkpoint when there is one; and its step."""
    torch.manual_seed(cfg.train.seed + 1)
    ae = build_autoencoder(cfg)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.autoencoder.lr)
    ckpt = out.latest()
    if ckpt is None:
        return ae, opt, 0
    state = checkpoints.read_state(ckpt)
    ae.load_state_dict(checkpoints.read_weights(ckpt, "model"))
    checkpoints.load_optimizer(opt, checkpoints.read_weights(ckpt, "optimizer"), state["optimizer_param_groups"])
    return ae, opt, int(state["step"])


# Images kept out of stage 1's batches, on which the reconstruction error is measured: at most this
# many, and a tenth of the set at most, so a small set still trains on nearly all of it.
HELD_BACK_MAX = 8


def held_back(cfg: RunConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(trained, held-back) indices of the n training images for stage 1, fixed by the run's seed.
    Sets under ten images hold none back: every image trains (and the error is measured on them)."""
    k = min(HELD_BACK_MAX, n // 10)
    if k == 0:
        return torch.arange(n), torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.train.seed + 104729))
    return order[:-k].sort().values, order[-k:].sort().values


def _step(cfg: RunConfig, model: Any, opt: Any, x_all: torch.Tensor, trained: torch.Tensor, step: int,
          acc: Any) -> float:
    """One optimizer step of stage 1: L1 reconstruction plus the KL term, on the batch of `step`."""
    a = cfg.autoencoder
    g = step_generator(cfg.train.seed + 7919, step, acc.process_index, acc.num_processes)
    x = x_all[trained[torch.randint(len(trained), (a.batch,), generator=g)].to(acc.device)]
    with acc.autocast():
        recon, mu, sigma = model(x, g)
    loss = F.l1_loss(recon.float(), x) + a.kl_weight * kl_divergence(mu.float(), sigma.float())
    for group in opt.param_groups:
        group["lr"] = a.lr * min(1.0, (step + 1) / 50)
    acc.backward(loss)
    acc.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def train_autoencoder(cfg: RunConfig, x_all: torch.Tensor, out: RunDir, acc: Any, emit: Emit,
                      requests: Requests, stop: Any) -> tuple[torch.nn.Module, bool]:
    """Train (or resume) stage 1 on pixel-space tensors x_all in [-1, 1], in the stage-1 folder `out`.

    Returns (autoencoder, cancelled). `stop(acc, local)` agrees a stop across processes.
    """
    a = cfg.autoencoder
    out.path.mkdir(parents=True, exist_ok=True)
    trained, held = held_back(cfg, x_all.shape[0])
    ae, opt, start = _restore(cfg, out)
    if start >= a.steps:
        return ae.to(acc.device), False
    model, opt = acc.prepare(_Reconstruct(ae), opt)
    net = acc.unwrap_model(model).ae
    emit(Message(f"stage 1: autoencoder, {count_parameters(net) / 1e6:.2f} M parameters, "
                 f"{x_all.shape[2]}^{x_all.dim() - 2} -> latent {a.latent_channels} x "
                 f"{x_all.shape[2] // 2 ** (len(a.channels) - 1)}^{x_all.dim() - 2}, steps {start}->{a.steps}"))

    def save(step: int, **more: Any) -> None:
        if acc.is_main_process:
            path = out.save_checkpoint(step, net, None, opt.optimizer if hasattr(opt, "optimizer") else opt,
                                       {"stage": "autoencoder", "config": public_config(cfg.to_dict()), **more})
            emit(Checkpoint(step, str(path)))

    log = out.open_loss_log(start) if acc.is_main_process else None
    if log is not None and log.note:
        emit(Message(log.note))
    step, was_cancelled = start, False
    saved = start if out.latest() is not None else None  # a checkpoint at a step is never written twice
    model.train()
    where = torch.cuda.get_device_name(acc.device) if acc.device.type == "cuda" else "CPU"
    timer = StepTimer(start, a.steps, lambda per_step, steps: emit(describe(
        per_step, steps, where, cfg.preset, acc.device.type, "stage 1, the autoencoder,")),
        torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None))
    while step < a.steps:
        if stop(acc, requests.stop_asked()):
            was_cancelled = True
            break
        value = _step(cfg, model, opt, x_all, trained, step, acc)
        step += 1
        timer(step)
        if log is not None and (step % cfg.train.log_every == 0 or step == a.steps):
            log.write({"step": step, "loss": round(value, 6)})
        emit(Progress("autoencoder", step, a.steps, {"loss": value}))
        if step % a.checkpoint_every == 0 and step < a.steps:  # the last one carries the reconstruction error
            save(step)
            saved = step
    if log is not None:
        log.close()
    if (step > start or was_cancelled) and saved != step:
        save(step, **_finished(cfg, net, x_all, held, emit) if step == a.steps else {})
    if acc.num_processes > 1:
        acc.wait_for_everyone()
    net.eval()
    return net, was_cancelled


def _finished(cfg: RunConfig, net: torch.nn.Module, x_all: torch.Tensor, held: torch.Tensor,
              emit: Emit) -> dict[str, Any]:
    """What stage 1's last checkpoint records besides the weights: the reconstruction error, also said."""
    net.eval()
    error = reconstruction_error(net, x_all[held.to(x_all.device)], held_out=len(held) < x_all.shape[0],
                                 channels=cfg.facts.image_channels)
    emit(Message(f"stage 1 done: {describe_reconstruction(error)}"))
    return {"reconstruction": error}


class _Reconstruct(torch.nn.Module):
    """Encode, draw, decode in one forward, so DDP sees a single call and syncs gradients."""

    def __init__(self, ae: torch.nn.Module) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, sigma = self.ae.encode(x)
        # Drawn from our generator (MONAI's own sampling uses the global RNG), so a resumed
        # stage 1 repeats the uninterrupted run.
        eps = torch.randn(mu.shape, generator=g).to(device=mu.device, dtype=mu.dtype)
        return self.ae.decode(mu + sigma * eps), mu, sigma


@torch.no_grad()
def encode_all(ae: torch.nn.Module, x_all: torch.Tensor, batch: int = 2) -> torch.Tensor:
    """Latent means of every training volume; the mean (not a draw) is the deterministic code."""
    ae.eval()
    return torch.cat([ae.encode(x_all[i:i + batch])[0].float() for i in range(0, x_all.shape[0], batch)])


@torch.no_grad()
def reconstruction_error(ae: torch.nn.Module, x: torch.Tensor, held_out: bool, channels: int,
                         batch: int = 2) -> dict[str, Any]:
    """How far the autoencoder's round trip (encode to the latent mean, decode) lands from images x in [-1, 1], on
    the first `channels` (the image; a joint mask's channels follow): mean absolute error as a fraction of the
    intensity range, and PSNR over that range."""
    ae.eval()
    abs_sum, sq_sum, count = 0.0, 0.0, 0
    for i in range(0, x.shape[0], batch):
        part = x[i:i + batch]
        recon = ae.decode(ae.encode(part)[0]).float().clamp(-1.0, 1.0)
        diff = (recon - part.float())[:, :channels]
        count += diff.numel()
        abs_sum += float(diff.abs().sum())
        sq_sum += float(diff.pow(2).sum())
    mse = sq_sum / count
    # The range is 2 in [-1, 1]: halving the error gives it as a fraction of the range.
    return {"mae_fraction": abs_sum / count / 2.0, "psnr_db": 10.0 * math.log10(4.0 / max(mse, 1e-12)),
            "images": int(x.shape[0]), "held_out": bool(held_out)}


def describe_reconstruction(error: dict[str, Any], data_range: float | None = None, units: str = "") -> str:
    """'reconstruction error on 8 held-back training images: mean |error| 1.2% of the intensity range ...'."""
    where = "held-back training images" if error.get("held_out") else "training images (too few to hold some back)"
    mae = float(error["mae_fraction"])
    in_units = f" (~{mae * data_range:.4g}{' ' + units if units else ''})" if data_range else ""
    return (f"reconstruction error on {error['images']} {where}: mean |error| {100 * mae:.2f}% of the intensity "
            f"range{in_units}, PSNR {float(error['psnr_db']):.1f} dB")


def condition_at(cond: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Mask-condition channels brought to the latent grid; averaging keeps partly covered voxels."""
    pool = F.adaptive_avg_pool3d if cond.dim() == 5 else F.adaptive_avg_pool2d
    return pool(cond.float(), tuple(spatial))


def latent_scale(latents: torch.Tensor) -> float:
    """1/std of the latents, so the diffusion model sees unit variance as in pixel space (the LDM recipe)."""
    return float(1.0 / latents.float().std().clamp_min(1e-6))


@torch.no_grad()
def decode(ae: torch.nn.Module, z: torch.Tensor, scale: float, batch: int = 2) -> torch.Tensor:
    """Scaled latents → pixel-space channels in [-1, 1]."""
    parts = [ae.decode(z[i:i + batch] / scale).float() for i in range(0, z.shape[0], batch)]
    return torch.cat(parts).clamp(-1.0, 1.0)
