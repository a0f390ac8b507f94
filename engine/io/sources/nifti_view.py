"""A NIfTI file as the viewer shows it: the image with its geometry, its label map as the overlay (the
engine's partner rule), the labels' names from its dataset.json, and HU when the voxels say CT."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from engine.errors import InputError
from engine.io import partners
from engine.io.sources.common import View, looks_like_ct
from engine.io.sources.dataset_json import read_dataset_json
from engine.io.sources.nifti import label_map, open_nifti


def _nifti_array(p: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = open_nifti(p, "file")
    try:
        data = np.asarray(img.dataobj)
    except MemoryError:
        raise InputError(p, "needs more memory than is free to be shown") from None
    except Exception as exc:  # nibabel raises many types for bad files
        raise InputError(p, f"is not a readable NIfTI file ({' '.join(str(exc).split())})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(p, f"is {data.ndim}D; the viewer shows 2D images and 3D volumes")
    return data, img


def _label_names(path: Path) -> dict[int, str]:
    root = partners.dataset_root(path)
    if root is None:
        return {}
    try:
        return read_dataset_json(root).label_names
    except InputError:
        return {}  # a broken dataset.json only costs the names here


def _image(p: Path) -> View:
    data, img = _nifti_array(p)
    data = data.astype(np.float32)
    units = "HU" if looks_like_ct(data) else ""
    zooms = tuple(float(z) for z in img.header.get_zooms()[:data.ndim])
    return View(data, None, np.asarray(img.affine, float), zooms, _label_names(p), units, p.name)


def _spatial_shape(d: View) -> tuple[int, ...]:
    colour = d.image.ndim == 3 and d.image.shape[0] == 3 and d.affine is None
    return tuple(d.image.shape[1:] if colour else d.image.shape)


def with_segmentation(d: View, label: str | Path) -> View:
    """The shown image with a label NIfTI as its overlay; InputError naming the label file when it is not
    a label map or its grid is not the image's (a mask with flipped or permuted axes is turned to fit)."""
    label = Path(label)
    raw, img = _nifti_array(label)
    labels = label_map(label, raw, None)
    shape = _spatial_shape(d)
    if labels.ndim == 3 and labels.shape[2] == 1 and len(shape) == 2:
        labels = labels[..., 0]
    if d.affine is None or labels.ndim != len(shape):
        if labels.shape != shape:
            raise InputError(label, f"holds a label map of shape {labels.shape}; the image shown is {shape}")
    else:
        labels = partners.onto_grid(labels, np.asarray(img.affine, float), d.affine, shape, d.title, label)
    names = _label_names(label) or d.label_names
    # One segmentation at a time: a second one replaces the first in the title too.
    base = d.title.split(" + ")[0] if d.mask is not None else d.title
    title = f"{base} + {label.name}" if base else label.name
    return replace(d, mask=labels, label_names=names, title=title)


def _labels_alone(p: Path) -> View | None:
    """A label map with no image to go on: its labels in colour on black, as 3D Slicer and ITK-SNAP show a
    segmentation loaded by itself. None when its values are not labels (then it is an image after all)."""
    raw, img = _nifti_array(p)
    try:
        labels = label_map(p, raw, None)
    except InputError:
        return None
    zooms = tuple(float(z) for z in img.header.get_zooms()[:labels.ndim])
    return View(np.zeros(labels.shape, np.float32), labels, np.asarray(img.affine, float), zooms,
                       _label_names(p), "", f"{p.name} (label map)")


def nifti_view(path: str | Path) -> View:
    """A NIfTI file for the viewer, paired by the partner rule: an image with its label map as the
    overlay, or a label map with its image (or alone, in colour on black)."""
    p = Path(path)
    if partners.is_label_file(p):
        image = partners.image_for(p)
        if image is not None:
            return with_segmentation(_image(image), p)
        alone = _labels_alone(p)
        if alone is not None:
            return alone
    d = _image(p)
    partner = partners.label_for(p)
    if partner is not None:
        try:
            return with_segmentation(d, partner)
        except InputError as exc:
            d.note = f"{exc} — shown without it"
    return d
