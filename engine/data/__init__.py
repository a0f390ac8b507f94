"""Loading user data: `load_images` picks the reader from what a path holds."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.data.dataset import ImageSet
from engine.errors import InputError

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.data.readers import read_folder_pairs, read_msd, read_nifti, read_npz
    from engine.data.volumes import VolumeOptions, read_volumes

# The readers pull in nibabel, PIL and scipy (~0.4 s): imported on first use, so that reading a
# MedSynth file (`medsynth info`, `export`, the app's gallery) does not pay for them.
_LAZY = {"read_folder_pairs": "engine.data.readers", "read_msd": "engine.data.readers",
         "read_nifti": "engine.data.readers", "read_npz": "engine.data.readers",
         "VolumeOptions": "engine.data.volumes", "read_volumes": "engine.data.volumes"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["ImageSet", "VolumeOptions", "load_images", "read_folder_pairs", "read_msd", "read_nifti", "read_npz",
           "read_volumes", "volume_options"]

_EXPECTED = ("a MedMNIST .npz, a .nii/.nii.gz file, a MedSynth .h5 file, or a folder holding "
             "dataset.json + imagesTr/ (MSD / nnU-Net), images/ (+ masks/), or image files")


def volume_options(cfg: RunConfig) -> VolumeOptions | None:
    """How a run reads NIfTI / MSD / DICOM inputs: as whole volumes when data.dims is 3, else None
    (slices, the 2D readers' way)."""
    from engine.data.volumes import VolumeOptions

    if cfg.data.dims != 3:
        return None
    spacing = None
    if cfg.data.spacing:
        if len(cfg.data.spacing) != 3:
            raise InputError(None, f"data.spacing {list(cfg.data.spacing)} needs three sizes in mm (x, y, z), "
                                   "or none for automatic")
        x, y, z = (float(s) for s in cfg.data.spacing)
        spacing = (x, y, z)
    return VolumeOptions(size=int(cfg.model.image_size), spacing=spacing, crop=cfg.data.crop,
                         channel=int(cfg.data.channel))


def load_images(path: str | Path, *, split: str = "train", class_names: list[str] | None = None,
                volumes: VolumeOptions | None = None) -> ImageSet:
    """Read any supported input into a validated ImageSet.

    `split` picks the MedMNIST split; `class_names` names numeric classes of a .npz file (when
    the file has none) or of an image folder's labels.csv. With `volumes`, NIfTI files and
    folders, MSD / nnU-Net folders and DICOM series are read as whole size³ volumes
    (`read_volumes`); .npz and .h5 files keep their own form (a 3D .npz gives volumes only then).
    """
    from engine.data.readers import IMAGE_SUFFIXES, is_nifti, read_folder_pairs, read_msd, read_nifti, read_npz
    from engine.data.volumes import read_volumes

    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if volumes is not None and _holds_volumes(path):
        return read_volumes(path, volumes)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return read_npz(path, split=split, class_names=class_names, volumes=volumes is not None)
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
    niftis = [p for p in entries if p.is_file() and is_nifti(p)]
    if niftis:
        return _read_nifti_folder(path, niftis)
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return read_folder_pairs(path, class_names=class_names)
    from engine.data.dicom import is_dicom_folder

    if is_dicom_folder(path) or any(is_dicom_folder(p) for p in entries):
        raise InputError(path, "holds DICOM series, which MedSynth reads as whole volumes: train on it with a 3D "
                               "preset (demo-3d, brain-64, brain-128 or ct-128)")
    raise InputError(path, f"holds no data MedSynth can read; expected {_EXPECTED}")


def _read_nifti_folder(path: Path, files: list[Path]) -> ImageSet:
    """A folder of NIfTI files as the axial slices of every image, each with its mask partner paired as the 3D
    reader pairs them, so that a folder holds the same cases read as slices or as volumes, coded alike."""
    from engine.data.readers import read_nifti_cases
    from engine.data.volumes import _nifti_folder

    return read_nifti_cases([(case.image, case.mask) for case in _nifti_folder(path, sorted(files))], path)


def _holds_volumes(path: Path) -> bool:
    """Whether `path` is read by read_volumes when volumes are asked for: everything but .npz / .h5
    files and picture folders, which keep their own form. Unknown inputs go to read_volumes too,
    whose error then speaks of the 3D inputs it reads."""
    from engine.data.dicom import is_dicom_folder
    from engine.data.readers import IMAGE_SUFFIXES

    if path.is_file():
        return path.suffix.lower() not in (".npz", ".h5", ".hdf5")
    if (path / "dataset.json").exists() or (path / "imagesTr").is_dir() or is_dicom_folder(path):
        return True
    return not (path / "images").is_dir() and not any(
        p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def _read_store(path: Path) -> ImageSet:
    # Looked up here, not at the top: the format module builds on engine.data.dataset, and h5py costs its import.
    from engine.io.medsynth_h5 import read_image_set

    return read_image_set(path)
