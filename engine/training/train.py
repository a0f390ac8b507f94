"""Diffusion training as a job: the same loop runs from the CLI, the app and under `accelerate launch`.

Each step draws its batch, noise and timesteps from a generator seeded by
(seed, step, rank). Resuming therefore needs only the weights, EMA, optimizer
state and step count to continue exactly as an uninterrupted run would.

`batch` is each process's; the global batch (batch x processes) is what a run keeps. A checkpoint records the
number of processes and the global batch it trained with, so a run resumed on another number of processes gives
each its share of the same global batch (or says what the global batch becomes when it does not split evenly).

A run goes set-up → stage 1 (latent models only) → model → loop → finish, one method each;
the pieces of a step are in engine.training.steps, the run folder's layout in engine.training.run_dir.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.config import RunConfig, batch_for, public_config, public_path
from engine.data.dataset import ImageSet, data_warnings, describe_mask_coding
from engine.data.prepare import Normalisation, fit_normalisation, resized_geometry, to_tensors
from engine.io import destination
from engine.io.load import load_images, volume_options
from engine.jobs import Cancelled, Checkpoint, DataSummary, Emit, Message, Preview, Progress, Requests
from engine.models.diffusion import denoise, noise_levels, sampler
from engine.models.networks import (
    build_autoencoder,
    build_model,
    count_parameters,
    diffusion_shape,
    diffusion_size,
    io_channels,
    null_class,
    pixel_channels,
)
from engine.runtime import launch, memory
from engine.runtime.devices import pick_device
from engine.runtime.estimate import StepTimer, describe, device_warning
from engine.runtime.threads import use_free_cores
from engine.settings import Sampler, samplers_for
from engine.training import autoencoder, checkpoints
from engine.training.ema import EMA, ema_weights
from engine.training.meter import TrainMeter
from engine.training.run_dir import KEEP, RunDir
from engine.training.steps import draw_batch, lr_at, noised_loss, step_generator

PREVIEW_STEPS = 25  # sampler steps of a training preview


def preview_sampler(objective: str) -> str:
    """DDIM where it fits (deterministic, so previews of one run compare), else the objective's default."""
    fits = samplers_for(objective)
    return Sampler.DDIM.value if Sampler.DDIM in fits else fits[0].value


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
    if cfg.fine_tune:
        return f"{params / 1e6:.2f} M weights train " \
               f"({f'LoRA rank {cfg.pretrained.lora_rank}' if cfg.pretrained.lora_rank else 'the whole UNet'})"
    return f"{coding + '; ' if coding else ''}model {params / 1e6:.2f} M parameters, {cfg.facts.in_channels} " \
           f"input channel{'s' if cfg.facts.in_channels != 1 else ''}"


@dataclass
class RunState:
    """What set-up hands to the later stages of one run."""

    acc: Any
    data: ImageSet
    norm: Normalisation
    state: dict[str, Any]  # the resumed checkpoint's state; empty for a new run
    facts: dict[str, Any]  # what every checkpoint carries besides the weights
    x_all: torch.Tensor  # the training set on the device: pixels, or scaled latents after stage 1
    labels_all: torch.Tensor | None
    cond_all: torch.Tensor | None
    ae: torch.nn.Module | None = None
    # Set by _build_model:
    model: Any = None  # as Accelerate prepared it
    net: Any = None  # the bare network, for saving and previews
    forward: Any = None  # what the step calls: the model, compiled on a GPU when asked
    opt: Any = None
    ema: EMA | None = None
    levels: torch.Tensor | None = None  # engine.models.diffusion.noise_levels
    channels_last: bool = False
    start: int = 0
    saved: int = -1  # the step of the newest checkpoint on disk from this run (or the one it resumed from)
    previewed: int = -1
    t0: float = 0.0  # when the loop began: the run's seconds count from here

    @property
    def latent(self) -> bool:
        return self.ae is not None


