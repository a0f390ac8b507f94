"""Every setting's allowed values, declared once: config validation, the CLI's `choices=` and `type=`, and the
app's combo boxes and spin boxes all read them here, so a value or range changed here changes everywhere.

The settings that take one of a fixed set of values are Choices: each value is what configs and the command line
say; its label is what the app shows. The numbers, switches and lists are Specs: their range here, their type the
config's field (engine.config), or for a command's own options (sample's --steps, evaluate's --threshold) the Spec's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Choice(StrEnum):
    """One allowed value of a setting, with the words the app shows for it."""

    label: str

    def __new__(cls, value: str, label: str = "") -> Choice:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label or value
        return member

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]

    @classmethod
    def items(cls) -> list[tuple[str, str]]:
        """(label, value) pairs in the order the app lists them."""
        return [(m.label, m.value) for m in cls]


class LossKind(Choice):
    L2 = "l2", "Squared error (L2)"
    L1 = "l1", "Absolute error (L1)"
    HUBER = "huber", "Huber (robust to outliers)"


class LrSchedule(Choice):
    CONSTANT = "constant", "Constant"
    COSINE = "cosine", "Cosine decay"


class Objective(Choice):
    """What the network learns to predict: the noise or v of a DDPM schedule, or the velocity of a
    rectified flow (noise - image along a straight path), which samples well in 5-20 steps."""

    EPSILON = "epsilon", "Noise (epsilon)"
    V = "v_prediction", "Velocity (v)"
    FLOW = "flow", "Flow matching (few-step sampling)"


class Precision(Choice):
    AUTO = "auto", "Automatic"
    NO = "no", "Full (32-bit)"
    BF16 = "bf16", "bfloat16"
    FP16 = "fp16", "float16"


class Device(Choice):
    AUTO = "auto", "Automatic (GPU when there is one)"
    CPU = "cpu", "CPU"
    CUDA = "cuda", "NVIDIA GPU (CUDA)"


class MaskMode(Choice):
    JOINT = "joint", "Image and mask together"
    CONDITION = "condition", "Image from a given mask"
    NONE = "none", "Images only"


class Crop(Choice):
    FOREGROUND = "foreground", "Around the foreground"
    CENTER = "center", "Centre of the volume"


class Modality(Choice):
    AUTO = "auto", "As the data says"
    CT = "CT", "CT"
    MR = "MR", "MR"
    GENERIC = "generic", "Other"


class Sampler(Choice):
    # Fastest first within each objective's samplers: the app offers the first that fits.
    DPM = "dpm", "DPM-Solver++ (fast)"
    DDIM = "ddim", "DDIM (deterministic)"
    DDPM = "ddpm", "DDPM (original, slow)"
    EULER = "euler", "Euler (flow, fast)"
    HEUN = "heun", "Heun (flow, 2 network calls a step)"


# Which samplers fit a model trained with each objective, its default first: the DDPM-family samplers solve
# the noise schedule an epsilon / v model learned, the flow samplers the straight path a flow model learned.
SAMPLERS: dict[str, tuple[Sampler, ...]] = {
    Objective.EPSILON: (Sampler.DPM, Sampler.DDIM, Sampler.DDPM),
    Objective.V: (Sampler.DPM, Sampler.DDIM, Sampler.DDPM),
    Objective.FLOW: (Sampler.EULER, Sampler.HEUN),
}


# The steps each sampler takes unless told: what it needs for its fidelity (DDPM: its whole chain).
SAMPLER_STEPS: dict[str, int] = {Sampler.DPM: 25, Sampler.DDIM: 50, Sampler.DDPM: 1000, Sampler.EULER: 10,
                                 Sampler.HEUN: 10}


def samplers_for(objective: str) -> tuple[Sampler, ...]:
    """The samplers that fit a model trained with `objective`, its default first."""
    return SAMPLERS[Objective(objective)]


def sampler_fault(sampler: str, objective: str) -> str | None:
    """Why `sampler` cannot sample a model trained with `objective`, in words; None when it fits."""
    fits = samplers_for(objective)
    if sampler in fits:
        return None
    return f"was trained with the {Objective(objective).value} objective: sample it with " \
           f"{' or '.join(fits)} (not {sampler})"


class BetaSchedule(Choice):
    COSINE = "squaredcos_cap_v2", "Cosine"
    LINEAR = "linear", "Linear"
    SCALED_LINEAR = "scaled_linear", "Scaled linear"


class ExportFormat(Choice):
    PNG = "png", "PNG images and masks"
    NIFTI = "nifti", "NIfTI volumes"
    NNUNET = "nnunet", "nnU-Net dataset"


class PresetDevice(Choice):
    """What a preset is sized for (its top-level `device`)."""

    CPU = "cpu", "Sized for a laptop CPU"
    GPU = "gpu", "Sized for a GPU"


# Spatial dimensions of the data: 0 lets the reader decide.
DIMS = (0, 2, 3)

# Settings renamed since configs were first saved: (section, old key) → the new key. Presets, TOML files and
# run folders written before the rename are read with the old key taken as the new.
RENAMED: dict[tuple[str, str], str] = {
    ("train", "prediction"): "objective",
}

# (section, key) of a config → the values it may take.
CHOICES: dict[tuple[str, str], Any] = {
    ("train", "loss"): LossKind,
    ("train", "lr_schedule"): LrSchedule,
    ("train", "objective"): Objective,
    ("train", "mixed_precision"): Precision,
    ("train", "device"): Device,
    ("train", "beta_schedule"): BetaSchedule,
    ("data", "mask_mode"): MaskMode,
    ("data", "modality"): Modality,
    ("data", "crop"): Crop,
    ("data", "dims"): DIMS,
}


def allowed(section: str, key: str) -> list[Any] | None:
    """The values a setting may take, or None when it is free."""
    kind = CHOICES.get((section, key))
    if kind is None:
        return None
    return kind.values() if isinstance(kind, type) else list(kind)


@dataclass(frozen=True)
class Spec:
    """A setting's range: numbers from `low` to `high` (either end left out when `above` / `below`), for a list
    each of its values, and `counts` the lengths it may have. `kind` is the type of the value (or of a list's
    values); None for a config setting, whose type engine.config takes from its field."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False
    counts: range | tuple[int, ...] | None = None
    kind: type | None = None
    many: bool = False  # a list of `kind`

    def describe(self) -> str:
        """What a valid value is, in words: "a whole number ≥ 1", "a list of 1 to 8 numbers > 0"."""
        one = {int: "whole number", float: "number", bool: "true or false", str: "text"}.get(self.kind, "value")
        bounds = _bounds(self)
        if not self.many:
            return one if self.kind in (bool, str) else f"a {one}{bounds}"
        if self.counts is None:
            n = ""
        elif isinstance(self.counts, range) and len(self.counts) > 1:
            n = f"{self.counts.start} to {self.counts.stop - 1} "
        else:
            n = " or ".join(map(str, self.counts)) + " "
        plural = {bool: "true / false values", str: "texts"}.get(self.kind, f"{one}s")
        return f"a list of {n}{plural}{bounds}"

    def check(self, value: Any) -> Any:
        """`value` as the setting holds it (1e4 → 10000, 1 → 1.0); ValueError saying what it must be when it
        has the wrong type or lies outside the range."""
        if not self.many:
            ok, out = self._one(value)
        elif isinstance(value, (list, tuple)):
            items = [self._one(v) for v in value]
            ok = all(good for good, _ in items) and (self.counts is None or len(items) in self.counts)
            out = [v for _, v in items]
        else:
            ok, out = False, value
        if not ok:
            raise ValueError(f"must be {self.describe()} (got {shown(value)})")
        return out

    def parse(self, text: str) -> Any:
        """A value typed on the command line, checked."""
        value: Any = text
        if self.kind in (int, float):
            try:
                value = float(text) if self.kind is float or not text.strip().lstrip("+-").isdigit() else int(text)
            except ValueError:
                pass
        try:
            return self.check(value)
        except ValueError:
            raise ValueError(f"must be {self.describe()} (got {text})") from None

    def _one(self, value: Any) -> tuple[bool, Any]:
        kind = self.kind
        if kind is bool or kind is str:
            return isinstance(value, kind), value
        if kind not in (int, float):
            return True, value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        if isinstance(value, float) and not math.isfinite(value):
            return False, value
        if kind is int:
            if value != int(value):
                return False, value
            value = int(value)
        else:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float
                return False, value
        low, high = self.low, self.high
        inside = (low is None or (value > low if self.above else value >= low)) and \
                 (high is None or (value < high if self.below else value <= high))
        return inside, value


