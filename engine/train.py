"""Diffusion training as a job: the same loop runs from the CLI, the app and under `accelerate launch`.

Each step draws its batch, noise and timesteps from a generator seeded by
(seed, step, rank). Resuming therefore needs only the weights, EMA, optimizer
state and step count to continue exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine import autoencoder, checkpoints, memory
from engine.config import RunConfig, batch_for, public_config, public_path
from engine.config import load as load_config
from engine.config import save as save_config
from engine.data import load_images, volume_options
from engine.data.dataset import ImageSet, describe_mask_coding
from engine.data.prepare import Normalisation, fit_normalisation, resized_geometry, to_tensors
from engine.devices import pick_device
from engine.diffusion import denoise, sampler, train_scheduler
from engine.errors import InputError
from engine.estimate import StepTimer, describe, device_warning
from engine.jobs import Cancelled, Checkpoint, DataSummary, Emit, Loss, Message, Preview, Progress, Requests
from engine.models import (
    build_autoencoder,
    build_model,
    count_parameters,
    diffusion_shape,
    diffusion_size,
    io_channels,
    null_class,
    pixel_channels,
)
from engine.threads import use_free_cores

PREVIEW_STEPS = 25  # DDIM steps of a training preview


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "huber":
        return F.huber_loss(pred, target, delta=delta)
    raise ValueError(f"unknown loss {kind!r}")


def lr_at(step: int, base: float, warmup: int, total: int = 0, schedule: str = "constant") -> float:
    if step < warmup:
        return base * (step + 1) / max(1, warmup)
    if schedule == "cosine" and total > warmup:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return base


def step_generator(seed: int, step: int, rank: int = 0, world: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step * world + rank)


class EMA:
    """Exponential moving average of the weights, with the usual warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        sd = model.state_dict()
        self.keys = [k for k, v in sd.items() if v.is_floating_point()]
        self.live = [sd[k] for k in self.keys]
        self.shadow = {k: v.detach().clone().float() for k, v in sd.items()}
        self.shadow_list = [self.shadow[k] for k in self.keys]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow_list, [t.float() for t in self.live], 1.0 - d)

    def load(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.shadow[k].copy_(v)


def mixed_precision(requested: str, device: str) -> str:
    if device != "cuda":
        return "no"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def complete_model_config(cfg: RunConfig, data: ImageSet) -> None:
    """Channel, label and class counts come from the data, not the preset."""
    cfg.facts.image_channels = data.channels
    cfg.facts.spatial_dims = data.spatial_dims
    cfg.facts.mask_mode = cfg.data.mask_mode if data.masks is not None else "none"
    cfg.facts.mask_labels = data.num_mask_labels if cfg.mask_mode != "none" else 0
    cfg.facts.num_classes = data.num_classes if cfg.data.class_conditional else 0
    cfg.facts.in_channels = io_channels(cfg)[0]


def data_summary(data: ImageSet, cfg: RunConfig, params: int) -> str:
    """What training found in the data and the model size it leads to, said before the first step."""
    coding = describe_mask_coding(data) if cfg.mask_mode != "none" else ""
    return f"{coding + '; ' if coding else ''}model {params / 1e6:.2f} M parameters, {cfg.facts.in_channels} " \
           f"input channel{'s' if cfg.facts.in_channels != 1 else ''}"


class TrainJob:
    def __init__(self, cfg: RunConfig | None, run_dir: str | Path, *, resume: bool = False,
                 data: ImageSet | None = None, steps: int | None = None,
                 preview_at_end: bool = False) -> None:
        self.run_dir = Path(run_dir)
        # The app shows what the final weights make; a console has nowhere to show a preview.
        self.preview_at_end = preview_at_end
        self.resume = resume
        self.data = data
        if resume:
            # A latent run stopped during stage 1 has autoencoder checkpoints but no diffusion one yet.
            in_stage1 = checkpoints.latest(self.run_dir) is None and \
                checkpoints.latest(autoencoder.stage_dir(self.run_dir)) is not None
            self.ckpt = None if in_stage1 else checkpoints.resolve(self.run_dir)
            self.cfg = load_config(self.run_dir / "config.json")
        else:
            if cfg is None:
                raise ValueError("a config is needed for a new run")
            if checkpoints.latest(self.run_dir) is not None or \
                    checkpoints.latest(autoencoder.stage_dir(self.run_dir)) is not None:
                raise InputError(self.run_dir, "already holds a training run; resume it to continue, or "
                                               "choose a new run folder")
            self.ckpt = None
            self.cfg = cfg
        if steps is not None:
            self.cfg.train.steps = int(steps)

    def run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        from accelerate import Accelerator

        cfg, tc = self.cfg, self.cfg.train
        if self.data is None:
            emit(Progress("load", 0, 1))
            self.data = load_images(cfg.data.path, split=cfg.data.split, volumes=volume_options(cfg))
        data = self.data
        if not cfg.data.path and data.source and Path(data.source).exists():
            # Data handed over in memory (the app, tests) is still found again on resume and by mask-conditioned
            # sampling: the run folder's own config.json is the one place that keeps the full path.
            cfg.data.path = str(Path(data.source).resolve())
        state: dict[str, Any] = checkpoints.read_state(self.ckpt) if self.ckpt else {}
        fresh = self.ckpt is None and not self.resume
        if fresh:
            complete_model_config(cfg, data)
        if self.ckpt is None:
            norm = fit_normalisation(data, cfg.data.modality)
        else:
            norm = Normalisation.from_dict(state["normalisation"])

        device = pick_device(tc.device)
        if device == "cpu":
            use_free_cores()
        if fresh and batch_for(tc, device) != tc.batch:
            emit(Message(f"batch {tc.cpu_batch} on the CPU (the preset's CPU batch; {tc.batch} on a GPU)"))
            tc.batch = batch_for(tc, device)
        if warning := device_warning(cfg.preset, device):
            emit(Message(warning))
        voxels = len(data) * cfg.model.image_size ** max(cfg.facts.spatial_dims, 2)
        data_bytes = voxels * (pixel_channels(cfg) + io_channels(cfg)[2]) * 4
        fits = memory.check(cfg, device, cfg.preset, data_bytes=data_bytes)
        emit(Message(fits.describe()))
        emit(DataSummary(data_summary(data, cfg, fits.stages[-1].params)))
        acc = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision(tc.mixed_precision, device))
        rank, world = acc.process_index, acc.num_processes
        tensors = to_tensors(data, norm, cfg.model.image_size, cfg.mask_mode, cfg.facts.mask_labels,
                             cfg.facts.num_classes > 0)
        spacing, affine = resized_geometry(data, cfg.model.image_size)  # of what the model makes
        x_all = tensors.x.to(acc.device)
        labels_all = None if tensors.labels is None else tensors.labels.to(acc.device)
        cond_all = None if tensors.cond is None else tensors.cond.to(acc.device)
        facts = {
            "normalisation": norm.to_dict(), "class_names": data.class_names,
            "label_names": {str(k): v for k, v in data.label_names.items()},
            "spacing": list(spacing) if spacing else None,
            "affine": affine.tolist() if affine is not None else None,
            "mask_coding": {str(k): v for k, v in data.mask_coding.items()},
            # The run folder's config.json keeps the full path for --resume; checkpoints travel as the model.
            "data_source": public_path(data.source, cfg.data.record_full_path) if data.source else "",
            "config": public_config(cfg.to_dict()),
        }
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.json")
            (self.run_dir / "run.json").write_text(json.dumps(facts, indent=2))

        ae = None
        if cfg.autoencoder.enabled:
            if self.ckpt is not None:
                ae = build_autoencoder(cfg)
                ae.load_state_dict(checkpoints.read_weights(self.ckpt, "autoencoder"))
                ae.to(acc.device)
            else:
                ae, stopped = autoencoder.train_autoencoder(cfg, x_all, self.run_dir, acc, emit, requests,
                                                            stop_requested, step_generator)
                if stopped:
                    result = {"run_dir": str(self.run_dir), "step": 0, "main_process": acc.is_main_process,
                              "checkpoint": str(checkpoints.latest(autoencoder.stage_dir(self.run_dir))),
                              "loss": float("nan"), "seconds": 0.0, "peak_gpu_gib": peak_gpu(acc),
                              "stage": "autoencoder"}
                    raise Cancelled("stopped in stage 1", result)
            emit(Progress("encode", 0, 1))
            latents = autoencoder.encode_all(ae, x_all)
            scale = float(state["latent_scale"]) if state else autoencoder.latent_scale(latents)
            facts["latent_scale"] = scale
            x_all = latents * scale
            del latents
            if cond_all is not None:
                cond_all = autoencoder.condition_at(cond_all, x_all.shape[2:])

        torch.manual_seed(tc.seed)
        model = build_model(cfg)
        ema = EMA(model, tc.ema_decay)
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        start = 0
        if self.ckpt is not None:
            model.load_state_dict(checkpoints.read_weights(self.ckpt, "model"))
            ema = EMA(model, tc.ema_decay)
            ema.load(checkpoints.read_weights(self.ckpt, "ema"))
            checkpoints.load_optimizer(opt, checkpoints.read_weights(self.ckpt, "optimizer"),
                                       state["optimizer_param_groups"])
            start = int(state["step"])
        channels_last = acc.device.type == "cuda" and x_all.dim() == 4
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model, opt = acc.prepare(model, opt)
        net = acc.unwrap_model(model)
        forward = torch.compile(model) if (tc.compile and acc.device.type == "cuda") else model
        noise_sched = train_scheduler(tc)
        alphas = noise_sched.alphas_cumprod.to(acc.device)
        null = null_class(cfg)
        dims = max(cfg.facts.spatial_dims, 2)
        latent = ae is not None
        extra = {"autoencoder": ae.state_dict()} if latent else None
        log_path = self.run_dir / "loss.jsonl"
        if acc.is_main_process and start > 0 and log_path.exists():
            # Steps logged after the checkpoint we resume from will be trained again.
            kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
            log_path.write_text("".join(ln + "\n" for ln in kept))
        log = open(log_path, "a") if acc.is_main_process else None

        def save(step: int) -> Path | None:
            if not acc.is_main_process:
                return None
            path = checkpoints.save(self.run_dir, step, net, ema.shadow, opt.optimizer
                                    if hasattr(opt, "optimizer") else opt, facts, extra_weights=extra)
            emit(Checkpoint(step, str(path)))
            return path

        def preview(step: int) -> None:
            n = 8 if dims == 2 else 2
            gens = [torch.Generator().manual_seed(tc.seed + i) for i in range(n)]
            labels = None if null is None else torch.arange(n) % max(cfg.facts.num_classes, 1)
            cond = None if cond_all is None else cond_all[:n]

            def on_step(i: int, total: int) -> None:
                # A preview can take minutes on a CPU: say how far it is (and Stop cuts it short).
                emit(Progress("preview", i, total, {"step": step}))

            net.eval()
            try:
                with ema_weights(net, ema):
                    x = denoise(net, sampler("ddim", tc, latent), PREVIEW_STEPS, diffusion_shape(cfg), gens,
                                acc.device, labels=labels, cond=cond, null_class=null, guidance=1.0,
                                autocast=acc.autocast, on_step=on_step, clip=not latent, requests=requests)
            except Cancelled:
                x = None  # the loop stops at its next poll, after saving the checkpoint
            net.train()
            nonlocal previewed
            previewed = step
            if x is None:
                return
            if latent:
                x = autoencoder.decode(ae, x, facts["latent_scale"])
            images = norm.inverse(x[:, :cfg.facts.image_channels]).cpu().numpy()
            if dims == 3:
                images = images[:, :, images.shape[2] // 2]  # previews show the central slice
            emit(Preview(step, images))

        if not acc.is_main_process:
            emit = _silent
        emit(Message(f"training {count_parameters(net) / 1e6:.2f} M parameters on {acc.device} "
                     f"({world} process{'es' if world > 1 else ''}, precision {acc.mixed_precision}), "
                     f"{len(data)} images at {cfg.model.image_size} px"
                     f"{f' (latent {diffusion_size(cfg)})' if latent else ''}, steps {start}->{tc.steps}"))
        model.train()
        n = x_all.shape[0]
        bshape = (-1,) + (1,) * (x_all.dim() - 1)  # per-sample scalars broadcast over C and space
        t0, t_last, step_last = time.perf_counter(), time.perf_counter(), start
        running = torch.zeros((), device=acc.device)
        last_loss = last_ips = float("nan")
        device_name = torch.cuda.get_device_name(acc.device) if acc.device.type == "cuda" else "CPU"
        step = start
        was_cancelled = False
        previewed = -1
        # A short run still draws a curve: at least about twenty points whatever the preset's interval.
        log_every = max(1, min(tc.log_every, tc.steps // 20))
        sync = torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None)
        timer = StepTimer(start, tc.steps, lambda per_step, steps: emit(describe(
            per_step, steps, device_name, cfg.preset, acc.device.type,
            "stage 2, the diffusion model," if latent else "training")), sync)
        while step < tc.steps:
            if stop_requested(acc, requests.stop_asked()):
                was_cancelled = True
                break
            g = step_generator(tc.seed, step, rank, world)
            idx = torch.randint(n, (tc.batch,), generator=g).to(acc.device)
            x0 = x_all[idx]
            noise = torch.randn(x0.shape, generator=g).to(acc.device)
            t = torch.randint(0, tc.num_train_timesteps, (tc.batch,), generator=g).to(acc.device)
            if tc.flip:
                flip = (torch.rand(tc.batch, generator=g) < 0.5).to(acc.device).view(bshape)
                x0 = torch.where(flip, x0.flip(-1), x0)
            a = alphas[t].view(bshape)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = noise if tc.prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
            inp = noisy
            if cond_all is not None:
                cond = cond_all[idx]
                if tc.flip:
                    cond = torch.where(flip, cond.flip(-1), cond)
                inp = torch.cat([noisy, cond], dim=1)
            labels = None
            if labels_all is not None:
                labels = labels_all[idx]
                drop = (torch.rand(tc.batch, generator=g) < tc.cfg_dropout).to(acc.device)
                labels = torch.where(drop, torch.full_like(labels, null), labels)
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            lr = lr_at(step, tc.lr, tc.warmup_steps, tc.steps, tc.lr_schedule)
            for group in opt.param_groups:
                group["lr"] = lr
            with acc.autocast():
                pred = forward(inp, t, class_labels=labels).sample
            loss = diffusion_loss(pred.float(), target, tc.loss, tc.huber_delta)
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(step)
            running += loss.detach()
            step += 1
            timer(step)

            if step % log_every == 0 or step == tc.steps:
                mean = acc.reduce(running, "mean") if world > 1 else running
                last_loss = float(mean.item()) / max(1, step - step_last)
                running.zero_()
                now = time.perf_counter()
                ips = last_ips = (step - step_last) * tc.batch * world / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                emit(Loss(step, last_loss, lr))
                if log is not None:
                    log.write(json.dumps({"step": step, "loss": round(last_loss, 6), "lr": lr,
                                          "images_per_s": round(ips, 2), "time": round(now - t0, 3)}) + "\n")
                    log.flush()
            info = {"loss": last_loss, "images_per_s": last_ips, "device": device_name}
            if acc.device.type == "cuda":
                info["gpu_mem_gib"] = torch.cuda.memory_allocated() / 2**30
            emit(Progress("train", step, tc.steps, info))
            if step % tc.checkpoint_every == 0 or requests.take_save_now():
                save(step)
            if (tc.preview_every and step % tc.preview_every == 0) or requests.take_preview_now():
                preview(step)

        if self.preview_at_end and not was_cancelled and step > start and previewed != step and acc.is_main_process:
            preview(step)
        if log is not None:
            log.close()
        path = save(step) if step > start or was_cancelled or self.ckpt is None else self.ckpt
        if world > 1:
            # Every process waits for the main one's final checkpoint before exiting: a process
            # that leaves the group early made gloo abort at exit (2 runs in 6 here).
            acc.wait_for_everyone()
        peak = peak_gpu(acc)
        result = {"run_dir": str(self.run_dir), "step": step, "main_process": acc.is_main_process,
                  "checkpoint": str(path) if path else None,
                  "loss": last_loss, "seconds": time.perf_counter() - t0, "peak_gpu_gib": peak}
        if was_cancelled:
            raise Cancelled("training stopped", result)
        return result


def peak_gpu(acc: Any) -> float | None:
    """Peak GPU memory of this process in GiB, the figure users compare with their card."""
    return torch.cuda.max_memory_allocated() / 2**30 if acc.device.type == "cuda" else None


def stop_requested(acc: Any, local: bool) -> bool:
    """A stop seen by any process stops all of them at the same step; otherwise DDP deadlocks."""
    if acc.num_processes == 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=acc.device)
    return bool(acc.reduce(flag, "sum").item() > 0)


def _silent(ev: Any) -> None:
    """Processes other than the main one report nothing, so the console shows one run; their end comes
    back from run()."""


@contextlib.contextmanager
def ema_weights(net: torch.nn.Module, ema: EMA):
    """Swap the EMA weights in for previews, then put the training weights back."""
    backup = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict({k: v.to(backup[k].dtype) for k, v in ema.shadow.items()})
    try:
        yield
    finally:
        net.load_state_dict(backup)
