"""Generation as a job: a checkpoint in, a MedSynth HDF5 file out, batch by batch.

Sample i uses seed ``seed + i`` for its starting noise, its sampler noise and its
class draw, so ``--seed S --n 1`` regenerates any recorded sample on its own.
Under several processes (accelerate launch, torchrun), and for a resume, the run goes through
engine/inference/sharded.py: the same batches, drawn by this job's `draw`, shared out and merged.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import PretrainedConfig, public_config
from engine.data.prepare import decode_masks
from engine.data.prompts import class_prompt
from engine.errors import InputError
from engine.inference.generator import Generator
from engine.inference.prompted import PromptedGenerator
from engine.io import destination, shards
from engine.io.medsynth_h5 import Header
from engine.io.medsynth_writer import SampleWriter, check_new
from engine.io.prompts_csv import read_prompt_rows
from engine.jobs import Cancelled, Emit, Message, Progress, Requests
from engine.runtime.devices import pick_device
from engine.runtime.ranks import Ranks, launched_processes
from engine.runtime.threads import use_free_cores
from engine.settings import SAMPLER_STEPS, Sampler
from engine.training import checkpoints
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


@dataclass
class Drawing:
    """A run's model and what its batches share, indexed by sample: seed, class, prompt (and its row in the
    network's table), training-mask condition; the mismatch rule when mismatching samples are drawn again."""

    gen: Generator
    seeds: np.ndarray
    labels: np.ndarray | None
    texts: list[str] | None
    rows: np.ndarray | None
    conds: torch.Tensor | None
    rule: Any
    image_shape: tuple[int, ...]
    masks: bool


@dataclass
class Batch:
    """Samples drawn, as the file stores them; how many were drawn again and how many still contradict."""

    images: np.ndarray
    masks: np.ndarray | None
    seeds: np.ndarray
    labels: np.ndarray | None
    prompts: list[str] | None
    redrawn: int
    still_wrong: int


def _refuse_non_finite(ckpt: Path, images: np.ndarray, first: int) -> None:
    """A NaN or infinite pixel is a broken model (damaged weights, a diverged run), never a sample to keep."""
    bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if bad.any():
        which = np.flatnonzero(bad) + first
        raise InputError(ckpt, f"produced {int(bad.sum())} sample(s) with NaN or infinite values (first: sample "
                               f"{int(which[0])}); its weights may be damaged or its training diverged; "
                               "nothing was written")


