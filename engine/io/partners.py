"""The one mask-partner rule: which file is an image's label map, which is a label map's image, and
whether the two grids agree.

Used by the 2D and 3D readers, `medsynth info` and the app, so that a pair found in one place is
found everywhere. Two conventions are understood:

* a suffix before the extension: `x.nii.gz` ↔ `x_seg.nii.gz` (also `_mask`, `_label`, `_labels`, `_segmentation`),
  and for pictures `images/x.png` ↔ `masks/x.png` or `masks/x_mask.png`;
* the Medical Segmentation Decathlon / nnU-Net raw layout: `imagesTr/x_0000.nii.gz` (nnU-Net, one
  file per channel) or `imagesTr/x.nii.gz` (MSD, one file per case) ↔ `labelsTr/x.nii.gz`, and the
  same for imagesTs / labelsTs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

from engine.errors import InputError

# "_segmentation" is ISIC's (ISIC_0000000_segmentation.png).
LABEL_SUFFIXES = ("_seg", "_mask", "_label", "_labels", "_segmentation")
NIFTI_ENDINGS = (".nii.gz", ".nii")
PICTURE_ENDINGS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# MSD / nnU-Net raw: {image folder: its label folder} and back.
LABELS_BESIDE = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}
IMAGES_BESIDE = {v: k for k, v in LABELS_BESIDE.items()}
# Picture pairs (Kvasir-SEG and most 2D segmentation sets).
PICTURE_DIRS = ("images", "masks")
# Image and mask grids must place every voxel within this distance of each other.
AFFINE_TOLERANCE_MM = 1e-3
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def split_name(path: str | Path) -> tuple[str, str]:
    """(stem, ending): `case_0000.nii.gz` → ("case_0000", ".nii.gz"); the ending keeps its case."""
    name = Path(path).name
    for ending in NIFTI_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)], name[-len(ending):]
    p = Path(name)
    return p.stem, p.suffix


def split_channel(stem: str) -> tuple[str, int] | None:
    """nnU-Net's channel suffix: "case_0001" → ("case", 1); None when the stem has none."""
    m = _CHANNEL.match(stem)
    return (m["case"], int(m["channel"])) if m else None


def unlabelled_stem(stem: str) -> str | None:
    """The image stem a label stem names ("x_seg" → "x"), or None without a label suffix."""
    for suffix in LABEL_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def case_names(image_stems: Iterable[str], label_stems: set[str] | None) -> dict[str, tuple[str, int]]:
    """{image stem: (case, channel)} for the images of an MSD / nnU-Net folder.

    A stem that names a label file is its own case (MSD: one file per case, whatever its name ends
    in); otherwise an nnU-Net channel suffix `_NNNN` is split off, when the folder has labels or
    every image carries one (a lone "scan_2024" in an unlabelled folder is a case, not a channel).
    """
    stems = list(image_stems)
    every_one = all(split_channel(s) for s in stems)
    out = {}
    for stem in stems:
        split = split_channel(stem)
        in_labels = label_stems is not None and stem in label_stems
        if split and not in_labels and (label_stems is not None or every_one):
            out[stem] = split
        else:
            out[stem] = (stem, 0)
    return out


def _endings(ending: str) -> tuple[str, ...]:
    same = NIFTI_ENDINGS if ending.lower() in NIFTI_ENDINGS else PICTURE_ENDINGS
    return (ending, *(e for e in same if e != ending.lower()))


def _first_file(candidates: Iterable[Path], other_than: Path) -> Path | None:
    return next((c for c in candidates if c.is_file() and c != other_than), None)


def label_candidates(image: str | Path) -> list[Path]:
    """Where an image's label map may be, most specific first (whether or not they exist)."""
    image = Path(image)
    stem, ending = split_name(image)
    endings = _endings(ending)
    folder = image.parent
    out: list[Path] = []
    if folder.name in LABELS_BESIDE:
        labels = folder.parent / LABELS_BESIDE[folder.name]
        # The exact stem first: an MSD case may itself be named like an nnU-Net channel ("case_0001").
        cases = [stem] + ([split[0]] if (split := split_channel(stem)) else [])
        out += [labels / f"{case}{e}" for case in cases for e in endings]
    if folder.name == PICTURE_DIRS[0]:
        masks = folder.parent / PICTURE_DIRS[1]
        out += [masks / f"{stem}{tag}{e}" for tag in ("", *LABEL_SUFFIXES) for e in endings]
    out += [folder / f"{stem}{tag}{e}" for tag in LABEL_SUFFIXES for e in endings]
    return out


