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
        raise InputError(path, f"is not a readable DICOM file ({exc})") from None


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
        for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "PixelData"):
            if tag not in ds:
                raise InputError(p, f"has no {tag}; cannot place the slice in space")
    return slices


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
    shape = slices[0][1].pixel_array.shape
    planes = []
    for p, ds in slices:
        pixels = ds.pixel_array
        if pixels.shape != shape:
            raise InputError(p, f"slice of shape {pixels.shape} differs from {shape} in the rest of the series")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        planes.append(pixels.astype(np.float32) * slope + intercept)
    # pixel_array is (rows, columns); nibabel-style arrays index (column i, row j, slice k).
    array = np.stack(planes, axis=-1).transpose(1, 0, 2)
    if not np.isfinite(array).all():
        raise InputError(root, "holds non-finite voxel values")
    return array


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
