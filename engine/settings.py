"""The settings that take one of a fixed set of values, declared once: config validation, the CLI's
`choices=` and the app's combo boxes all read them here, so a value added here shows up everywhere.

Each value is what configs and the command line say; its label is what the app shows.
"""

from __future__ import annotations

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


class Prediction(Choice):
    EPSILON = "epsilon", "Noise (epsilon)"
    V = "v_prediction", "Velocity (v)"


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
    # Fastest first: the app offers the first one.
    DPM = "dpm", "DPM-Solver++ (fast)"
    DDIM = "ddim", "DDIM (deterministic)"
    DDPM = "ddpm", "DDPM (original, slow)"


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

# (section, key) of a config → the values it may take.
CHOICES: dict[tuple[str, str], Any] = {
    ("train", "loss"): LossKind,
    ("train", "lr_schedule"): LrSchedule,
    ("train", "prediction"): Prediction,
    ("train", "mixed_precision"): Precision,
    ("train", "device"): Device,
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
    "prediction": ("train", "prediction"),
    "seed": ("train", "seed"),
    "device": ("train", "device"),
    "gradient_checkpointing": ("train", "gradient_checkpointing"),
    "memory_limit": ("train", "memory_limit_gib"),
    "autoencoder_steps": ("autoencoder", "steps"),
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
        if name == "data":
            value = str(value)
        elif name == "spacing":
            value = [float(v) for v in value]
        out[section][key] = value.value if isinstance(value, Choice) else value
    return out