def image_candidates(label: str | Path) -> list[Path]:
    """Where a label map's image may be, most specific first (whether or not they exist)."""
    label = Path(label)
    stem, ending = split_name(label)
    endings = _endings(ending)
    folder = label.parent
    base = unlabelled_stem(stem)
    out: list[Path] = []
    if folder.name in IMAGES_BESIDE:
        images = folder.parent / IMAGES_BESIDE[folder.name]
        out += [images / f"{stem}{channel}{e}" for channel in ("_0000", "") for e in endings]
    if folder.name == PICTURE_DIRS[1]:
        images = folder.parent / PICTURE_DIRS[0]
        out += [images / f"{s}{e}" for s in (stem, base) if s for e in endings]
    if base:
        out += [folder / f"{base}{e}" for e in endings]
    return out


def label_for(image: str | Path) -> Path | None:
    """The label map that goes with an image file, or None when there is none."""
    image = Path(image)
    return _first_file(label_candidates(image), image)


def image_for(label: str | Path) -> Path | None:
    """The image that a label map belongs to (channel 0 of an nnU-Net case), or None."""
    label = Path(label)
    return _first_file(image_candidates(label), label)


def is_label_file(path: str | Path) -> bool:
    """Whether a file is named as a label map: it sits in labelsTr/labelsTs (or masks/ beside
    images/), or its stem ends in a label suffix. A name says so; the values must still agree."""
    path = Path(path)
    folder = path.parent
    if folder.name in IMAGES_BESIDE:
        return True
    if folder.name == PICTURE_DIRS[1] and (folder.parent / PICTURE_DIRS[0]).is_dir():
        return True
    return unlabelled_stem(split_name(path)[0]) is not None


def dataset_root(path: str | Path) -> Path | None:
    """The MSD / nnU-Net folder (the one with dataset.json) that a case file belongs to, or None."""
    folder = Path(path).parent
    if folder.name in LABELS_BESIDE or folder.name in IMAGES_BESIDE:
        root = folder.parent
        if (root / "dataset.json").is_file():
            return root
    return None


# ---------------------------------------------------------------- do the grids agree


def check_geometry(image_path: str | Path, shape: tuple[int, ...], affine: np.ndarray, mask_path: str | Path,
                   mask_shape: tuple[int, ...], mask_affine: np.ndarray) -> None:
    """Raise InputError naming the mask when its voxel grid is not the image's."""
    if tuple(shape) != tuple(mask_shape):
        raise InputError(mask_path, f"geometry (shape {tuple(mask_shape)}) does not match image "
                                    f"{Path(image_path).name} (shape {tuple(shape)})")
    # Compared where it matters, at the corner voxels' world positions, in mm.
    corners = np.zeros((2 ** len(shape), 3))  # a 2D grid's corners lie at z = 0
    corners[:, :len(shape)] = list(itertools.product(*[(0, n - 1) for n in shape]))
    apart = float(np.abs(nib.affines.apply_affine(affine, corners)
                         - nib.affines.apply_affine(mask_affine, corners)).max())
    if apart > AFFINE_TOLERANCE_MM:
        raise InputError(mask_path, f"geometry does not match image {Path(image_path).name}: its voxels lie up to "
                                    f"{apart:.3g} mm from the image's (voxel-to-world matrices differ)")


def onto_grid(mask: np.ndarray, mask_affine: np.ndarray, affine: np.ndarray, shape: tuple[int, ...],
              image_path: str | Path, mask_path: str | Path) -> np.ndarray:
    """A 3D label map put in the voxel order of an image on the same grid (a mask stored with its
    axes flipped or permuted, as some tools write them, is the same segmentation), then checked."""
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(mask_affine),
                                           nib.orientations.io_orientation(affine))
    if not np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]) and mask.ndim == 3:
        mask_affine = mask_affine @ nib.orientations.inv_ornt_aff(ornt, mask.shape)
        mask = nib.orientations.apply_orientation(mask, ornt)
    check_geometry(image_path, shape, affine, mask_path, mask.shape, mask_affine)
    return np.ascontiguousarray(mask)


def check_pairing(images: dict[str, Path], labels: dict[str, Path], missing: Callable[[str], str],
                  orphan: str) -> None:
    """Every image has its label file and every label file its image, matched by key; the first that does not is
    refused in one line naming it (missing(key) for an image alone, orphan for a label file alone)."""
    for key, p in images.items():
        if key not in labels:
            raise InputError(p, missing(key))
    for key, p in labels.items():
        if key not in images:
            raise InputError(p, orphan)