class SampleJob:
    def __init__(self, checkpoint: str | Path | None, n: int, out: str | Path, *, sampler_name: str | None = None,
                 steps: int | None = None, seed: int = 0, class_index: int | None = None,
                 class_mix: str | None = None,
                 guidance: float = 1.0, batch: int = 32, device: str = "auto", overwrite: bool = False,
                 redraw_mismatches: bool = True, prompts: list[str] | None = None,
                 prompts_file: str | Path | None = None, negative_prompt: str = "",
                 pretrained: PretrainedConfig | None = None, resume: bool = False) -> None:
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
        # A model fine-tuned from text (or a pretrained one, sampled as it is): one prompt for every sample, or one
        # per sample; prompt_classes, one per sample too, says which class a prompt stands for (None: none).
        self.prompts, self.negative_prompt, self.pretrained = prompts, negative_prompt, pretrained
        self.prompts_file = prompts_file
        if prompts_file is not None and prompts is not None:
            raise InputError(None, "give prompts or a prompts file, not both")
        if prompts is not None and len(prompts) not in (1, self.n):
            raise InputError(None, f"{len(prompts)} prompts for {self.n} samples: give one prompt, or one per sample")
        if checkpoint is None and pretrained is None:
            raise InputError(None, "nothing to sample: give a run folder, a checkpoint or a pretrained model")
        # A resume continues what an interrupted run left (engine/inference/sharded.py), on any number of processes.
        self.resume = resume
        if resume and overwrite:
            raise InputError(None, "continue an interrupted run or overwrite it, not both")
        if not resume:
            check_new(self.out, overwrite)
            if not overwrite:
                shards.check_clear(self.out)
        if launched_processes() == 1:  # several: the main process takes the lock first thing, for all of them
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
            # the redraws of a batch share a budget of one draw per sample in it; what is left over is flagged.
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
        if self.resume or launched_processes() > 1:
            from engine.inference.sharded import ShardedRun

            return ShardedRun(self, Ranks(cpu=pick_device(self.device) == "cpu")).run(emit, requests)
        # Held from the start: a second run on the same file is refused at once, not after its model loads.
        with destination.writer_lock(self.out):
            if self.overwrite:
                shards.remove(self.out)  # an interrupted sharded run's samples, which overwriting discards
            return self._run(emit, requests)

    def seeds_fit(self, seeds: np.ndarray, first: int) -> bool:
        """Whether `seeds` are those of samples first, first + 1, ... of this run (each its own or a redraw's)."""
        own = self.seed + first + np.arange(len(seeds), dtype=np.int64)
        offset = np.asarray(seeds, np.int64) - own
        return bool(np.all((offset >= 0) & (offset % REDRAW_SEED_STRIDE == 0)
                           & (offset <= MAX_REDRAWS * REDRAW_SEED_STRIDE)))

    def _generator(self) -> Generator:
        """The model to sample: MedSynth's own, a fine-tuned text-to-image run, or a pretrained model as it is."""
        if self.pretrained is not None:
            return PromptedGenerator.from_pretrained(self.pretrained, self.device)
        state = checkpoints.read_state(resolve_checkpoint(self.checkpoint))
        if state["config"].get("pretrained", {}).get("path"):
            return PromptedGenerator(self.checkpoint, self.device)
        if self.prompts is not None:
            raise InputError(self.checkpoint, "was not trained from text: sample it by class, not with a prompt")
        return Generator(self.checkpoint, self.device)

    def _asked_prompts(self, class_names: list[str]) -> tuple[list[str], list[int | None]]:
        """Each sample's prompt as asked, and the class it was said to stand for (None where none was)."""
        if self.prompts is not None:
            texts = self.prompts * self.n if len(self.prompts) == 1 else list(self.prompts)
            return texts, [None] * len(texts)
        rows = read_prompt_rows(self.prompts_file, class_names)
        texts = [r.prompt for r in rows for _ in range(r.n)]
        if len(texts) != self.n:
            raise InputError(self.prompts_file, f"asks for {len(texts)} samples, not {self.n}")
        return texts, [r.class_index for r in rows for _ in range(r.n)]

    def _prompts(self, gen: PromptedGenerator, labels: np.ndarray | None) -> tuple[list[str], np.ndarray | None]:
        """Each sample's prompt and, where every prompt stands for one of the model's classes, their classes."""
        names = gen.class_names
        template = gen.cfg.pretrained.prompt_template
        if self.prompts is None and self.prompts_file is None:
            if labels is not None:
                return [class_prompt(template, names[int(k)]) for k in labels], labels
            recorded = gen.state.get("prompts") or []
            if len(recorded) == 1:
                return recorded * self.n, None  # trained on one prompt: that is what the model makes
            raise InputError(gen.ckpt, "needs a prompt: say what to generate (for example \"chest x-ray, "
                                       "pneumonia\")")
        if self.class_index is not None or self.class_mix:
            raise InputError(None, "give prompts or classes to sample, not both")
        texts, classes = self._asked_prompts(names)
        if any(c is None for c in classes):
            # A prompt that is exactly a class's templated prompt stands for that class.
            known = {class_prompt(template, name): i for i, name in enumerate(names)} if "{class}" in template else {}
            classes = [known.get(t) for t in texts]
        if names and all(c is not None for c in classes):
            return texts, np.asarray(classes, np.int64)
        return texts, None

    @staticmethod
    def header(gen: Generator) -> Header:
        """The run's facts about its data, in the checkpoint under the header's own names, carried into the file."""
        st = gen.state
        return Header(class_names=gen.class_names, label_names=st.get("label_names"),
                      mask_coding=st.get("mask_coding"), spacing=st.get("spacing"), affine=st.get("affine"),
                      intensity_units=gen.norm.units, normalisation=gen.norm.to_dict(),
                      config=public_config(st["config"]), checkpoint_sha256=gen.sha256)

    def _conditioning(self, gen: Generator, seeds: np.ndarray) \
            -> tuple[np.ndarray | None, list[str] | None, np.ndarray | None]:
        """Each sample's class (or None), prompt (or None for a model not trained from text) and the row of its
        prompt in the network's table (what it is conditioned on)."""
        if not isinstance(gen, PromptedGenerator):
            return self._labels(gen, seeds), None, None
        labels = None if self.prompts or self.prompts_file else self._labels(gen, seeds)
        texts, labels = self._prompts(gen, labels)
        return labels, texts, np.asarray(gen.use_prompts(texts, self.negative_prompt), np.int64)

    def prepare(self) -> Drawing:
        """The model and what every batch of this run shares: each sample's seed, class, prompt and condition."""
        gen = self._generator()
        self._choose_sampler(gen)
        if gen.device.type == "cpu":
            use_free_cores()
        seeds = np.arange(self.seed, self.seed + self.n, dtype=np.int64)
        labels, texts, rows = self._conditioning(gen, seeds)
        rule = None
        if self.redraw_mismatches and labels is not None and gen.cfg.mask_mode == "joint":
            from engine.evaluation.metrics.phantom_fidelity import count_rule

            rule = count_rule(gen.class_names)
        dims = max(gen.cfg.facts.spatial_dims, 2)
        shape = (gen.cfg.facts.image_channels,) + (gen.cfg.model.image_size,) * dims
        return Drawing(gen, seeds, labels, texts, rows, self._conditions(gen, seeds), rule, shape,
                       gen.cfg.mask_mode != "none")

    def draw(self, d: Drawing, lo: int, hi: int, requests: Requests) -> Batch:
        """Samples lo..hi-1, each from its own seed: the same whichever process draws them, in whatever order."""
        lab = None if d.labels is None else d.labels[lo:hi].tolist()
        if d.rows is not None:
            lab = d.rows[lo:hi].tolist()  # the network's "labels" are the prompts' rows
        cond = None if d.conds is None else d.conds[lo:hi]
        images, masks = d.gen.generate(d.seeds[lo:hi].tolist(), lab, self.sampler_name, self.steps,
                                       self.guidance, cond, requests=requests)
        if masks is None and d.conds is not None:
            masks = decode_masks(cond)
        batch_seeds = d.seeds[lo:hi].copy()
        redone = (0, 0)
        if d.rule is not None and masks is not None and lab is not None:
            # The batch's own budget: a sample must not depend on which batches a process drew before it.
            self._budget = hi - lo
            redone = self._redraw(d.gen, d.rule, images, masks, batch_seeds, lab, requests)
        _refuse_non_finite(d.gen.ckpt, images, lo)
        return Batch(images, masks, batch_seeds, None if d.labels is None else d.labels[lo:hi],
                     None if d.texts is None else d.texts[lo:hi], *redone)

    def identity(self, d: Drawing) -> dict[str, Any]:
        """What makes sample i the one this run draws: a resume continues only files drawn with the same."""
        texts = "\n".join(d.texts) if d.texts is not None else ""
        return {"n": self.n, "seed": self.seed, "checkpoint_sha256": d.gen.sha256, "sampler": self.sampler_name,
                "steps": self.steps, "guidance": self.guidance, "class": self.class_index,
                "class_mix": self.class_mix or "", "redraw": bool(d.rule is not None),
                "prompts_sha256": hashlib.sha256(texts.encode()).hexdigest() if d.texts is not None else "",
                "negative_prompt": self.negative_prompt}

    def start_message(self, d: Drawing, processes: int = 1) -> Message:
        on = f"{processes} processes" if processes > 1 else str(d.gen.device)
        return Message(f"sampling {self.n} with {self.sampler_name} x {self.steps} steps on {on}")

    def finish(self, d: Drawing, result: dict[str, Any], redrawn: int, still_wrong: int,
               emit: Emit) -> dict[str, Any]:
        if d.rule is not None:
            done = result["n"]
            result.update(redrawn=redrawn, mask_class_disagreements=still_wrong)
            emit(Message(f"{redrawn} of {done} samples were drawn again because their mask contradicted their "
                         f"class; {still_wrong} still do{'es' if still_wrong == 1 else ''} (flagged in the gallery)"))
        return result

    def _run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        d = self.prepare()
        redrawn = still_wrong = 0
        emit(self.start_message(d))
        t0 = time.perf_counter()
        done = 0
        stopped = False
        with SampleWriter(self.out, self.n, d.image_shape, masks=d.masks, labels=d.labels is not None,
                          prompts=d.texts is not None, header=self.header(d.gen), overwrite=self.overwrite,
                          lock=False, attrs=shards.shard_attrs(self.identity(d), [(0, self.n)])) as writer:
            try:
                for lo in range(0, self.n, self.batch):
                    hi = min(lo + self.batch, self.n)
                    requests.check()
                    b = self.draw(d, lo, hi, requests)
                    redrawn += b.redrawn
                    still_wrong += b.still_wrong
                    writer.append(b.images, b.seeds, b.masks, b.labels, prompts=b.prompts)
                    done = hi
                    emit(Progress("sample", done, self.n, {"per_sample_s": (time.perf_counter() - t0) / done,
                                                           "file": str(writer.writing)}))
            except Cancelled:
                stopped = True  # the batches written so far are complete samples, and stay
            # While unfinished the file says which job it belongs to, so that a resume of what a crash or a stop
            # leaves checks every setting; the file as finished is a single process's like any other.
            if not stopped:
                writer.drop_attrs(shards.SHARD_ATTR)
        result = self.finish(d, {"out": str(self.out), "n": done, "seconds": time.perf_counter() - t0,
                                 "checkpoint": str(d.gen.ckpt)}, redrawn, still_wrong, emit)
        if stopped:
            raise Cancelled("sampling stopped", result)
        return result
