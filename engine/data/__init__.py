"""Loading user data: `load_images` picks the reader from what a path holds."""

from __future__ import annotations

import importlib
from pathlib import Path

from engine.data.dataset import ImageSet
from engine.data.readers import (
    IMAGE_SUFFIXES,
    is_nifti,
    read_folder_pairs,
    read_msd,
    read_nifti,
    read_npz,
)
from engine.errors import InputError

__all__ = ["ImageSet", "load_images", "read_folder_pairs", "read_msd", "read_nifti", "read_npz"]

_EXPECTED = ("a MedMNIST .npz, a .nii/.nii.gz file, a MedSynth .h5 file, or a folder holding "
             "dataset.json + imagesTr/ (MSD / nnU-Net), images/ (+ masks/), or image files")


def load_images(path: str | Path, *, split: str = "train", class_names: list[str] | None = None) -> ImageSet:
    """Read any supported 2D input into a validated ImageSet.

    `split` picks the MedMNIST split; `class_names` names numeric classes of a .npz file (when
    the file has none) or of an image folder's labels.csv.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return read_npz(path, split=split, class_names=class_names)
        if is_nifti(path):
            return read_nifti(path)
        if suffix in (".h5", ".hdf5"):
            return _read_store(path)
        raise InputError(path, f"is not a supported input; expected {_EXPECTED}")
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(path, "is an empty folder")
    if (path / "dataset.json").exists() or (path / "imagesTr").is_dir():
        return read_msd(path)
    if (path / "images").is_dir():
        return read_folder_pairs(path, class_names=class_names)
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return read_folder_pairs(path, class_names=class_names)
    raise InputError(path, f"holds no data MedSynth can read; expected {_EXPECTED}")


def _read_store(path: Path) -> ImageSet:
    # engine.store sits on the ground floor and may not exist yet; look it up only when needed.
    try:
        store = importlib.import_module("engine.store")
    except ModuleNotFoundError as exc:
        if exc.name != "engine.store":
            raise
        store = None
    reader = getattr(store, "read_image_set", None)
    if reader is None:
        raise InputError(path, "MedSynth HDF5 input is read by engine.store, which is not available yet")
    return reader(path)