def format_lr(lr: float) -> str:
    """A learning rate as users write it: 2e-4, 1.5e-4."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def processes_word(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


def trained_processes(state: dict[str, Any]) -> int | None:
    """The number of processes a checkpoint trained with; None for one that does not say (older checkpoints)."""
    n = state.get("processes")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def trained_global_batch(state: dict[str, Any]) -> int | None:
    """The global batch a checkpoint trained with (its recorded one, else its config's batch x its processes)."""
    n = state.get("global_batch")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        return n
    processes, batch = trained_processes(state), state.get("config", {}).get("train", {}).get("batch")
    if processes is None or not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        return None
    return batch * processes


def share_of_batch(global_batch: int, world: int) -> tuple[int, str | None]:
    """Each of `world` processes' batch for a run that trained with `global_batch`, and what to tell the user
    when the global batch cannot stay the same (it does not split into `world` equal parts)."""
    per = max(1, round(global_batch / world))
    if per * world == global_batch:
        return per, None
    return per, (f"the global batch {global_batch} does not split evenly over {processes_word(world)}: it becomes "
                 f"{per * world} ({world} × {per})")


def _first_process() -> bool:
    """True outside `accelerate launch` and on its rank 0: the one process that owns the run folder's lock."""
    return os.environ.get("RANK", "0") == "0"


class TrainJob:
    def __init__(self, cfg: RunConfig | None, run_dir: str | Path, *, resume: bool = False,
                 data: ImageSet | None = None, steps: int | None = None,
                 preview_at_end: bool = False) -> None:
        self.folder = RunDir(run_dir)
        self.run_dir = self.folder.path
        # The app shows what the final weights make; a console has nowhere to show a preview.
        self.preview_at_end = preview_at_end
        self.resume = resume
        self.data = data
        self.notes: list[str] = []  # what set-up found and did to the run folder, said when the job runs
        if _first_process():
            # Two runs into one folder would interleave their logs and prune each other's checkpoints.
            destination.check_unlocked(self.run_dir)
            destination.check_writable(self.run_dir, folder=True)  # a read-only folder: refused before any work
        if resume:
            self.folder.resume_checkpoint()  # a folder that is no run is refused before anything in it changes
            self.notes = self.folder.recover()
            self.ckpt = self.folder.resume_checkpoint()  # None: stopped in stage 1 or before its first checkpoint
            if self.ckpt is not None:
                checkpoints.verify(self.ckpt)  # a damaged checkpoint is refused before the data is read
            if self.ckpt is None and not self.folder.autoencoder.has_checkpoint():
                self.notes.append(f"{self.run_dir}: no checkpoint was saved before the run stopped; it trains "
                                  "again from step 0 with its own settings")
            self.cfg = self.folder.read_config()
        else:
            if cfg is None:
                raise ValueError("a config is needed for a new run")
            self.folder.refuse_new_run()
            self.ckpt = None
            self.cfg = cfg
        if steps is not None:
            self.cfg.train.steps = int(steps)

    def run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        if not _first_process():
            return self._run(emit, requests)
        with destination.writer_lock(self.run_dir):
            return self._run(emit, requests)

    def _run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        if not _first_process():
            emit = _silent  # one process speaks for the run, from its first message on
        for note in self.notes:
            emit(Message(note))
        run = self._set_up(emit)
        if self.latent_stage:
            self._latent_stage(run, emit, requests)
        self._build_model(run)
        if not run.acc.is_main_process:
            emit = _silent
        step, was_cancelled, loss = self._loop(run, emit, requests)
        return self._finish(run, step, was_cancelled, loss, emit, requests)

    # -- what a fine-tune (engine.training.finetune) does its own way -----------------------
    @property
    def latent_stage(self) -> bool:
        """Whether the training set moves into a latent space before the diffusion model trains."""
        return self.cfg.autoencoder.enabled

    def _network(self, run: RunState) -> torch.nn.Module:
        return build_model(self.cfg)

    def _null(self) -> int | None:
        """The label that stands for "no condition" (dropped in training, the guidance's other half)."""
        return null_class(self.cfg)

    def _preview_labels(self, n: int) -> torch.Tensor | None:
        return None if self._null() is None else torch.arange(n) % max(self.cfg.facts.num_classes, 1)

    def _decode(self, run: RunState, x: torch.Tensor) -> torch.Tensor:
        """Samples of the diffusion model back to normalised pixels."""
        return autoencoder.decode(run.ae, x, run.facts["latent_scale"])

    def _extra_weights(self, run: RunState) -> dict[str, Any] | None:
        """Weight files a checkpoint carries besides the network's: a latent model's autoencoder."""
        return {"autoencoder": run.ae.state_dict()} if run.latent else None

    # -- set-up -----------------------------------------------------------------------------
    def _load_data(self, emit: Emit) -> ImageSet:
        cfg = self.cfg
        if self.data is None:
            emit(Progress("load", 0, 1))
            self.data = load_images(cfg.data.path, split=cfg.data.split, volumes=volume_options(cfg))
        for warning in data_warnings(self.data):
            emit(Message(warning))
        if not cfg.data.path and self.data.source and Path(self.data.source).exists():
            # Data handed over in memory (the app, tests) is still found again on resume and by mask-conditioned
            # sampling: the run folder's own config.json is the one place that keeps the full path.
            cfg.data.path = str(Path(self.data.source).resolve())
        return self.data

    def _choose_device(self, data: ImageSet, emit: Emit) -> str:
        """The device, the batch for it, and whether the run fits its memory, said before any work."""
        cfg, tc = self.cfg, self.cfg.train
        device = pick_device(tc.device)
        if device == "cpu":
            use_free_cores()
        if self.ckpt is None and not self.resume and batch_for(tc, device) != tc.batch:
            emit(Message(f"batch {tc.cpu_batch} on the CPU (the preset's CPU batch; {tc.batch} on a GPU)"))
            tc.batch = batch_for(tc, device)
        if warning := device_warning(cfg.preset, device):
            emit(Message(warning))
        voxels = len(data) * cfg.model.image_size ** max(cfg.facts.spatial_dims, 2)
        data_bytes = voxels * (pixel_channels(cfg) + io_channels(cfg)[2]) * 4
        fits = memory.check(cfg, device, cfg.preset, data_bytes=data_bytes)
        emit(Message(fits.describe()))
        emit(DataSummary(data_summary(data, cfg, fits.stages[-1].params)))
        return device

    def _keep_global_batch(self, state: dict[str, Any], world: int, emit: Emit) -> None:
        """A run resumed on another number of processes keeps its global batch: each process takes its share."""
        before, global_batch = trained_processes(state), trained_global_batch(state)
        if before is None or global_batch is None:
            return  # a checkpoint from before processes were recorded: each process's batch as it was
        tc = self.cfg.train
        if before == world:
            # The checkpoint's batch, not config.json's: a resume on another count that stopped before its first
            # checkpoint has rewritten config.json with its own share.
            tc.batch = global_batch // world
            return
        tc.batch, change = share_of_batch(global_batch, world)
        emit(Message(f"resumed on {processes_word(world)} (trained on {before}): "
                     + (change or f"global batch {global_batch} kept, {tc.batch} per process")))

    def _facts(self, data: ImageSet, norm: Normalisation) -> dict[str, Any]:
        cfg = self.cfg
        spacing, affine = resized_geometry(data, cfg.model.image_size)  # of what the model makes
        return {
            "normalisation": norm.to_dict(), "class_names": data.class_names,
            "label_names": {str(k): v for k, v in data.label_names.items()},
            "spacing": list(spacing) if spacing else None,
            "affine": affine.tolist() if affine is not None else None,
            "mask_coding": {str(k): v for k, v in data.mask_coding.items()},
            # The run folder's config.json keeps the full path for resuming; checkpoints travel as the model.
            "data_source": public_path(data.source, cfg.data.record_full_path) if data.source else "",
            "config": public_config(cfg.to_dict()),
        }

    def _set_up(self, emit: Emit) -> RunState:
        """Data, normalisation, device and memory check, Accelerate, tensors; config and facts written."""
        from accelerate import Accelerator

        launch.check_replicated()
        cfg = self.cfg
        data = self._load_data(emit)
        state: dict[str, Any] = checkpoints.read_state(self.ckpt) if self.ckpt else {}
        if self.ckpt is None and not self.resume:
            complete_model_config(cfg, data)
        norm = fit_normalisation(data, cfg.data.modality) if self.ckpt is None else \
            Normalisation.from_dict(state["normalisation"])
        # Before the memory check: that estimate is of each process's batch.
        self._keep_global_batch(state, launch.world_size(), emit)
        device = self._choose_device(data, emit)
        acc = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision(cfg.train.mixed_precision, device))
        if acc.num_processes != launch.world_size():  # a launcher that says so other than by WORLD_SIZE
            self._keep_global_batch(state, acc.num_processes, emit)
        tensors = to_tensors(data, norm, cfg.model.image_size, cfg.mask_mode, cfg.facts.mask_labels,
                             cfg.facts.num_classes > 0)
        on_device = [None if t is None else t.to(acc.device) for t in (tensors.x, tensors.labels, tensors.cond)]
        facts = self._facts(data, norm)
        facts["processes"], facts["global_batch"] = acc.num_processes, cfg.train.batch * acc.num_processes
        if acc.is_main_process:
            self.folder.write_config(cfg)
            self.folder.write_facts(facts)
        return RunState(acc, data, norm, state, facts, *on_device)

    # -- stage 1 ----------------------------------------------------------------------------
    def _latent_stage(self, run: RunState, emit: Emit, requests: Requests) -> None:
        """Train (or load) the autoencoder and move the training set into its latent space; a stop during stage 1
        raises Cancelled with the run's figures, its checkpoint saved."""
        cfg, acc = self.cfg, run.acc
        if self.ckpt is not None:
            ae = build_autoencoder(cfg)
            ae.load_state_dict(checkpoints.read_weights(self.ckpt, "autoencoder"))
            ae.to(acc.device)
        else:
            ae, stopped = autoencoder.train_autoencoder(cfg, run.x_all, self.folder.autoencoder, acc, emit, requests,
                                                        stop_requested)
            if stopped:
                self._done(acc, 0, True, self.folder.autoencoder.latest(), float("nan"), 0.0, stage="autoencoder")
        emit(Progress("encode", 0, 1))
        latents = autoencoder.encode_all(ae, run.x_all)
        scale = float(run.state["latent_scale"]) if run.state else autoencoder.latent_scale(latents)
        run.facts["latent_scale"] = scale
        # Stage 1's figure travels with every diffusion checkpoint, as the autoencoder's weights do.
        stage1 = self.folder.autoencoder.latest()
        recon = run.state.get("autoencoder_reconstruction") if run.state else None
        if recon is None and stage1 is not None:
            recon = checkpoints.read_state(stage1).get("reconstruction")
        if recon is not None:
            run.facts["autoencoder_reconstruction"] = recon
        run.x_all = latents * scale
        del latents
        if run.cond_all is not None:
            run.cond_all = autoencoder.condition_at(run.cond_all, run.x_all.shape[2:])
        run.ae = ae
        return None

    # -- model ------------------------------------------------------------------------------
    def _build_model(self, run: RunState) -> None:
        """The network, its EMA and optimizer, restored from the checkpoint when resuming."""
        tc, acc = self.cfg.train, run.acc
        torch.manual_seed(tc.seed)
        model = self._network(run)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                                weight_decay=tc.weight_decay)
        if self.ckpt is not None:
            model.load_state_dict(checkpoints.read_weights(self.ckpt, "model"))
            checkpoints.load_optimizer(opt, checkpoints.read_weights(self.ckpt, "optimizer"),
                                       run.state["optimizer_param_groups"])
            run.start = run.saved = int(run.state["step"])
        run.ema = EMA(model, tc.ema_decay)
        if self.ckpt is not None:
            run.ema.load(checkpoints.read_weights(self.ckpt, "ema"))
        if acc.is_main_process:
            # Weights, EMA and AdamW's two moments in float32, for the checkpoints kept and the one being written:
            # a disk too small for them is said now, not at the first checkpoint.
            destination.check_room(self.run_dir, 16 * count_parameters(model, trained=True) * (KEEP + 1),
                                   folder=True)
        run.channels_last = acc.device.type == "cuda" and run.x_all.dim() == 4
        if run.channels_last:
            model = model.to(memory_format=torch.channels_last)
        run.model, run.opt = acc.prepare(model, opt)
        run.net = acc.unwrap_model(run.model)
        run.forward = torch.compile(run.model) if (tc.compile and acc.device.type == "cuda") else run.model
        run.levels = noise_levels(tc, run.x_all.shape[2:]).to(acc.device)

    # -- the loop ---------------------------------------------------------------------------
    def _announce(self, run: RunState, emit: Emit) -> None:
        cfg, tc, acc = self.cfg, self.cfg.train, run.acc
        world = acc.num_processes
        # The gradients of the processes' batches are averaged: the learning rate acts on the global batch.
        split = f" = {processes_word(world)} × {tc.batch}" if world > 1 else ""
        emit(Message(f"training {count_parameters(run.net, trained=True) / 1e6:.2f} M parameters on {acc.device} "
                     f"({processes_word(world)}, precision {acc.mixed_precision}), "
                     f"{len(run.data)} images at {cfg.model.image_size} px"
                     f"{f' (latent {diffusion_size(cfg)})' if run.latent else ''}, steps {run.start}->"
                     f"{tc.steps}; global batch {tc.batch * world}{split}; lr {format_lr(tc.lr)}"))

    def _train_step(self, run: RunState, step: int) -> tuple[torch.Tensor, float]:
        """One optimizer step on the batch of `step`; returns its loss and learning rate."""
        tc, acc = self.cfg.train, run.acc
        g = step_generator(tc.seed, step, acc.process_index, acc.num_processes)
        batch = draw_batch(g, tc, run.x_all, run.cond_all, run.labels_all, self._null(), acc.device)
        lr = lr_at(step, tc.lr, tc.warmup_steps, tc.steps, tc.lr_schedule)
        for group in run.opt.param_groups:
            group["lr"] = lr
        loss = noised_loss(run.forward, batch, run.levels, tc, acc.autocast, run.channels_last)
        acc.backward(loss)
        acc.clip_grad_norm_(run.model.parameters(), 1.0)
        run.opt.step()
        run.opt.zero_grad(set_to_none=True)
        run.ema.update(step)
        return loss, lr

    def _loop(self, run: RunState, emit: Emit, requests: Requests) -> tuple[int, bool, float]:
        """Train from run.start to the configured step count; returns (step, cancelled, last logged loss)."""
        cfg, tc, acc = self.cfg, self.cfg.train, run.acc
        self._announce(run, emit)
        run.model.train()
        log = self.folder.open_loss_log(run.start) if acc.is_main_process else None
        if log is not None and log.note:
            emit(Message(log.note))
        meter = TrainMeter(acc, tc, run.start, log)
        run.t0 = meter.t0
        sync = torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None)
        timer = StepTimer(run.start, tc.steps, lambda per_step, steps: emit(describe(
            per_step, steps, meter.device_name, cfg.preset, acc.device.type,
            "stage 2, the diffusion model," if run.latent and not cfg.fine_tune else "training")), sync)
        step, was_cancelled = run.start, False
        while step < tc.steps:
            if stop_requested(acc, requests.stop_asked()):
                was_cancelled = True
                break
            loss, lr = self._train_step(run, step)
            step += 1
            timer(step)
            meter.after(step, loss, lr, emit)
            if step % tc.checkpoint_every == 0 or requests.take_save_now():
                self._save(run, step, emit)
            if (tc.preview_every and step % tc.preview_every == 0) or requests.take_preview_now():
                self._preview(run, step, emit, requests)
        if log is not None:
            log.close()
        return step, was_cancelled, meter.loss

    def _save(self, run: RunState, step: int, emit: Emit) -> Path | None:
        run.saved = step
        if not run.acc.is_main_process:
            return None
        opt = run.opt.optimizer if hasattr(run.opt, "optimizer") else run.opt
        path = self.folder.save_checkpoint(step, run.net, run.ema.shadow, opt, run.facts,
                                           extra_weights=self._extra_weights(run))
        emit(Checkpoint(step, str(path)))
        return path

    def _preview(self, run: RunState, step: int, emit: Emit, requests: Requests) -> None:
        """A few samples from the EMA weights, shown in the app while training goes on."""
        cfg, tc, net = self.cfg, self.cfg.train, run.net
        dims = max(cfg.facts.spatial_dims, 2)
        n = 8 if dims == 2 else 2
        gens = [torch.Generator().manual_seed(tc.seed + i) for i in range(n)]
        labels = self._preview_labels(n)
        cond = None if run.cond_all is None else run.cond_all[:n]

        def on_step(i: int, total: int) -> None:
            # A preview can take minutes on a CPU: say how far it is (and Stop cuts it short).
            emit(Progress("preview", i, total, {"step": step}))

        net.eval()
        try:
            with ema_weights(net, run.ema):
                x = denoise(net, sampler(preview_sampler(tc.objective), tc, run.latent, diffusion_shape(cfg)[1:]),
                            PREVIEW_STEPS, diffusion_shape(cfg), gens,
                            run.acc.device, labels=labels, cond=cond, null_class=self._null(), guidance=1.0,
                            autocast=run.acc.autocast, on_step=on_step, clip=not run.latent, requests=requests)
        except Cancelled:
            x = None  # the loop stops at its next poll, after saving the checkpoint
        net.train()
        run.previewed = step
        if x is None:
            return
        if run.latent:
            x = self._decode(run, x)
        images = run.norm.inverse(x[:, :cfg.facts.image_channels]).cpu().numpy()
        if dims == 3:
            images = images[:, :, images.shape[2] // 2]  # previews show the central slice
        emit(Preview(step, images))

    # -- finish -----------------------------------------------------------------------------
    def _finish(self, run: RunState, step: int, was_cancelled: bool, loss: float, emit: Emit,
                requests: Requests) -> dict[str, Any]:
        """The final preview and checkpoint, then the run's figures (raised with Cancelled after a stop)."""
        acc = run.acc
        if self.preview_at_end and not was_cancelled and step > run.start and run.previewed != step \
                and acc.is_main_process:
            self._preview(run, step, emit, requests)
        if run.saved == step:  # saved in the loop at this very step, or resumed from it: never saved twice
            path = self.folder.checkpoint_path(step)
        elif step > run.start or was_cancelled or self.ckpt is None:
            path = self._save(run, step, emit)
        else:
            path = self.ckpt
        if acc.num_processes > 1:
            # Every process waits for the main one's final checkpoint, then leaves the process group: a process that
            # left early (2 runs in 6 here), or exited still in the group (1 CI run), made gloo abort it at exit
            # ("terminate called without an active exception", exit -6), as engine/runtime/ranks.py says.
            acc.wait_for_everyone()
            acc.end_training()
        return self._done(acc, step, was_cancelled, path, loss, time.perf_counter() - run.t0)

    def _done(self, acc: Any, step: int, cancelled: bool, checkpoint: Path | None, loss: float,
              seconds: float, **extra: Any) -> dict[str, Any]:
        result = {"run_dir": str(self.run_dir), "step": step, "main_process": acc.is_main_process,
                  "checkpoint": str(checkpoint) if checkpoint else None, "loss": loss, "seconds": seconds,
                  "peak_gpu_gib": peak_gpu(acc), **extra}
        if cancelled:
            raise Cancelled("stopped in stage 1" if extra.get("stage") == "autoencoder" else "training stopped", result)
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
