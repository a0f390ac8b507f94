"""DICOM series → a volume in real units with its affine; no patient tag is ever read out.

Slices are sorted by their position along the slice normal (not by file name or
InstanceNumber, which scanners do not keep consistent), the voxel-to-world matrix
comes from ImageOrientationPatient / ImagePositionPatient / PixelSpacing, and is
returned in RAS (nibabel's convention) rather than DICOM's LPS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    array: np.ndarray  # float32 (X, Y, Z): columns, rows, slices, like nibabel's arrays
    affine: np.ndarray  # 4x4 voxel → RAS mm
    spacing: tuple[float, float, float]
    modality: str  # "CT", "MR" or "generic"
    units: str  # "HU" for CT
    source: str


def _read(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=False)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise InputError(path, f"is not a readable DICOM file ({' '.join(str(exc).split())})") from None
    except Exception as exc:  # a hostile file makes pydicom's parser raise many other types
        raise InputError(path, f"is not a readable DICOM file ({type(exc).__name__}: {' '.join(str(exc).split())})") \
            from None


def looks_dicom(path: Path) -> bool:
    """A file named .dcm, or one with DICOM's "DICM" marker after its 128-byte preamble."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    with open(path, "rb") as fh:
        return fh.read(132)[128:132] == b"DICM"


def is_dicom_folder(folder: Path) -> bool:
    return folder.is_dir() and any(looks_dicom(p) for p in sorted(folder.iterdir())[:20])


def read_dicom_series(folder: str | Path) -> Volume:
    root = Path(folder)
    slices = _read_slices(root)
    orient = np.array(slices[0][1].ImageOrientationPatient, float)
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    slices, positions = _sorted_in_space(slices, orient, normal)
    array = _stack(root, slices)
    dr, dc = (float(v) for v in slices[0][1].PixelSpacing)  # row spacing, column spacing
    dz, slice_dir = _slice_step(root, slices[0][1], positions, normal)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = slice_dir
    lps[:3, 3] = positions[0]
    modality = str(getattr(slices[0][1], "Modality", "")).upper()
    kind = "CT" if modality == "CT" else ("MR" if modality == "MR" else "generic")
    return Volume(array=np.ascontiguousarray(array), affine=LPS_TO_RAS @ lps, spacing=(dc, dr, dz),
                  modality=kind, units="HU" if kind == "CT" else "", source=str(root))


def _read_slices(root: Path) -> list[tuple[Path, Any]]:
    """Every file of the folder read as a slice of one series, each with what places it in space."""
    if not root.is_dir():
        raise InputError(root, "is not a folder of DICOM slices")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(root, "is an empty folder")
    slices = [(p, _read(p)) for p in files]
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise InputError(root, f"mixes {len(series)} DICOM series; put each series in its own folder")
    for p, ds in slices:
        if "PixelData" not in ds:
            raise InputError(p, "has no pixel data (PixelData): it is not an image slice")
        for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            if tag not in ds:
                raise InputError(p, f"has no {tag}; cannot place the slice in space")
        _check_geometry(p, ds)
    return slices


def _numbers(p: Path, ds: Any, tag: str, count: int) -> np.ndarray:
    try:
        values = np.array([float(v) for v in ds[tag].value], float)
    except (TypeError, ValueError) as exc:
        raise InputError(p, f"has {tag} {ds[tag].value!r}, not numbers ({exc})") from None
    if values.shape != (count,) or not np.isfinite(values).all():
        raise InputError(p, f"has {tag} {values.tolist()}; {count} finite numbers expected")
    return values