def _bounds(spec: Spec) -> str:
    low, high = (None if b is None else _number(b, spec.kind) for b in (spec.low, spec.high))
    if spec.kind not in (int, float) or (low is None and high is None):
        return ""
    if high is None:
        return f" {'>' if spec.above else '≥'} {low}"
    if low is None:
        return f" {'<' if spec.below else '≤'} {high}"
    if not spec.above and not spec.below:
        return f" from {low} to {high}"
    return f" {'>' if spec.above else '≥'} {low} and {'<' if spec.below else '≤'} {high}"


def _number(x: float, kind: type | None) -> str:
    return str(int(x)) if kind is int or x == int(x) else f"{x:g}"


def shown(value: Any, most: int = 60) -> str:
    """A value as the user wrote it in TOML / JSON (true, 'abc', [1, 2]), cut short when long."""
    text = _written(value)
    return text if len(text) <= most else text[:most - 1] + "…"


def _written(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_written(v) for v in value) + "]"
    return str(value)


# A probability or a fraction of something.
FRACTION = Spec(0, 1)
# Seeds: what every generator here takes and the app's spin boxes (32-bit) hold.
SEED = Spec(0, 2**31 - 1)
# The most levels a network may have: the image edge must be a multiple of 2^(levels - 1).
LEVELS = range(1, 9)

