"""Readers for 2D training data: MedMNIST .npz, image/mask folders, MSD / nnU-Net raw, NIfTI files.

Every reader returns a validated ImageSet in the data's own units and turns every bad input
into one InputError naming the exact file, never a raw library traceback.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from PIL import Image

from engine.data import partners
from engine.data.dataset import (
    ImageSet,
    check_finite,
    check_pair,
    coded_label_names,
    consecutive_labels,
    validate,
)
from engine.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Everything a corrupt or truncated file can make numpy, zipfile, gzip, PIL or nibabel throw.
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, ImageFileError,
                SyntaxError, Image.DecompressionBombError, KeyError, IndexError, TypeError)


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    try:
        yield
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(path, f"cannot be read as {what} ({type(exc).__name__}: {exc})") from exc


def _visible(folder: Path) -> list[Path]:
    # MSD tarballs ship macOS "._case.nii.gz" resource forks; dot files are never data.
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


# ---------------------------------------------------------------- MedMNIST .npz

def read_npz(path: str | Path, split: str = "train", class_names: list[str] | None = None,
             volumes: bool = False) -> ImageSet:
    """Read one split of a MedMNIST v2 / MedMNIST+ .npz file.

    Images (N,H,W) stay gray, (N,H,W,3) stay RGB. 3D variants (N,D,H,W), e.g. OrganMNIST3D, are
    volumes (N,1,D,H,W) when `volumes` (a 3D model), else the central slice along the first volume axis.
    Labels (N,) or (N,1) are class indices. Multi-label files (N,K), e.g. ChestMNIST, give
    labels=None and no class names: one class index per image cannot express them.
    Class names come from a `class_names` / `label_names` array in the file, else from the
    `class_names` argument, else "0", "1", ...
    """
    path = Path(path)
    with _reading(path, "a MedMNIST .npz file"), np.load(path, allow_pickle=False) as z:
        keys = list(z.files)
        if f"{split}_images" not in keys:
            raise InputError(path, f"has no '{split}_images' array (arrays: {', '.join(keys) or 'none'})")
        images = np.asarray(z[f"{split}_images"])
        raw_labels = np.asarray(z[f"{split}_labels"]) if f"{split}_labels" in keys else None
        names_key = next((k for k in ("class_names", "label_names") if k in keys), None)
        file_names = [str(n) for n in np.atleast_1d(z[names_key]).tolist()] if names_key else None
    if not np.issubdtype(images.dtype, np.number):
        raise InputError(path, f"'{split}_images' holds {images.dtype} values, not numbers")
    check_finite(path, images)
    if images.ndim == 4 and images.shape[3] in (1, 3) and len(set(images.shape[1:])) > 1:
        images = np.moveaxis(images, 3, 1)
    elif images.ndim == 4:
        images = images[:, None] if volumes else images[:, images.shape[1] // 2][:, None]
    elif images.ndim == 3:
        images = images[:, None]
    else:
        raise InputError(path, f"'{split}_images' has shape {images.shape}; expected (N,H,W), (N,H,W,3) "
                               "or (N,D,H,W)")
    if images.shape[0] == 0:
        raise InputError(path, f"'{split}_images' holds no images")
    labels = None
    names: list[str] = []
    if raw_labels is not None:
        if raw_labels.shape[0] != images.shape[0]:
            raise InputError(path, f"'{split}_labels' has {raw_labels.shape[0]} rows for "
                                   f"{images.shape[0]} images")
        flat = raw_labels.reshape(raw_labels.shape[0], -1)
        if flat.shape[1] > 1:
            log.info("%s: multi-label (%d columns); class labels not used", path, flat.shape[1])
        else:
            labels = _class_indices(path, f"'{split}_labels'", flat[:, 0])
            names = file_names or list(class_names or []) or [str(i) for i in range(int(labels.max()) + 1)]
            if int(labels.max()) >= len(names):
                raise InputError(path, f"labels go up to {int(labels.max())} but only {len(names)} class "
                                       "names are known")
    return validate(ImageSet(images=images.astype(np.float32), labels=labels, class_names=names,
                             source=str(path)))


def _class_indices(path: Path, what: str, values: np.ndarray) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)) \
            or np.any(values < 0) or np.any(np.rint(values) != values):
        raise InputError(path, f"{what} must be non-negative whole class indices")
    return values.astype(np.int64)


# ---------------------------------------------------------------- image folders

def _read_picture(path: Path) -> np.ndarray:
    """One image file as float32 (C,H,W), C = 1 or 3, in its stored units (16-bit kept)."""
    with _reading(path, "an image"), Image.open(path) as img:
        img.load()
        if img.mode == "LA":
            img = img.getchannel(0)
        elif img.mode not in ("1", "L", "I", "F", "RGB") and not img.mode.startswith("I;16"):
            img = img.convert("RGBA").convert("RGB")  # palette, RGBA, CMYK, YCbCr: colour without alpha
        arr = np.asarray(img).astype(np.float32)
    check_finite(path, arr)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, 2, 0)


def _read_mask(path: Path) -> tuple[np.ndarray, str]:
    """A mask file as whole values in the file's own coding, and what a value is ("grey",
    "index"); the set's values become consecutive labels later, over every file at once.

    JPEG masks (Kvasir-SEG's) are binarised at half their maximum, to 0/255: lossy compression
    leaves stray values near every edge, so no label survives it. Palette masks (VOC style) give
    their indices. Otherwise up to 20 distinct whole values are the file's labels, and anything
    else (an anti-aliased or rescaled mask) is binarised to 0/255.
    """
    with _reading(path, "a mask image"), Image.open(path) as img:
        img.load()
        palette = img.mode == "P"
        if img.mode not in ("1", "L", "P", "I", "F") and not img.mode.startswith("I;16"):
            img = img.convert("L")
        arr = np.asarray(img).astype(np.float64)
    check_finite(path, arr)
    values = np.unique(arr)
    binary = np.where(arr > values.max() / 2, 255, 0).astype(np.uint8)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return binary, "grey"
    if palette:
        return _fill_void(arr.astype(np.uint8)), "index"
    if len(values) <= 20 and values.min() >= 0 and np.all(values == np.rint(values)):
        # The smallest type that holds the values: a set of large masks stays in memory until it is coded.
        return arr.astype(np.uint8 if values.max() < 256 else np.uint16 if values.max() < 65536 else np.int64), \
            "grey"
    return binary, "grey"


# VOC marks object borders and unsure pixels 255 ("void"). A generator cannot leave pixels out,
# and calling them background would shave every object by the border's width: each void pixel
# takes the label of its nearest non-void pixel, which splits the border between object and
# background as the annotator drew it.
VOC_VOID = 255


def _fill_void(indices: np.ndarray) -> np.ndarray:
    void = indices == VOC_VOID
    if not void.any():
        return indices
    if void.all():
        return np.zeros_like(indices)
    from scipy import ndimage

    nearest = ndimage.distance_transform_edt(void, return_distances=False, return_indices=True)
    return indices[tuple(nearest)]


def _resize_to_common(images: list[np.ndarray], masks: list[np.ndarray] | None,
                      ) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Stack (C,H,W) images and (H,W) masks at the most common size (first seen wins ties).

    Images are resized bilinearly in float ("F") mode so 16-bit values survive; masks by nearest
    neighbour so labels stay labels.
    """
    size = Counter(im.shape[1:] for im in images).most_common(1)[0][0]
    h, w = size
    out = np.empty((len(images), images[0].shape[0], h, w), np.float32)
    for i, im in enumerate(images):
        out[i] = im if im.shape[1:] == size else np.stack(
            [np.asarray(Image.fromarray(np.ascontiguousarray(ch)).resize((w, h), Image.Resampling.BILINEAR))
             for ch in im])
    if masks is None:
        return out, None, size
    m_out = np.empty((len(masks), h, w), np.uint8)
    for i, m in enumerate(masks):
        m_out[i] = m if m.shape == size else np.asarray(
            Image.fromarray(np.ascontiguousarray(m)).resize((w, h), Image.Resampling.NEAREST))
    return out, m_out, size


def _pictures_by_stem(folder: Path, strip: tuple[str, ...] = ()) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in _visible(folder):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = p.stem
        for suffix in strip:
            stem = stem.removesuffix(suffix)
        if stem in found:
            raise InputError(p, f"has the same stem as {found[stem].name}; stems must be unique")
        found[stem] = p
    return found


def read_folder_pairs(root: str | Path, class_names: list[str] | None = None) -> ImageSet:
    """Read `images/` (+ optional `masks/`, optional `labels.csv`), or a folder of images only.

    Images and masks pair by file stem (a mask stem may end in `_seg`, `_mask`, `_label` or
    `_labels`). Images of different sizes (Kvasir-SEG's are) are resized to the most common size,
    masks with them.
    If any image is RGB, gray images are repeated to 3 channels so the set stacks.
    `labels.csv` has columns `stem,class`; whole-number classes are indices (named by
    `class_names` or "0", "1", ...), other classes are names, indexed in sorted order.
    """
    root = Path(root)
    image_dir = root / "images" if (root / "images").is_dir() else root
    mask_dir = root / "masks" if (root / "masks").is_dir() else None
    image_files = _pictures_by_stem(image_dir)
    if not image_files:
        raise InputError(image_dir, f"holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    mask_files = _pictures_by_stem(mask_dir, partners.LABEL_SUFFIXES) if mask_dir is not None else None
    if mask_files is not None:
        for stem, p in image_files.items():
            if stem not in mask_files:
                raise InputError(p, f"has no mask partner in {mask_dir}")
        for stem, p in mask_files.items():
            if stem not in image_files:
                raise InputError(p, f"is a mask without an image partner in {image_dir}")
    stems = sorted(image_files)
    images, masks, words = [], [], set()
    for stem in stems:
        images.append(_read_picture(image_files[stem]))
        if mask_files is not None:
            mask, word = _read_mask(mask_files[stem])
            masks.append(mask)
            words.add(word)
            check_pair(image_files[stem], images[-1].shape[1:], mask_files[stem], masks[-1].shape)
    masks, coding = consecutive_labels(masks, mask_dir) if mask_files is not None else ([], {})
    if any(im.shape[0] == 3 for im in images):
        images = [np.repeat(im, 3, axis=0) if im.shape[0] == 1 else im for im in images]
    stacked, stacked_masks, size = _resize_to_common(images, masks if mask_files is not None else None)
    resized = sum(im.shape[1:] != size for im in images)
    if resized:
        log.info("%s: %d image(s) resized to the most common size %dx%d", root, resized, *size)
    labels, names = None, []
    if (root / "labels.csv").is_file():
        labels, names = _read_labels_csv(root / "labels.csv", stems, class_names)
    label_names = (coded_label_names(coding, "index" if words == {"index"} else "grey") if coding
                   else _mask_label_names(stacked_masks))
    return validate(ImageSet(images=stacked, masks=stacked_masks, labels=labels, class_names=names,
                             label_names=label_names, mask_coding=coding, source=str(root)))


def _read_labels_csv(path: Path, stems: list[str], class_names: list[str] | None,
                     ) -> tuple[np.ndarray, list[str]]:
    with _reading(path, "a CSV file with columns stem,class"), path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"stem", "class"} <= set(rows[0]):
        raise InputError(path, "needs a header row with columns stem,class and at least one row")
    by_stem = {(r["stem"] or "").strip(): (r["class"] or "").strip() for r in rows}
    for stem in by_stem:
        if stem not in stems:
            raise InputError(path, f"names '{stem}', which has no image")
    missing = [s for s in stems if s not in by_stem]
    if missing:
        raise InputError(path, f"has no class for image(s) {', '.join(missing[:5])}")
    values = [by_stem[s] for s in stems]
    if all(v.isdigit() for v in values):
        labels = np.array([int(v) for v in values], np.int64)
        names = list(class_names or []) or [str(i) for i in range(int(labels.max()) + 1)]
        if int(labels.max()) >= len(names):
            raise InputError(path, f"classes go up to {int(labels.max())} but only {len(names)} names given")
        return labels, names
    names = sorted(set(values))
    return np.array([names.index(v) for v in values], np.int64), names


def _mask_label_names(masks: np.ndarray | None) -> dict[int, str]:
    if masks is None:
        return {}
    return {int(v): "background" if v == 0 else str(int(v)) for v in np.unique(masks).tolist() + [0]}


# ---------------------------------------------------------------- NIfTI volumes

def _load_volume(path: Path, what: str) -> tuple[np.ndarray, tuple[float, float]]:
    """A 2D/3D NIfTI in closest-canonical (RAS) orientation as float32 (X,Y,Z), plus the in-plane
    spacing (x, y) in mm: the displayed slices' columns run along x, their rows along y."""
    with _reading(path, f"a NIfTI {what}"):
        img = nib.load(path)
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
    return data, (float(zooms[0]), float(zooms[1]))


def _load_labels(path: Path, image_path: Path, image: np.ndarray, allowed: set[int] | None) -> np.ndarray:
    labels, _ = _load_volume(path, "label map")
    check_pair(image_path, image.shape, path, labels.shape)
    return _label_map(path, labels, allowed)


def _label_map(path: Path, labels: np.ndarray, allowed: set[int] | None) -> np.ndarray:
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


def _axial_slices(volume: np.ndarray, labels: np.ndarray | None,
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


def _slices_to_set(cases: list[tuple[list[np.ndarray], list[np.ndarray] | None, tuple[float, float]]],
                   source: Path, *, dataset_names: dict[int, str] | None, modality: str = "generic") -> ImageSet:
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
    stacked, stacked_masks, (h, w) = _resize_to_common(images, masks)
    # Spacing (x, y) after resizing to the common size (x along the W columns); the median when cases differ.
    spacing = np.median([(sp[0] * ims[0].shape[2] / w, sp[1] * ims[0].shape[1] / h)
                         for ims, _, sp in cases if ims], axis=0)
    return validate(ImageSet(images=stacked, masks=stacked_masks, spacing=tuple(float(s) for s in spacing),
                             label_names=label_names, mask_coding=coding, modality=modality, source=str(source)))


def read_nifti(path: str | Path, mask: str | Path | None = None) -> ImageSet:
    """Read one .nii/.nii.gz image (2D) or volume (3D, taken as axial slices).

    The mask is `mask`, or the image's partner (engine.data.partners: `<stem>_seg` / `_mask` /
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
    names, modality = _dataset_json(root) if root is not None else (None, "generic")
    cases, slice_names = [], []
    for image, mask in pairs:
        volume, spacing = _load_volume(image, "image")
        labels = _load_labels(mask, image, volume, set(names) if names else None) if mask is not None else None
        images, masks, kept = _axial_slices(volume, labels)
        cases.append((images, masks, spacing))
        slice_names += _slice_names(_case_name(image, mask), kept)
    s = _slices_to_set(cases, Path(source), dataset_names=names, modality=modality)
    s.names = slice_names
    return s


def _case_name(image: Path, mask: Path | None) -> str:
    """What a case is called: its label file's stem in labelsTr/, else the image's without an
    nnU-Net channel suffix."""
    if mask is not None and mask.parent.name in partners.IMAGES_BESIDE:
        return _nifti_stem(mask)
    stem = _nifti_stem(image)
    split = partners.split_channel(stem) if image.parent.name in partners.LABELS_BESIDE else None
    return split[0] if split else stem


def _slice_names(case: str, kept: list[int]) -> list[str]:
    return [f"{case} · z {z}" for z in kept]


# ---------------------------------------------------------------- MSD / nnU-Net raw

def _dataset_json(root: Path) -> tuple[dict[int, str], str]:
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(path, "is missing; a Medical Segmentation Decathlon / nnU-Net folder needs it")
    with _reading(path, "JSON"):
        meta = json.loads(path.read_text(encoding="utf-8"))
    raw = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "has no 'labels' entry mapping label values to names")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise InputError(path, f"file_ending {ending!r} is not supported; NIfTI (.nii.gz / .nii) expected")
    if all(str(k).isdigit() for k in raw):  # MSD: {"0": "background", "1": "tumour"}
        names = {int(k): str(v) for k, v in raw.items()}
    else:  # nnU-Net v2: {"background": 0, "tumour": 1}; list values are regions, not labels
        names = {int(v): str(k) for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}
    if not names:
        raise InputError(path, "'labels' holds no whole-number label values")
    channels = meta.get("modality") or meta.get("channel_names") or {}
    channels = channels if isinstance(channels, dict) else {}
    modality = _channel_modality(str(channels.get("0", next(iter(channels.values()), ""))))
    if len(channels) > 1:
        log.info("%s: %d channels; the 2D engine reads channel 0 only", path, len(channels))
    return names, modality


def _channel_modality(name: str) -> str:
    """A dataset.json channel name ("CT", "MRI", "T2", "FLAIR", ...) → "CT", "MR" or "generic"."""
    name = name.upper()
    if name == "CT":
        return "CT"
    if name.startswith(("MR", "T1", "T2", "FLAIR", "ADC", "DWI", "PD")):
        return "MR"
    return "generic"


def read_msd(root: str | Path) -> ImageSet:
    """Read a Medical Segmentation Decathlon or nnU-Net raw folder as 2D axial slices.

    Both label styles of dataset.json are understood. nnU-Net multi-channel cases
    (`case_0000.nii.gz`, `case_0001.nii.gz`, ...) are read from channel 0 only; MSD 4D images
    are refused with a clear error. Per case: all foreground slices plus every 4th empty one.
    Cases of different in-plane size are resized to the most common size.
    """
    root = Path(root)
    label_names, modality = _dataset_json(root)
    cases, label_files = _msd_cases(root)
    slices, names = [], []
    for case in sorted(cases):
        volume, spacing = _load_volume(cases[case], "image")
        labels = None
        if label_files is not None:
            labels = _load_labels(label_files[case], cases[case], volume, set(label_names))
        images, masks, kept = _axial_slices(volume, labels)
        slices.append((images, masks, spacing))
        names += _slice_names(case, kept)
    s = _slices_to_set(slices, root, dataset_names=label_names, modality=modality)
    s.names = names
    return s


def _msd_cases(root: Path) -> tuple[dict[str, Path], dict[str, Path] | None]:
    """{case: channel-0 image file} (nnU-Net's `case_0000`, or MSD's one file per case) and
    {case: label file}, or None without labelsTr/; every image must have its label and back."""
    image_dir, label_dir = root / "imagesTr", root / "labelsTr"
    if not image_dir.is_dir():
        raise InputError(image_dir, "is missing")
    image_files = [p for p in _visible(image_dir) if p.is_file() and is_nifti(p)]
    if not image_files:
        raise InputError(image_dir, "holds no .nii.gz images")
    label_files = {_nifti_stem(p): p for p in _visible(label_dir) if is_nifti(p)} if label_dir.is_dir() else None
    stems = [_nifti_stem(p) for p in image_files]
    # The partner rule names each image's case; only channel 0 stands for its case here.
    of = partners.case_names(stems, None if label_files is None else set(label_files))
    cases: dict[str, Path] = {}
    for p, stem in zip(image_files, stems, strict=True):
        case, channel = of[stem]
        if channel == 0:
            cases[case] = p
    if not cases:
        raise InputError(image_dir, "holds no channel-0 images (nnU-Net names end in _0000.nii.gz)")
    if label_files is not None:
        for case, p in cases.items():
            if case not in label_files:
                raise InputError(p, f"has no label file {case}.nii.gz in {label_dir}")
        for case, p in label_files.items():
            if case not in cases:
                raise InputError(p, f"is a label file without an image in {image_dir}")
    return cases, label_files
