"""Image folders (Kvasir-SEG, ISIC, VOC style): `images/` (+ `masks/`, `labels.csv`, `prompts.csv`) or pictures
alone."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.dataset import ImageSet, check_finite, check_pair, coded_label_names, consecutive_labels, validate
from engine.data.prompts import clean_prompt
from engine.errors import InputError
from engine.io import partners
from engine.io.sources.common import IMAGE_SUFFIXES, numbered_class_names, reading, visible
from engine.io.sources.csv_table import read_table

log = logging.getLogger(__name__)

# Beside images/ (or beside the pictures themselves): a class per image, a prompt per image, both by file stem.
LABELS_CSV = "labels.csv"
PROMPTS_CSV = "prompts.csv"
# How many stems a fault lists before it says "...": enough to find the pattern, one line.
LISTED = 5


def _read_picture(path: Path) -> np.ndarray:
    """One image file as float32 (C,H,W), C = 1 or 3, in its stored units (16-bit kept)."""
    with reading(path, "an image"), Image.open(path) as img:
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
    with reading(path, "a mask image"), Image.open(path) as img:
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


def resize_to_common(images: list[np.ndarray], masks: list[np.ndarray] | None,
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
    for p in visible(folder):
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
    `prompts.csv` has columns `stem,prompt`: the text each image is described by. Either file names
    every image once (a stem may be given as the file's name) and nothing else.
    """
    root = Path(root)
    image_dir = root / "images" if (root / "images").is_dir() else root
    mask_dir = root / "masks" if (root / "masks").is_dir() else None
    image_files = _pictures_by_stem(image_dir)
    if not image_files:
        raise InputError(image_dir, f"holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    mask_files = _pictures_by_stem(mask_dir, partners.LABEL_SUFFIXES) if mask_dir is not None else None
    if mask_files is not None:
        partners.check_pairing(image_files, mask_files, lambda stem: f"has no mask partner in {mask_dir}",
                               f"is a mask without an image partner in {image_dir}")
    stems = sorted(image_files)
    # The tables first: a wrong row is found before thousands of pictures are read.
    labels, names = None, []
    if (root / LABELS_CSV).is_file():
        labels, names = _read_labels_csv(root / LABELS_CSV, stems, class_names)
    prompts = None
    if (root / PROMPTS_CSV).is_file():
        prompts = [clean_prompt(p) for p in _per_image(root / PROMPTS_CSV, "prompt", stems)]
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
    stacked, stacked_masks, size = resize_to_common(images, masks if mask_files is not None else None)
    resized = sum(im.shape[1:] != size for im in images)
    if resized:
        log.info("%s: %d image(s) resized to the most common size %dx%d", root, resized, *size)
    label_names = (coded_label_names(coding, "index" if words == {"index"} else "grey") if coding
                   else _mask_label_names(stacked_masks))
    return validate(ImageSet(images=stacked, masks=stacked_masks, labels=labels, class_names=names,
                             label_names=label_names, mask_coding=coding, source=str(root), prompts=prompts))


def _read_labels_csv(path: Path, stems: list[str], class_names: list[str] | None,
                     ) -> tuple[np.ndarray, list[str]]:
    values = _per_image(path, "class", stems)
    # ASCII digits only: int() refuses some of what isdigit() accepts ("²"). More than 18 digits is beyond int64
    # and no class index; it is refused as one by the bound on class indices.
    if all(v.isascii() and v.isdigit() for v in values):
        labels = np.array([int(v) if len(v) <= 18 else 10**18 for v in values], np.int64)
        return labels, numbered_class_names(path, "class", labels, class_names)
    names = sorted(set(values))
    return np.array([names.index(v) for v in values], np.int64), names


def _per_image(path: Path, column: str, stems: list[str]) -> list[str]:
    """The `column` of a `stem,<column>` table for each image, in `stems`' order: every image named once, by its
    stem or its file name, with a value, and no row for a picture that is not there."""
    known = set(stems)
    found: dict[str, tuple[int, str]] = {}
    for row in read_table(path, f"a CSV file with columns stem,{column}", ("stem", column)):
        stem = _stem_of(row.values["stem"], known)
        if not stem:
            raise InputError(path, f"row {row.number} has no stem")
        if stem not in known:
            raise InputError(path, f"names '{stem}' (row {row.number}), which has no image")
        if stem in found:
            raise InputError(path, f"names '{stem}' twice (rows {found[stem][0]} and {row.number})")
        if not row.values[column]:
            raise InputError(path, f"gives '{stem}' an empty {column} (row {row.number})")
        found[stem] = (row.number, row.values[column])
    missing = [s for s in stems if s not in found]
    if missing:
        listed = ", ".join(missing[:LISTED]) + (", ..." if len(missing) > LISTED else "")
        raise InputError(path, f"has no {column} for {len(missing)} of the {len(stems)} images: {listed}")
    return [found[s][1] for s in stems]


def _stem_of(written: str, known: set[str]) -> str:
    """A stem as a table gives it: the stem itself, or the picture's file name ("cju0qkwl35piu0993.jpg")."""
    name = Path(written)
    if written not in known and name.suffix.lower() in IMAGE_SUFFIXES and name.stem in known:
        return name.stem
    return written


def _mask_label_names(masks: np.ndarray | None) -> dict[int, str]:
    if masks is None:
        return {}
    return {int(v): "background" if v == 0 else str(int(v)) for v in np.unique(masks).tolist() + [0]}
