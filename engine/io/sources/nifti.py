"""NIfTI files (.nii / .nii.gz): one image or volume, its label map, and cases read as axial slices (2D)
or listed as whole volumes (3D). A folder of NIfTI files is its cases, each with its partner."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from engine.data.dataset import ImageSet, check_finite, check_pair, coded_label_names, consecutive_labels, validate
from engine.errors import InputError
from engine.io import partners
from engine.io.sources.common import DEFLATE_MAX_RATIO, Case, check_declared, nifti_stem, reading
from engine.io.sources.dataset_json import read_dataset_json
from engine.io.sources.pictures import resize_to_common

log = logging.getLogger(__name__)

# One case's axial slices: images (1, H, W), their label maps or None, and the in-plane spacing (x, y).
Slices = tuple[list[np.ndarray], list[np.ndarray] | None, tuple[float, float]]
# |det| of the voxel axes over the product of their lengths: below this, two axes (nearly) share a line and
# the voxels cannot be placed in space (a well-formed oblique grid is near 1).
SINGULAR = 1e-6


@contextlib.contextmanager
def _nibabel_quiet() -> Iterator[None]:
    """nibabel logs the header fixes it makes (pixdim 0 read as 1) without the file's name; what matters is said
    here, with it."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def open_nifti(path: Path, what: str, volume: bool = False) -> nib.Nifti1Image:
    """A NIfTI file's header (nib.load reads no voxel), with what reading its voxels takes checked first: the file
    must hold the voxels its header declares and this machine's memory them as float32, and the voxels must be
    placeable in space (a finite, invertible voxel-to-world matrix). A voxel size of 0 or NaN in the header
    (pixdim) is a warning, 1 mm taken; when it places a `volume` (resampled in mm), a refusal."""
    with reading(path, f"a NIfTI {what}"), _nibabel_quiet():
        # nibabel reads pixdim 0 as 1 (and logs it without the file's name): the raw header says what is stored.
        img = nib.load(path)
        with nib.openers.ImageOpener(path) as f:
            raw = type(img.header).from_fileobj(f, check=False)
    shape = tuple(int(d) for d in img.shape)
    dtype = img.get_data_dtype()
    stored = path.stat().st_size
    gz = path.name.lower().endswith(".gz")
    holds = stored * DEFLATE_MAX_RATIO if gz else stored - int(img.header.get_data_offset())
    # The voxels in their stored type, then as float32 (a 4D file gives one channel at most).
    check_declared(path, f"a {'×'.join(map(str, shape))} {dtype} volume", math.prod(shape) * dtype.itemsize, holds,
                   math.prod(shape[:3]) * (dtype.itemsize + 8))
    affine = np.asarray(img.affine, float)
    pixdim = tuple(float(z) for z in raw["pixdim"][1:1 + min(len(shape), 3)])
    if not np.isfinite(affine).all():
        raise InputError(path, f"has NaN or infinite values in its voxel-to-world matrix (header pixdim {pixdim}, "
                               "qform or sform): its voxels cannot be placed in space")
    axes = affine[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not np.all(lengths > 0) or abs(np.linalg.det(axes)) < SINGULAR * float(np.prod(lengths)):
        raise InputError(path, "has a singular voxel-to-world matrix (header sform or qform: a zero voxel size, or "
                               "two voxel axes along one line): its voxels cannot be placed in space")
    if not all(np.isfinite(z) and z > 0 for z in pixdim):
        if not volume:
            log.warning("%s: voxel size %s in the header (pixdim) is not a size; 1 mm taken", path, pixdim)
        elif int(raw["sform_code"]) == 0:  # else the sform places the voxels, pixdim aside
            raise InputError(path, f"has voxel size {pixdim} in its header (pixdim): a 3D volume is resampled in mm "
                                   "and needs positive sizes")
    return img


def load_volume(path: Path, what: str) -> tuple[np.ndarray, tuple[float, float]]:
    """A 2D/3D NIfTI in closest-canonical (RAS) orientation as float32 (X,Y,Z), plus the in-plane
    spacing (x, y) in mm: the displayed slices' columns run along x, their rows along y."""
    img = open_nifti(path, what)
    if min(img.shape[:2]) < 2:
        raise InputError(path, f"has shape {img.shape}: an image needs at least 2×2 pixels")
    with reading(path, f"a NIfTI {what}"):
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if len(img.shape) not in (2, 3):
            raise InputError(path, f"is {len(img.shape)}D with shape {img.shape}; a 2D image or 3D volume "
                                   "was expected (store each channel as its own file, nnU-Net style)")
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = img.header.get_zooms()
    check_finite(path, data)
    data = data[:, :, None] if data.ndim == 2 else data
    # A stored voxel size that is no size (warned of on opening) is 1 mm.
    x, y = (float(z) if np.isfinite(z) and z > 0 else 1.0 for z in zooms[:2])
    return data, (x, y)


def load_labels(path: Path, image_path: Path, image: np.ndarray, allowed: set[int] | None) -> np.ndarray:
    labels, _ = load_volume(path, "label map")
    check_pair(image_path, image.shape, path, labels.shape)
    return label_map(path, labels, allowed)


def label_map(path: Path, labels: np.ndarray, allowed: set[int] | None) -> np.ndarray:
    """Label values checked (whole, 0..255, known to dataset.json when `allowed`) and made uint8."""
    label_values(path, labels, allowed)
    return labels.astype(np.uint8)


def label_values(path: Path, labels: np.ndarray, allowed: set[int] | None) -> list[int]:
    """The values a label map holds, sorted; InputError unless they are whole, 0..255 and, when
    `allowed`, known to dataset.json."""
    values = np.unique(labels)
    if np.any(values != np.rint(values)) or values.min() < 0 or values.max() > 255:
        raise InputError(path, "is not a label map: values must be whole numbers 0..255")
    found = values.astype(int).tolist()
    unknown = sorted(set(found) - allowed) if allowed is not None else []
    if unknown:
        raise InputError(path, f"holds label value(s) {unknown} not in dataset.json labels {sorted(allowed)}")
    return found


def code_label_maps(masks: list[np.ndarray] | np.ndarray, source: str | Path, names: dict[int, str] | None,
                    values: Iterable[int] | None = None,
                    ) -> tuple[list[np.ndarray] | np.ndarray, dict[int, int], dict[int, str]]:
    """A set's NIfTI label maps → labels 0..K in place, the coding {label: value} and the labels' names.

    With a dataset.json, its values are the labels: nnU-Net v2's are 0..K already, an MSD one may
    skip some (BraTS: 0, 1, 2, 4), and those become consecutive too, keeping their names. Without
    one, the labels are the distinct values over every case of the set (`values` when the masks
    are resampled from the files that hold them), so a lone 0/255 mask is one label, not 255, and
    a value is the same label in every case.
    """
    known = set(names) if names else None if values is None else {int(v) for v in values}
    masks, coding = consecutive_labels(masks, source, known)
    if coding:
        return masks, coding, coded_label_names(coding, "value", names)
    if names:
        return masks, coding, names
    top = max(known, default=0) if known is not None else max((int(m.max()) for m in masks if m.size), default=0)
    return masks, coding, {0: "background", **{k: str(k) for k in range(1, top + 1)}}


def axial_slices(volume: np.ndarray, labels: np.ndarray | None,
                  ) -> tuple[list[np.ndarray], list[np.ndarray] | None, list[int]]:
    """Axial slices shown upright (rot90 of the canonical slice), and their z indices. With labels,
    all slices with foreground and every 4th slice without, so empty slices do not dominate the data."""
    if labels is None:
        keep = range(volume.shape[2])
    else:
        fg = labels.any(axis=(0, 1))
        keep = sorted(set(np.flatnonzero(fg).tolist()) | set(np.flatnonzero(~fg)[::4].tolist()))
    # Copies, so the whole volume is freed once its slices are taken.
    images = [np.rot90(volume[:, :, z])[None].copy() for z in keep]
    return images, None if labels is None else [np.rot90(labels[:, :, z]).copy() for z in keep], list(keep)


def slices_to_set(cases: list[Slices], source: Path, *, dataset_names: dict[int, str] | None,
                  modality: str = "generic") -> ImageSet:
    """Every case's slices as one set, their masks in the files' values (coded here, over all of
    them); `dataset_names` are dataset.json's labels, or None."""
    images = [im for ims, _, _ in cases for im in ims]
    if not images:
        raise InputError(source, "holds no slices")
    has_masks = all(ms is not None for _, ms, _ in cases)
    masks = [m for _, ms, _ in cases for m in ms or []] if has_masks else None
    coding: dict[int, int] = {}
    label_names = dataset_names or {}
    if masks is not None:
        # Every foreground voxel lies on a kept slice, so the slices hold every value of the volumes.
        masks, coding, label_names = code_label_maps(masks, source, dataset_names)
    stacked, stacked_masks, (h, w) = resize_to_common(images, masks)
    # Spacing (x, y) after resizing to the common size (x along the W columns); the median when cases differ.
    spacing = np.median([(sp[0] * ims[0].shape[2] / w, sp[1] * ims[0].shape[1] / h)
                         for ims, _, sp in cases if ims], axis=0)
    return validate(ImageSet(images=stacked, masks=stacked_masks, spacing=tuple(float(s) for s in spacing),
                             label_names=label_names, mask_coding=coding, modality=modality, source=str(source)))


def read_nifti(path: str | Path, mask: str | Path | None = None) -> ImageSet:
    """Read one .nii/.nii.gz image (2D) or volume (3D, taken as axial slices).

    The mask is `mask`, or the image's partner (engine.io.partners: `<stem>_seg` / `_mask` /
    `_label` / `_labels`, or `labelsTr/<case>` beside an nnU-Net / MSD `imagesTr/`). Given a label
    map whose image is there, the pair is read. With a mask, slices are all foreground slices plus
    every 4th empty one; without, all. Each slice is named "<case> · z <index>".
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist")
    if mask is None:
        image = partners.image_for(path) if partners.is_label_file(path) else None
        path, mask = (image, path) if image is not None else (path, partners.label_for(path))
    elif not Path(mask).is_file():
        raise InputError(mask, "does not exist")
    return read_nifti_cases([(path, None if mask is None else Path(mask))], path)


def read_nifti_cases(pairs: list[tuple[Path, Path | None]], source: str | Path) -> ImageSet:
    """NIfTI images, each with its label map (or none, for every case), as the axial slices of one
    set, as `read_nifti` reads one: a folder of cases is read through this, not case by case, so
    that its labels are coded over every case (a value is the same label in each) and named by the
    dataset.json of the first image's dataset, if it has one."""
    root = partners.dataset_root(pairs[0][0]) if pairs else None
    meta = read_dataset_json(root) if root is not None else None
    named = [(case_name(image, mask), image, mask) for image, mask in pairs]
    return read_cases(named, Path(source), meta.label_names if meta else None, meta.modality if meta else "generic")


def read_cases(cases: list[tuple[str, Path, Path | None]], source: Path, names: dict[int, str] | None,
               modality: str) -> ImageSet:
    """Named cases (case, image, label map or None) as the axial slices of one set; `names` are
    dataset.json's labels (which then bound the values a label map may hold), or None."""
    slices: list[Slices] = []
    slice_names: list[str] = []
    for case, image, mask in cases:
        volume, spacing = load_volume(image, "image")
        labels = load_labels(mask, image, volume, set(names) if names else None) if mask is not None else None
        images, masks, kept = axial_slices(volume, labels)
        slices.append((images, masks, spacing))
        slice_names += [f"{case} · z {z}" for z in kept]
    s = slices_to_set(slices, source, dataset_names=names, modality=modality)
    s.names = slice_names
    return s


def case_name(image: Path, mask: Path | None) -> str:
    """What a case is called: its label file's stem in labelsTr/, else the image's without an
    nnU-Net channel suffix."""
    if mask is not None and mask.parent.name in partners.IMAGES_BESIDE:
        return nifti_stem(mask)
    stem = nifti_stem(image)
    split = partners.split_channel(stem) if image.parent.name in partners.LABELS_BESIDE else None
    return split[0] if split else stem


# ---------------------------------------------------------------- whole volumes (3D)


def file_cases(path: Path) -> tuple[list[Case], dict[int, str] | None, set[int] | None]:
    """A NIfTI file as its one 3D case, with its label names and allowed values when its dataset.json gives them.
    A label map given alone stands for its case: the pair is read."""
    image = partners.image_for(path) if partners.is_label_file(path) else None
    case = Case(image, path) if image is not None else Case(path, partners.label_for(path))
    root = partners.dataset_root(case.image)
    if root is not None:
        names = read_dataset_json(root).label_names
        return [case], names, set(names)
    return [case], None, None


def folder_cases(files: list[Path]) -> list[Case]:
    """A folder's NIfTI files as cases, each image with its mask partner, read alike as slices or as volumes."""
    # A file is a mask when it is named as one and its image is there too; a lone "x_label.nii.gz"
    # is an image like any other.
    is_mask = {p for p in files if partners.is_label_file(p) and partners.image_for(p) in files}
    cases = [Case(p, partners.label_for(p)) for p in files if p not in is_mask]
    with_mask = [c for c in cases if c.mask is not None]
    if with_mask and len(with_mask) < len(cases):
        lone = next(c for c in cases if c.mask is None)
        raise InputError(lone.image, f"has no mask partner ({'/'.join(partners.LABEL_SUFFIXES)}) while "
                                     f"{with_mask[0].image.name} has one; give every image a mask or none")
    return cases


def read_array(path: Path, what: str, channel: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A 3D NIfTI's voxels as float32 in stored order, and its affine; `channel` picks one of a 4D file's."""
    img = open_nifti(path, what, volume=True)
    with reading(path, f"a NIfTI {what}"):
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            data = img.dataobj[..., 0]
        elif len(shape) == 4 and channel is not None:
            if channel >= shape[3]:
                raise InputError(path, f"has {shape[3]} channels (shape {shape}); channel {channel} is out of range")
            # Slicing the proxy reads only the chosen channel, not the whole 4D file.
            data = img.dataobj[..., channel]
        elif len(shape) == 3:
            data = img.dataobj[...]
        else:
            raise InputError(path, f"is {len(shape)}D with shape {shape}; a 3D volume was expected (store each "
                                   "channel as its own file, nnU-Net style, or list the channels in dataset.json)")
        affine = np.asarray(img.affine, float)
    return np.asarray(data, np.float32), affine