# (section, key) of a config → its range. The settings not here are text, switches or Choices.
RANGES: dict[tuple[str, str], Spec] = {
    ("model", "image_size"): Spec(8, 2048),
    ("model", "block_out_channels"): Spec(1, counts=LEVELS),
    ("model", "layers_per_block"): Spec(1),
    ("model", "attention_levels"): Spec(counts=range(0, LEVELS.stop)),
    ("model", "attention_head_dim"): Spec(1),
    ("model", "dropout"): Spec(0, 1, below=True),
    ("train", "steps"): Spec(1),
    ("train", "batch"): Spec(1),
    ("train", "cpu_batch"): Spec(0),  # 0: `batch` on every device
    ("train", "lr"): Spec(0, 1, above=True),
    ("train", "warmup_steps"): Spec(0),
    ("train", "weight_decay"): Spec(0),
    ("train", "huber_delta"): Spec(0, above=True),
    ("train", "num_train_timesteps"): Spec(2),
    ("train", "ema_decay"): Spec(0, 1, below=True),
    ("train", "beta_start"): Spec(0, 1, above=True, below=True),
    ("train", "beta_end"): Spec(0, 1, above=True, below=True),
    ("train", "cfg_dropout"): FRACTION,
    ("train", "seed"): SEED,
    ("train", "checkpoint_every"): Spec(1),
    ("train", "log_every"): Spec(1),
    ("train", "preview_every"): Spec(0),  # 0: no previews
    ("train", "memory_limit_gib"): Spec(0),  # 0: the device's own capacity
    ("data", "spacing"): Spec(0, above=True, counts=(0, 3)),  # none: the finest at which every case fits
    ("data", "channel"): Spec(0),
    ("autoencoder", "channels"): Spec(1, counts=LEVELS),
    ("autoencoder", "latent_channels"): Spec(1),
    ("autoencoder", "layers_per_block"): Spec(1),
    ("autoencoder", "steps"): Spec(1),
    ("autoencoder", "batch"): Spec(1),
    ("autoencoder", "lr"): Spec(0, 1, above=True),
    ("autoencoder", "kl_weight"): Spec(0),
    ("autoencoder", "checkpoint_every"): Spec(1),
    # Ranks beyond 1024 train more weights than the projections they adapt.
    ("pretrained", "lora_rank"): Spec(0, 1024),
    ("facts", "spatial_dims"): Spec(0, 3),
    ("facts", "in_channels"): Spec(0),
    ("facts", "image_channels"): Spec(0),
    ("facts", "mask_labels"): Spec(0),
    ("facts", "num_classes"): Spec(0),
}

