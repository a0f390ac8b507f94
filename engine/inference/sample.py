"""Generation as a job: a checkpoint in, a MedSynth HDF5 file out, batch by batch.

Sample i uses seed ``seed + i`` for its starting noise, its sampler noise and its
class draw, so ``--seed S --n 1`` regenerates any recorded sample on its own.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import from_dict, public_config
from engine.data.prepare import Normalisation, decode_masks
from engine.errors import InputError
from engine.io import destination
from engine.io.medsynth_h5 import Header
from engine.io.medsynth_writer import SampleWriter, check_new
from engine.jobs import Cancelled, Emit, Message, Progress, Requests
from engine.models.diffusion import denoise, sampler
from engine.models.networks import build_autoencoder, build_model, diffusion_shape, io_channels, null_class
from engine.runtime.devices import pick_device
from engine.runtime.threads import use_free_cores
from engine.settings import SAMPLER_STEPS, Sampler, sampler_fault, samplers_for
from engine.training import autoencoder, checkpoints
from engine.training.run_dir import RunDir, resolve_checkpoint


def _training_data(ckpt: Path, state: dict[str, Any]) -> str:
    """Where a mask-conditioned model's training masks are: the checkpoint names its data only by base
    name and hash, so the full path comes from its run folder's config.json (or an older checkpoint)."""
    run = RunDir.of_checkpoint(ckpt)
    if run is not None and run.config_path.is_file():
        path = run.read_config().data.path
        if path and Path(path).exists():
            return path
    recorded = str(state.get("data_source") or "")
    if recorded and Path(recorded).exists():
        return recorded
    raise InputError(ckpt, "is a mask-conditioned model whose training masks cannot be found (its run folder's "
                           f"config.json names none that exists; the checkpoint records {recorded or 'nothing'})")


def parse_class_mix(text: str, class_names: list[str]) -> dict[int, float]:
    """"0:0.7,2:0.3" or names ("no lesion:1,1 lesion:1") → normalised weights."""
    mix: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, weight = part.rpartition(":")
        if not key:
            key, weight = weight, "1"
        k = int(key) if key.isdigit() else (class_names.index(key) if key in class_names else -1)
        if k < 0 or k >= len(class_names):
            raise InputError(None, f"class mix entry {part!r}: no such class (have {len(class_names)})")
        mix[k] = float(weight)
    total = sum(mix.values())
    if total <= 0:
        raise InputError(None, f"class mix {text!r} has no positive weight")
    return {k: w / total for k, w in mix.items()}


# A redraw of sample i takes seed SEED + i + attempt × this prime: no other sample of a run of fewer samples
# shares it, and the stored seed with the stored class regenerates the sample kept.
REDRAW_SEED_STRIDE = 10_000_019
MAX_REDRAWS = 8


def class_for_seed(seed: int, mix: dict[int, float]) -> int:
    keys = sorted(mix)
    rng = np.random.default_rng([seed, 7])
    return int(rng.choice(keys, p=[mix[k] for k in keys]))


