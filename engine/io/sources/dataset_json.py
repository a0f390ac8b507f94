"""dataset.json of a Medical Segmentation Decathlon or nnU-Net v2 raw folder: the one place it is read."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.io.sources.common import reading

log = logging.getLogger(__name__)


@dataclass
class DatasetJson:
    path: Path
    label_names: dict[int, str]  # {value: name}, whichever dialect the file speaks
    channels: dict[str, str]  # {"0": "CT", ...}: MSD's "modality", nnU-Net's "channel_names"
    modality: str  # channel 0's: "CT", "MR" or "generic"
    nnunet: bool  # nnU-Net v2's dialect (channel_names) rather than MSD's


def read_dataset_json(root: Path) -> DatasetJson:
    """`root`/dataset.json, checked: InputError naming it when it is missing, unreadable or names no labels."""
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(path, "is missing; a Medical Segmentation Decathlon / nnU-Net folder needs it")
    with reading(path, "JSON"):
        meta = json.loads(path.read_text(encoding="utf-8"))
    raw = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "has no 'labels' entry mapping label values to names")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise InputError(path, f"file_ending {ending!r} is not supported; NIfTI (.nii.gz / .nii) expected")
    if all(str(k).isdigit() for k in raw):  # MSD: {"0": "background", "1": "tumour"}
        names = {int(k): str(v) for k, v in raw.items()}
    else:  # nnU-Net v2: {"background": 0, "tumour": 1}; list values are regions, not labels
        names = {int(v): str(k) for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}
    if not names:
        raise InputError(path, "'labels' holds no whole-number label values")
    channels = meta.get("modality") or meta.get("channel_names") or {}
    channels = {str(k): str(v) for k, v in channels.items()} if isinstance(channels, dict) else {}
    modality = channel_modality(channels.get("0", next(iter(channels.values()), "")))
    if len(channels) > 1:
        log.info("%s: %d channels; the 2D engine reads channel 0 only", path, len(channels))
    return DatasetJson(path, names, channels, modality, "channel_names" in meta)


def channel_modality(name: str) -> str:
    """A dataset.json channel name ("CT", "MRI", "T2", "FLAIR", ...) → "CT", "MR" or "generic"."""
    name = name.upper()
    if name == "CT":
        return "CT"
    if name.startswith(("MR", "T1", "T2", "FLAIR", "ADC", "DWI", "PD")):
        return "MR"
    return "generic"