# (command, option) → its type and range, for the options of a command that are not a run's config.
OPTIONS: dict[tuple[str, str], Spec] = {
    ("demo", "steps"): Spec(1, kind=int),
    ("demo", "n"): Spec(1, kind=int),
    ("sample", "n"): Spec(1, kind=int),
    ("sample", "steps"): Spec(1, kind=int),
    ("sample", "seed"): Spec(SEED.low, SEED.high, kind=int),
    ("sample", "class"): Spec(0, kind=int),
    # 0: the unconditional model alone; 1: no guidance.
    ("sample", "guidance"): Spec(0, kind=float),
    ("sample", "batch"): Spec(1, kind=int),
    ("evaluate", "max_samples"): Spec(1, kind=int),
    # A correlation: above it a sample counts as a copy of a training image.
    ("evaluate", "threshold"): Spec(0, 1, kind=float),
    ("evaluate", "seed"): Spec(SEED.low, SEED.high, kind=int),
    # An untrained downstream network measures nothing (every ratio of two untrained networks reads 1).
    ("evaluate", "utility_steps"): Spec(1, kind=int),
    ("reader-study", "n_real"): Spec(1, kind=int),
    ("reader-study", "n_synth"): Spec(1, kind=int),
    ("reader-study", "seed"): Spec(SEED.low, SEED.high, kind=int),
    ("export", "max_corr"): Spec(0, 1, kind=float),
    # Processes of a run on this machine (--num-processes): one per GPU, or several on the CPU.
    ("launch", "num_processes"): Spec(1, kind=int),
}


# A CLI flag or Train panel field → the (section, key) of the config it sets.
OVERRIDES: dict[str, tuple[str, str]] = {
    "data": ("data", "path"),
    "mask_mode": ("data", "mask_mode"),
    "class_conditional": ("data", "class_conditional"),
    "spacing": ("data", "spacing"),
    "record_full_path": ("data", "record_full_path"),
    "size": ("model", "image_size"),
    "steps": ("train", "steps"),
    "batch": ("train", "batch"),
    "lr": ("train", "lr"),
    "loss": ("train", "loss"),
    "objective": ("train", "objective"),
    "seed": ("train", "seed"),
    "device": ("train", "device"),
    "gradient_checkpointing": ("train", "gradient_checkpointing"),
    "memory_limit": ("train", "memory_limit_gib"),
    "autoencoder_steps": ("autoencoder", "steps"),
    "from_pretrained": ("pretrained", "path"),
    "pretrained_config": ("pretrained", "config_folder"),
    "lora": ("pretrained", "lora_rank"),
    "train_text_encoder": ("pretrained", "train_text_encoder"),
    "prompt_template": ("pretrained", "prompt_template"),
    "prompt": ("pretrained", "prompt"),
    "trust_pickle": ("pretrained", "trust_pickle"),
}


def overrides(**fields: Any) -> dict[str, dict[str, Any]]:
    """What the command line or the Train panel sets, as {section: {key: value}} for config.resolve; a field
    that is None keeps the preset's value. The CLI and the app both build their overrides here."""
    out: dict[str, dict[str, Any]] = {section: {} for section, _ in OVERRIDES.values()}
    for name, value in fields.items():
        if name not in OVERRIDES:
            raise TypeError(f"no setting is overridden by {name!r}")
        if value is None:
            continue
        section, key = OVERRIDES[name]
        if name in ("data", "from_pretrained", "pretrained_config"):
            value = str(value)
        elif name == "spacing":
            value = [float(v) for v in value]
        out[section][key] = value.value if isinstance(value, Choice) else value
    return out