def _check_geometry(p: Path, ds: Any) -> None:
    """A slice's placement tags as numbers that place it: two perpendicular unit directions, a position, two
    positive pixel sizes."""
    orient = _numbers(p, ds, "ImageOrientationPatient", 6)
    row, col = orient[:3], orient[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(row @ col) > 0.01:
        raise InputError(p, f"has ImageOrientationPatient {orient.tolist()}, not two perpendicular unit directions; "
                            "cannot place the slice in space")
    _numbers(p, ds, "ImagePositionPatient", 3)
    if not np.all(_numbers(p, ds, "PixelSpacing", 2) > 0):
        raise InputError(p, f"has PixelSpacing {list(ds.PixelSpacing)}; pixel sizes must be positive")


def _sorted_in_space(slices: list[tuple[Path, Any]], orient: np.ndarray, normal: np.ndarray,
                     ) -> tuple[list[tuple[Path, Any]], list[np.ndarray]]:
    """The slices and their positions in order along the slice normal; all must share one orientation."""
    for p, ds in slices[1:]:
        if not np.allclose(np.array(ds.ImageOrientationPatient, float), orient, atol=1e-4):
            raise InputError(p, "has a different slice orientation from the rest of the series")
    positions = [np.array(ds.ImagePositionPatient, float) for _, ds in slices]
    order = np.argsort([float(pos @ normal) for pos in positions])
    return [slices[i] for i in order], [positions[i] for i in order]


def _stack(root: Path, slices: list[tuple[Path, Any]]) -> np.ndarray:
    """The slices' pixels in real units (RescaleSlope / Intercept), as one (X, Y, Z) float32 array."""
    shape = _pixels(*slices[0]).shape
    planes = []
    for p, ds in slices:
        pixels = _pixels(p, ds)
        if pixels.shape != shape:
            raise InputError(p, f"slice of shape {pixels.shape} differs from {shape} in the rest of the series")
        slope = _rescale(p, ds, "RescaleSlope", 1.0)
        if slope == 0:
            raise InputError(p, "has RescaleSlope 0: every pixel would read as the intercept")
        planes.append(pixels.astype(np.float32) * slope + _rescale(p, ds, "RescaleIntercept", 0.0))
    # pixel_array is (rows, columns); nibabel-style arrays index (column i, row j, slice k).
    array = np.stack(planes, axis=-1).transpose(1, 0, 2)
    if not np.isfinite(array).all():
        raise InputError(root, "holds non-finite voxel values")
    return array


def _pixels(p: Path, ds: Any) -> np.ndarray:
    """A slice's stored pixels as one 2D plane; pydicom's faults (truncated or undecodable pixel data, a missing
    size tag, several frames) named with the file."""
    try:
        pixels = ds.pixel_array
    except MemoryError:
        raise InputError(p, "needs more memory than is free to decode its pixel data") from None
    except Exception as exc:  # pydicom and its pixel handlers raise many types for bad pixel data
        raise InputError(p, f"pixel data cannot be decoded ({type(exc).__name__}: {' '.join(str(exc).split())})") \
            from None
    if pixels.ndim != 2:
        raise InputError(p, f"holds pixels of shape {pixels.shape}; one grey 2D plane per file is expected")
    return pixels


def _rescale(p: Path, ds: Any, tag: str, default: float) -> float:
    """RescaleSlope / RescaleIntercept (absent: `default`)."""
    if tag not in ds or ds[tag].value in (None, ""):
        return default
    try:
        value = float(ds[tag].value)
    except (TypeError, ValueError):
        raise InputError(p, f"has {tag} {ds[tag].value!r}, not a number") from None
    if not np.isfinite(value):
        raise InputError(p, f"has {tag} {value}, not a finite number")
    return value


def _slice_step(root: Path, first: Any, positions: list[np.ndarray], normal: np.ndarray,
                ) -> tuple[float, np.ndarray]:
    """The slice spacing in mm and the step from one slice to the next in LPS; the gaps must be even."""
    if len(positions) == 1:
        dz = float(getattr(first, "SliceThickness", 1.0) or 1.0)
        return dz, normal * dz
    gaps = np.diff([float(pos @ normal) for pos in positions])
    if gaps.min() <= 0:
        raise InputError(root, "holds two slices at the same position (a duplicate or a second series)")
    dz = float(np.median(gaps))
    if np.abs(gaps - dz).max() > 0.1 * dz:
        raise InputError(root, f"has uneven slice gaps ({gaps.min():.3g}..{gaps.max():.3g} mm): missing slices?")
    return dz, (positions[-1] - positions[0]) / (len(positions) - 1)
