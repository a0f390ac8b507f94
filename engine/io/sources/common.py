"""What every source reader shares: turning library faults into one InputError, which files are data, what a
NIfTI name is, the HU guess, and the two things a source hands out (a 3D case, a view for the viewer).

Nothing here imports nibabel, PIL or scipy: the registry asks what a path is without paying for them.
"""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# A CT volume's darkest 1 % is air (about -1000 HU); no MR, PET or picture goes this far below zero.
CT_BELOW_HU = -500.0


def _read_errors() -> tuple[type[BaseException], ...]:
    # Everything a corrupt or truncated file can make numpy, zipfile, gzip, PIL or nibabel throw; PIL's and
    # nibabel's own types are looked up only when a file is read, so that asking what a path is stays cheap.
    from nibabel.filebasedimages import ImageFileError
    from PIL import Image

    return (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, ImageFileError, SyntaxError,
            Image.DecompressionBombError, KeyError, IndexError, TypeError)


@contextlib.contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Any fault reading `path` as `what` becomes one InputError naming the file."""
    try:
        yield
    except InputError:
        raise
    except _read_errors() as exc:
        raise InputError(path, f"cannot be read as {what} ({type(exc).__name__}: {exc})") from exc


def visible(folder: Path) -> list[Path]:
    """A folder's entries, sorted, without dot files."""
    # MSD tarballs ship macOS "._case.nii.gz" resource forks; dot files are never data.
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """`case.nii.gz` → "case"."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def looks_like_ct(values: np.ndarray) -> bool:
    """The HU guess, for volumes that do not say their modality: CT when the darkest 1 % is air."""
    return float(np.percentile(values, 1)) < CT_BELOW_HU


@dataclass
class Case:
    """One 3D case of a source: the file (or DICOM series folder) errors name, and its label map."""

    image: Path
    mask: Path | None = None
    channel: int | None = None  # index into a 4D file's last axis (MSD multi-channel); None: 4D is an error
    modality: str = "auto"  # "CT" / "MR" when dataset.json or DICOM says so
    dicom: bool = False


@dataclass
class View:
    """One image or volume as the viewer shows it, with its geometry."""

    image: np.ndarray  # (H, W), (3, H, W) or a volume (X, Y, Z)
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    units: str = ""
    title: str = ""
    note: str = ""  # something the user should know about what is shown (a partner that did not fit)