class Generator:
    """A loaded checkpoint ready to sample: used by the sample job, previews and benches."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", use_ema: bool = True) -> None:
        self.ckpt = resolve_checkpoint(checkpoint)
        self.state = checkpoints.read_state(self.ckpt)
        self.cfg = from_dict(self.state["config"])
        self.norm = Normalisation.from_dict(self.state["normalisation"])
        self.class_names = list(self.state.get("class_names") or [])
        self.device = torch.device(pick_device(device))
        self.model = build_model(self.cfg)
        weights = checkpoints.read_weights(self.ckpt, "ema" if use_ema else "model")
        self.model.load_state_dict(weights)
        self.model.to(self.device).eval()
        # A latent model's checkpoint carries its autoencoder, which turns latents into volumes.
        self.autoencoder = None
        self.latent_scale = float(self.state.get("latent_scale") or 1.0)
        if self.cfg.autoencoder.enabled:
            self.autoencoder = build_autoencoder(self.cfg)
            self.autoencoder.load_state_dict(checkpoints.read_weights(self.ckpt, "autoencoder"))
            self.autoencoder.to(self.device).eval()
        self.null = null_class(self.cfg)
        self.out_channels = io_channels(self.cfg)[1]
        self.cond_channels = io_channels(self.cfg)[2]
        self.sha256 = checkpoints.sha256(self.ckpt / ("ema.safetensors" if use_ema else "model.safetensors"))

    def fitting_sampler(self, asked: str | None) -> str:
        """The sampler asked for, or the model's default; InputError when it does not fit the model's objective."""
        if asked is None:
            return samplers_for(self.cfg.train.objective)[0].value
        fault = sampler_fault(asked, self.cfg.train.objective)
        if fault:
            raise InputError(self.ckpt, fault)
        return asked

    @property
    def num_classes(self) -> int:
        return self.cfg.facts.num_classes

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def generate(self, seeds: list[int], labels: list[int] | None, sampler_name: str | None = None,
                 steps: int | None = None, guidance: float = 1.0, cond: torch.Tensor | None = None,
                 requests: Requests | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(images in data units (B, C, H, W), masks (B, H, W) or None); a stop in ``requests`` raises
        Cancelled. No `sampler_name`: the model's default (engine.settings.SAMPLERS); no `steps`: the sampler's own
        (engine.settings.SAMPLER_STEPS)."""
        sampler_name = self.fitting_sampler(sampler_name)
        steps = SAMPLER_STEPS[sampler_name] if steps is None else steps
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        lab = None if labels is None or self.null is None else torch.tensor(labels, dtype=torch.long)
        latent = self.autoencoder is not None
        shape = diffusion_shape(self.cfg)
        if latent and cond is not None:
            cond = autoencoder.condition_at(cond, shape[1:])
        x = denoise(self.model, sampler(sampler_name, self.cfg.train, latent, shape[1:]), steps, shape,
                    gens, self.device, labels=lab, cond=cond, null_class=self.null, guidance=guidance,
                    autocast=self.autocast, clip=not latent, requests=requests)
        if latent:
            with self.autocast():
                x = autoencoder.decode(self.autoencoder, x, self.latent_scale)
        c = self.cfg.facts.image_channels
        images = self.norm.inverse(x[:, :c].float()).cpu().numpy().astype(np.float32)
        masks = decode_masks(x[:, c:]) if self.cfg.mask_mode == "joint" else None
        return images, masks


def _refuse_non_finite(ckpt: Path, images: np.ndarray, first: int) -> None:
    """A NaN or infinite pixel is a broken model (damaged weights, a diverged run), never a sample to keep."""
    bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if bad.any():
        which = np.flatnonzero(bad) + first
        raise InputError(ckpt, f"produced {int(bad.sum())} sample(s) with NaN or infinite values (first: sample "
                               f"{int(which[0])}); its weights may be damaged or its training diverged; "
                               "nothing was written")


