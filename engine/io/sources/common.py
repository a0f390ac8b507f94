"""What every source reader shares: turning library faults into one InputError, which files are data, what a
NIfTI name is, the HU guess, and the two things a source hands out (a 3D case, a view for the viewer).

Nothing here imports nibabel, PIL or scipy: the registry asks what a path is without paying for them.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.dataset import check_labels
from engine.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# A CT volume's darkest 1 % is air (about -1000 HU); no MR, PET or picture goes this far below zero.
CT_BELOW_HU = -500.0
# Deflate's largest ratio (a run of one byte value): a gzip file or zip member never unpacks to more than this many
# times its compressed size, so a header declaring more is lying, whatever the data.
DEFLATE_MAX_RATIO = 1032


def _read_errors() -> tuple[type[BaseException], ...]:
    # Everything a corrupt or truncated file can make numpy, zipfile, gzip, csv, PIL or nibabel throw; PIL's and
    # nibabel's own types are looked up only when a file is read, so that asking what a path is stays cheap.
    import csv

    from nibabel.filebasedimages import ImageFileError
    from PIL import Image

    return (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, ImageFileError, SyntaxError,
            Image.DecompressionBombError, KeyError, IndexError, TypeError, csv.Error)


@contextlib.contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Any fault reading `path` as `what` becomes one InputError naming the file."""
    try:
        yield
    except InputError:
        raise
    except MemoryError:
        raise InputError(path, f"needs more memory than is free to be read as {what}") from None
    except _read_errors() as exc:
        # One line: nibabel's and pydicom's messages carry line breaks.
        said = " ".join(str(exc).split())
        raise InputError(path, f"cannot be read as {what} ({type(exc).__name__}: {said})") from exc


def size_text(n: float) -> str:
    """Bytes in the unit a user reads them in: "12 KiB", "1.9 GiB"."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def machine_memory() -> int:
    """This machine's memory in bytes: no read that needs more can succeed, however much is free."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_declared(path: Path, declared: str, data_bytes: int, holds: int, memory_bytes: int) -> None:
    """Refuse, before reading, what a header declares when its file cannot hold it (`holds` bytes at most) or this
    machine cannot hold it in memory: a 12 KB file must not ask for gigabytes."""
    if data_bytes > holds:
        raise InputError(path, f"declares {declared} ({size_text(data_bytes)}) but the file can hold at most "
                               f"{size_text(max(holds, 0))} of it: it is truncated or its header is wrong")
    if memory_bytes > machine_memory():
        raise InputError(path, f"declares {declared}; reading it needs about {size_text(memory_bytes)} of memory, "
                               f"more than this machine has ({size_text(machine_memory())})")


def numbered_class_names(path: Path, what: str, labels: np.ndarray, names: list[str] | None) -> list[str]:
    """The class names of whole-number class indices: `names` when given (which must cover every index), else
    "0", "1", ... up to the highest index, checked to be a class index before a name is made for each."""
    check_labels(path, labels, names, what)
    return list(names) if names else [str(i) for i in range(int(labels.max()) + 1)]


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
