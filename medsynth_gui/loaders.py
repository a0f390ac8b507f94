"""Reading what the viewer shows: one sample of a MedSynth file, or a NIfTI volume with its mask."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from engine.errors import InputError
from engine.store import attrs_dict, n_complete, open_file, shown_spacing


@dataclass
class Displayable:
    image: np.ndarray  # (H, W), (3, H, W) or a volume (X, Y, Z)
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    units: str = ""
    title: str = ""


def h5_sample(path: str | Path, index: int) -> Displayable:
    with open_file(path) as f:
        n = n_complete(f)
        if not 0 <= index < n:
            raise InputError(path, f"has no complete sample {index} (0..{n - 1})")
        a = attrs_dict(f)
        image = f["images"][index]
        mask = f["masks"][index] if "masks" in f else None
        label = int(f["labels"][index]) if "labels" in f else None
        seed = int(f["seeds"][index]) if "seeds" in f else None
    if image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and a.get("spatial_dims") == 3:
        # Stored (D, H, W); the viewer takes voxel order (X, Y, Z) with the file's affine.
        image = np.ascontiguousarray(np.transpose(image, (2, 1, 0)))
        mask = None if mask is None else np.ascontiguousarray(np.transpose(mask, (2, 1, 0)))
    names = a.get("class_names") or []
    title = f"{Path(path).name} #{index}"
    if label is not None:
        title += f" · {names[label] if label < len(names) else label}"
    if seed is not None:
        title += f" · seed {seed}"
    spacing = shown_spacing(tuple(float(s) for s in (a.get("spacing") or ())), a.get("spatial_dims", 2))
    affine = np.asarray(a["affine"], float) if a.get("spatial_dims") == 3 and "affine" in a else None
    return Displayable(image.astype(np.float32), mask, affine, spacing,
                       {int(k): v for k, v in (a.get("label_names") or {}).items()},
                       str(a.get("intensity_units", "")), title)


def mask_partner(path: Path) -> Path | None:
    name = path.name
    stem = name[:-7] if name.endswith(".nii.gz") else path.stem
    for suffix in ("_seg", "_mask", "_label", "_labels"):
        for ext in (".nii.gz", ".nii"):
            candidate = path.with_name(stem + suffix + ext)
            if candidate.exists():
                return candidate
    return None


def nifti_volume(path: str | Path) -> Displayable:
    p = Path(path)
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for bad files
        raise InputError(p, f"is not a readable NIfTI file ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(p, f"is {data.ndim}D; the viewer shows 2D images and 3D volumes")
    mask = None
    partner = mask_partner(p)
    if partner is not None:
        m = np.asarray(nib.load(str(partner)).dataobj)
        if m.shape[:3] == data.shape:
            mask = m.astype(np.uint8)
    label_names: dict[int, str] = {}
    ds = p.parent.parent / "dataset.json"
    if ds.exists():
        try:
            labels = json.loads(ds.read_text()).get("labels", {})
            label_names = {int(v) if not str(k).isdigit() else int(k): (k if not str(k).isdigit() else v)
                           for k, v in labels.items() if not isinstance(v, list)}
        except (ValueError, OSError):
            label_names = {}
    units = "HU" if float(np.percentile(data, 1)) < -500 else ""
    zooms = tuple(float(z) for z in img.header.get_zooms()[:data.ndim])
    return Displayable(data, mask, img.affine, zooms, label_names, units, p.name)


def dicom_volume(folder: str | Path) -> Displayable:
    from engine.data.dicom import read_dicom_series

    v = read_dicom_series(folder)
    return Displayable(v.array, None, v.affine, v.spacing, {}, v.units, Path(folder).name)