class SampleJob:
    def __init__(self, checkpoint: str | Path, n: int, out: str | Path, *, sampler_name: str | None = None,
                 steps: int | None = None, seed: int = 0, class_index: int | None = None,
                 class_mix: str | None = None,
                 guidance: float = 1.0, batch: int = 32, device: str = "auto", overwrite: bool = False,
                 redraw_mismatches: bool = True) -> None:
        if sampler_name is not None and sampler_name not in Sampler.values():
            raise InputError(None, f"unknown sampler {sampler_name!r}; expected one of {', '.join(Sampler.values())}")
        if n < 1 or (steps is not None and steps < 1) or batch < 1:
            raise InputError(None, "the number of samples, sampler steps and batch size must be positive")
        self.checkpoint, self.n, self.out = checkpoint, int(n), Path(out)
        # No steps: the sampler's own (engine.settings.SAMPLER_STEPS), once the model has chosen the sampler.
        self.sampler_name, self.steps, self.seed = sampler_name, None if steps is None else int(steps), int(seed)
        self.class_index, self.class_mix, self.guidance = class_index, class_mix, float(guidance)
        self.batch, self.device, self.overwrite = int(batch), device, overwrite
        # Where the class names are counts of what the mask shows ("1 lesion"), a sample whose mask says
        # otherwise carries a label that lies; such samples are drawn again (at most MAX_REDRAWS times).
        self.redraw_mismatches = redraw_mismatches
        check_new(self.out, overwrite)
        destination.check_unlocked(self.out)  # a second writer of the same file: refused before the model loads

    def _labels(self, gen: Generator, seeds: np.ndarray) -> np.ndarray | None:
        k = gen.num_classes
        if k == 0:
            if self.class_index is not None or self.class_mix:
                raise InputError(gen.ckpt, "this model is not class-conditional; ask for no class or class mix")
            return None
        names = gen.class_names or [str(i) for i in range(k)]
        if self.class_index is not None:
            if not 0 <= self.class_index < k:
                raise InputError(None, f"class {self.class_index} was asked for; the model has classes 0..{k - 1}")
            return np.full(len(seeds), self.class_index, np.int64)
        mix = parse_class_mix(self.class_mix, names) if self.class_mix else {i: 1.0 / k for i in range(k)}
        return np.array([class_for_seed(int(s), mix) for s in seeds], np.int64)

    def _conditions(self, gen: Generator, seeds: np.ndarray) -> torch.Tensor | None:
        """Masks for a mask-conditioned model: training masks picked by each sample's seed."""
        if gen.cond_channels == 0:
            return None
        from engine.data.prepare import to_tensors
        from engine.io.load import load_images, volume_options
        data = load_images(_training_data(gen.ckpt, gen.state), split=gen.cfg.data.split,
                           volumes=volume_options(gen.cfg))
        t = to_tensors(data, gen.norm, gen.cfg.model.image_size, "condition", gen.cfg.facts.mask_labels, False)
        picks = [int(np.random.default_rng([int(s), 11]).integers(len(data))) for s in seeds]
        return t.cond[picks]

    def _redraw(self, gen: Generator, rule: Any, images: np.ndarray, masks: np.ndarray, seeds: np.ndarray,
                labels: list[int], requests: Requests) -> tuple[int, int]:
        """Draw again, in place, the samples of a batch whose mask contradicts their class, keeping the class:
        (samples redrawn, samples still contradicting after MAX_REDRAWS or when the budget ran out)."""
        wrong = [i for i in range(len(seeds)) if rule.mismatch(masks[i], labels[i])]
        redrawn = 0
        base = seeds.copy()
        for attempt in range(1, MAX_REDRAWS + 1):
            # A model that cannot yet count (early in training) would otherwise cost up to nine times the run:
            # redraws share a budget of one draw per planned sample, and what is left over is flagged instead.
            if not wrong or self._budget <= 0:
                break
            if attempt == 1:
                redrawn = min(len(wrong), self._budget)
            wrong, left = wrong[:self._budget], wrong[self._budget:]
            self._budget -= len(wrong)
            new_seeds = [int(base[i]) + attempt * REDRAW_SEED_STRIDE for i in wrong]
            out = gen.generate(new_seeds, [labels[i] for i in wrong], self.sampler_name, self.steps,
                               self.guidance, None, requests=requests)
            for j, i in enumerate(wrong):
                images[i], masks[i], seeds[i] = out[0][j], out[1][j], new_seeds[j]
            wrong = [i for i in wrong if rule.mismatch(masks[i], labels[i])] + left
        return redrawn, len(wrong)

    def _choose_sampler(self, gen: Generator) -> None:
        """The sampler (the model's default unless one was asked for) and its steps, refused before any sample
        when they do not fit the model."""
        self.sampler_name = gen.fitting_sampler(self.sampler_name)
        limit = gen.cfg.train.num_train_timesteps
        if self.steps is None:
            self.steps = min(SAMPLER_STEPS[self.sampler_name], limit)
        if self.steps > limit:  # the one limit on steps that is the model's own
            raise InputError(gen.ckpt, f"was trained with {limit} noise levels: "
                                       f"sample it with at most that many steps (not {self.steps})")

    def run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        # Held from the start: a second run on the same file is refused at once, not after its model loads.
        with destination.writer_lock(self.out):
            return self._run(emit, requests)

    def _run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        gen = Generator(self.checkpoint, self.device)
        self._choose_sampler(gen)
        if gen.device.type == "cpu":
            use_free_cores()
        seeds = np.arange(self.seed, self.seed + self.n, dtype=np.int64)
        labels = self._labels(gen, seeds)
        conds = self._conditions(gen, seeds)
        masks_out = gen.cfg.mask_mode != "none"
        c, size = gen.cfg.facts.image_channels, gen.cfg.model.image_size
        st = gen.state
        rule = None
        if self.redraw_mismatches and labels is not None and gen.cfg.mask_mode == "joint":
            from engine.evaluation.metrics.phantom_fidelity import count_rule

            rule = count_rule(gen.class_names)
        redrawn = still_wrong = 0
        self._budget = self.n
        emit(Message(f"sampling {self.n} with {self.sampler_name} x {self.steps} steps on {gen.device}"))
        t0 = time.perf_counter()
        done = 0
        stopped = False
        dims = max(gen.cfg.facts.spatial_dims, 2)
        # The run's facts about its data, in the checkpoint under the header's own names, carry into the file.
        header = Header(class_names=gen.class_names, label_names=st.get("label_names"),
                        mask_coding=st.get("mask_coding"), spacing=st.get("spacing"), affine=st.get("affine"),
                        intensity_units=gen.norm.units, normalisation=gen.norm.to_dict(),
                        config=public_config(st["config"]), checkpoint_sha256=gen.sha256)
        with SampleWriter(self.out, self.n, (c,) + (size,) * dims, masks=masks_out, labels=labels is not None,
                          header=header, overwrite=self.overwrite, lock=False) as writer:
            try:
                for lo in range(0, self.n, self.batch):
                    hi = min(lo + self.batch, self.n)
                    requests.check()
                    lab = None if labels is None else labels[lo:hi].tolist()
                    cond = None if conds is None else conds[lo:hi]
                    images, masks = gen.generate(seeds[lo:hi].tolist(), lab, self.sampler_name, self.steps,
                                                 self.guidance, cond, requests=requests)
                    if masks is None and conds is not None:
                        masks = decode_masks(cond)
                    batch_seeds = seeds[lo:hi].copy()
                    if rule is not None and masks is not None and lab is not None:
                        redone = self._redraw(gen, rule, images, masks, batch_seeds, lab, requests)
                        redrawn += redone[0]
                        still_wrong += redone[1]
                    _refuse_non_finite(gen.ckpt, images, lo)
                    writer.append(images, batch_seeds, masks, None if labels is None else labels[lo:hi])
                    done = hi
                    emit(Progress("sample", done, self.n, {"per_sample_s": (time.perf_counter() - t0) / done,
                                                           "file": str(writer.writing)}))
            except Cancelled:
                stopped = True  # the batches written so far are complete samples, and stay
        result = {"out": str(self.out), "n": done, "seconds": time.perf_counter() - t0,
                  "checkpoint": str(gen.ckpt)}
        if rule is not None:
            result.update(redrawn=redrawn, mask_class_disagreements=still_wrong)
            emit(Message(f"{redrawn} of {done} samples were drawn again because their mask contradicted their "
                         f"class; {still_wrong} still do{'es' if still_wrong == 1 else ''} (flagged in the gallery)"))
        if stopped:
            raise Cancelled("sampling stopped", result)
        return result
