"""Which folders are DICOM series, and a series as the viewer shows it; the series itself is read by
engine.io.dicom (slices sorted in space, real units, RAS affine)."""

from __future__ import annotations

import os
from pathlib import Path

from engine.io.dicom import is_dicom_folder, looks_dicom, read_dicom_series
from engine.io.sources.common import Case, View, visible


def holds_slices(folder: Path) -> bool:
    """Whether a folder itself holds the slices of a series."""
    # A DICOMDIR index (often beside a README) looks like DICOM but holds no slice; its series sit
    # in subfolders.
    return is_dicom_folder(folder) and any(not p.name.upper().startswith("DICOMDIR") and looks_dicom(p)
                                           for p in visible(folder))


def series_folders(path: Path) -> list[Path]:
    """The series under `path`: itself when it holds slices, else every folder below that does."""
    if holds_slices(path):
        return [path]
    return [Path(d) for d, _, _ in sorted(os.walk(path)) if Path(d) != path and holds_slices(Path(d))]


def volume_cases(path: Path) -> list[Case]:
    return [Case(s, dicom=True) for s in series_folders(path)]


def dicom_view(folder: str | Path) -> View:
    v = read_dicom_series(folder)
    return View(v.array, None, v.affine, v.spacing, {}, v.units, Path(folder).name)
