"""Which torch device a job runs on: one rule for training, sampling and evaluation."""

from __future__ import annotations

import torch

from engine.errors import InputError
from engine.settings import Device


def pick_device(requested: str = "auto") -> str:
    """"cpu" or "cuda" for a requested device: "auto" takes the GPU when torch finds one."""
    if requested not in Device.values():
        raise InputError(None, f"device {requested!r}; expected one of {', '.join(Device.values())}")
    if requested == Device.CUDA and not torch.cuda.is_available():
        raise InputError(None, "a CUDA GPU was asked for but torch finds none on this machine")
    if requested == Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(requested)
