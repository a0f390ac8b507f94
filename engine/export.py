"""Exports of a MedSynth file: PNG pairs, and the nnU-Net raw layout a segmentation model trains on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from engine.errors import InputError
from engine.store import attrs_dict, n_complete, open_file

FORMATS = ("png", "nnunet")


def _to_uint(image: np.ndarray, norm: dict, bits: int) -> np.ndarray:
    """Data units → 8- or 16-bit integers over the stored normalisation range."""
    lo, hi = float(norm.get("lo", image.min())), float(norm.get("hi", image.max()))
    top = (1 << bits) - 1
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * top
    return np.round(scaled).astype(np.uint16 if bits == 16 else np.uint8)


def export(path: str | Path, to: str | Path, fmt: str,
           progress: Callable[[int, int], None] | None = None) -> dict:
    if fmt not in FORMATS:
        raise InputError(None, f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(to)
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "exists and is not empty; choose an empty or new folder")
    with open_file(path) as f:
        a = attrs_dict(f)
        if a.get("spatial_dims", 2) != 2:
            raise InputError(path, "holds volumes; volume export comes with the 3D engine")
        n = n_complete(f)
        if n == 0:
            raise InputError(path, "holds no complete samples")
        norm = a.get("normalisation") or {}
        has_masks = "masks" in f
        label_names = a.get("label_names") or {}
        spacing = list(a.get("spacing") or [1.0, 1.0])
        out.mkdir(parents=True, exist_ok=True)
        if fmt == "png":
            (out / "images").mkdir()
            if has_masks:
                (out / "masks").mkdir()
        else:
            (out / "imagesTr").mkdir()
            (out / "labelsTr").mkdir()
        for i in range(n):
            image = f["images"][i]
            mask = f["masks"][i] if has_masks else None
            name = f"synth_{i:05d}"
            if fmt == "png":
                pixels = _to_uint(image, norm, 16 if image.shape[0] == 1 else 8)
                pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
                Image.fromarray(pixels).save(out / "images" / f"{name}.png")
                if mask is not None:
                    Image.fromarray(mask).save(out / "masks" / f"{name}.png")
            else:
                if mask is None:
                    raise InputError(path, "has no masks; an nnU-Net dataset needs labels")
                affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
                for c in range(image.shape[0]):
                    # nnU-Net takes 2D data as (x, y, 1) volumes, one file per channel.
                    vol = image[c].T[:, :, None].astype(np.float32)
                    nib.save(nib.Nifti1Image(vol, affine), out / "imagesTr" / f"{name}_{c:04d}.nii.gz")
                nib.save(nib.Nifti1Image(mask.T[:, :, None].astype(np.uint8), affine),
                         out / "labelsTr" / f"{name}.nii.gz")
            if progress:
                progress(i + 1, n)
        if fmt == "nnunet":
            labels = {"background": 0}
            labels.update({v: int(k) for k, v in label_names.items() if int(k) != 0})
            highest = int(f["masks"][:n].max())
            for k in range(1, highest + 1):
                if k not in labels.values():
                    labels[f"label_{k}"] = k
            channels = {str(c): norm.get("modality", "generic") for c in range(f["images"].shape[1])}
            (out / "dataset.json").write_text(json.dumps({
                "channel_names": channels, "labels": labels, "numTraining": n, "file_ending": ".nii.gz",
                "name": "MedSynth synthetic", "description": f"exported from {Path(path).name}",
            }, indent=2))
    return {"out": str(out), "n": n, "format": fmt}
