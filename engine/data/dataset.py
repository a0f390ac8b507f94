"""The in-memory form every reader returns, and the checks every reader relies on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import InputError


@dataclass
class ImageSet:
    """Images in their own units plus what is known about them.

    images: float32 (N, C, H, W) or, for volumes, (N, C, D, H, W) in the data's units
            (not yet normalised), C = 1 or 3.
    masks:  uint8 (N, H, W) or (N, D, H, W) label maps, 0 = background, or None.
    labels: int64 (N,) class index, or None.
    prompts: one text per image (a prompts.csv beside the images), or None.
    """

    images: np.ndarray
    masks: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    # Pixel / voxel size in mm in (x, y) or (x, y, z) order, i.e. (W, H[, D]) of the stored arrays.
    spacing: tuple[float, ...] | None = None
    # Volumes only: the 4x4 voxel-to-world (RAS, mm) matrix shared by every volume of the set,
    # indexing voxels as (x, y, z) = (W, H, D) of the stored (D, H, W) arrays.
    affine: np.ndarray | None = None
    modality: str = "generic"  # "CT", "MR", "generic": picks the intensity normalisation
    source: str = ""
    kind: str = "real"
    # Where each image came from ("case_003 · z 41", a file stem), or None when only its index says.
    names: list[str] | None = None
    # The text each image goes with (a caption, a finding), or None when the data has none.
    prompts: list[str] | None = None
    # The user's own mask coding, {label: value in their files} (e.g. {1: 127, 2: 254} for grey-level
    # PNGs); empty when the labels are the stored values. Exports in the user's format write it back.
    mask_coding: dict[int, int] = field(default_factory=dict)
    # Per image like `names`: whatever takes, reorders or joins images carries both.
    prompts: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, ...]:
        """Spatial shape: (H, W) or (D, H, W)."""
        return tuple(int(v) for v in self.images.shape[2:])

    @property
    def spatial_dims(self) -> int:
        return self.images.ndim - 2

    @property
    def num_classes(self) -> int:
        if self.labels is None:
            return 0
        return max(len(self.class_names), int(self.labels.max()) + 1 if len(self.labels) else 0)

    @property
    def num_mask_labels(self) -> int:
        """Number of mask labels including background (0 when there are no masks)."""
        if self.masks is None:
            return 0
        highest = int(self.masks.max()) if self.masks.size else 0
        named = max(self.label_names) if self.label_names else 0
        return max(highest, named, 1) + 1


def consecutive_labels(masks: list[np.ndarray] | np.ndarray, source: str | Path | None = None,
                       values: Iterable[int] | None = None) -> tuple[list[np.ndarray] | np.ndarray, dict[int, int]]:
    """Label maps holding any whole values → uint8 labels 0..K, and the coding {label: value}.

    One mapping for the whole set (sorted values, 0 stays background), so the same grey value
    is the same label in every file; K is the number of distinct non-zero values, never 255
    because a file happens to store its two classes as 127 and 254. The list (or the (N, ...)
    array) is recoded in place, so a large set never holds its masks twice. `values` are the
    values that are labels when something else knows them (a dataset.json, or the full-resolution
    files behind resampled masks) and must include every value the masks hold; by default, those
    the masks hold.
    """
    if values is None:
        found = [np.unique(m) for m in masks]
        values = np.unique(np.concatenate(found)).tolist() if found else []
    nonzero = sorted({int(v) for v in values if v != 0})
    if len(nonzero) > 255:
        raise InputError(source, f"masks hold {len(nonzero)} distinct values; at most 255 labels are possible")
    coding = {k + 1: v for k, v in enumerate(nonzero)}
    lut_keys = np.array([0, *nonzero], np.int64)
    for i, m in enumerate(masks):
        masks[i] = np.searchsorted(lut_keys, m).astype(np.uint8)
    return masks, ({} if all(k == v for k, v in coding.items()) else coding)


def to_user_coding(mask: np.ndarray, coding: dict[int, int]) -> np.ndarray:
    """Labels 0..K back to the user's values (the inverse of `consecutive_labels`); uint16 where a
    value needs it. Without a coding the labels are the values."""
    if not coding:
        return mask
    lut = np.arange(max(256, max(coding) + 1), dtype=np.int64)
    for label, value in coding.items():
        lut[label] = value
    out = lut[mask]
    return out.astype(np.uint8 if out.max(initial=0) < 256 else np.uint16)


def coded_label_names(coding: dict[int, int], word: str = "grey", names: dict[int, str] | None = None,
                      ) -> dict[int, str]:
    """Names that say where each label came from ("label 1 (grey 127)", or with the user's own
    names by value, "enhancing tumour (value 4)"): the raw value alone would read as a label
    number that does not exist, and the bare name would hide that the number changed."""
    names = names or {}
    return {0: names.get(0, "background"),
            **{k: f"{names[v] if v in names else f'label {k}'} ({word} {v})" for k, v in coding.items()}}


def describe_mask_coding(s: ImageSet) -> str:
    """One line on what the masks hold, e.g. "2 mask labels: 127 → 1, 254 → 2"; "" without masks."""
    if s.masks is None:
        return ""
    k = s.num_mask_labels - 1
    if s.mask_coding:
        pairs = ", ".join(f"{v} → {label}" for label, v in sorted(s.mask_coding.items()))
    else:
        named = ((label, str(s.label_names.get(label, label))) for label in range(1, k + 1))
        pairs = ", ".join(str(label) if name == str(label) else f"{label} = {name}" for label, name in named) \
            + " (values kept)"
    return f"{k} mask label{'s' if k != 1 else ''}: {pairs}"


def check_finite(path: str | Path, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(path, f"contains {bad} NaN or Inf value(s)")


def check_pair(image_path: str | Path, image_shape: tuple[int, ...], mask_path: str | Path,
               mask_shape: tuple[int, ...]) -> None:
    if tuple(image_shape) != tuple(mask_shape):
        raise InputError(mask_path, f"mask shape {tuple(mask_shape)} does not match image "
                                    f"{Path(image_path).name} shape {tuple(image_shape)}")


# Without class names a label is its own class index, and training makes one class per index up to the highest.
# An index beyond both the number of images and this (a subset of a labeled set may skip classes) is not a class
# but an id column or a corrupt file: the bound keeps a stray 10^12 from asking for a name, an embedding and a
# count per index (terabytes).
MAX_CLASSES = 1000


def check_numeric(path: str | Path | None, what: str, dtype: np.dtype, kinds: str = "fiub") -> None:
    """Refuse an array whose stored type is not a number (text, compound records, references) before it is
    read or converted: numpy would turn text such as "1.5" into numbers without a word, or fail mid-read."""
    kind = np.dtype(dtype).kind
    if kind not in kinds:
        stored = {"S": "text", "U": "text", "O": "text or objects", "V": "records", "b": "true/false values",
                  "f": "floating-point numbers", "c": "complex numbers"}.get(kind, "other values")
        wanted = "whole numbers" if "f" not in kinds else "real numbers"
        raise InputError(path, f"{what} are stored as {stored} ({np.dtype(dtype)}), not {wanted}")


def check_labels(path: str | Path | None, labels: np.ndarray, class_names: list[str] | None = None,
                 what: str = "class label") -> None:
    """Class labels are whole indices 0..K-1, K the number of class names (without names: the larger of the
    number of labels and MAX_CLASSES).

    Every reader calls it (through `validate`, or directly on the raw labels) before anything is built per
    class: a name per index, counts per class, a model's class embedding. Cheap: one pass, nothing allocated.
    """
    labels = np.asarray(labels)
    check_numeric(path, f"{what}s", labels.dtype)
    if labels.size == 0:
        return
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.rint(labels))
        if not whole.all():
            i = int(np.argmin(whole.reshape(-1)))
            raise InputError(path, f"{what} {labels.reshape(-1)[i]} of image {_image_of(labels, i)} is not a "
                                   "whole class index")
    k = len(class_names) if class_names else max(len(labels), MAX_CLASSES)
    lo, hi = labels.min(), labels.max()
    if lo < 0 or hi >= k:
        i = int(np.argmin(labels) if lo < 0 else np.argmax(labels))
        value = labels.reshape(-1)[i]
        value = int(value) if labels.dtype.kind != "f" else value
        names = (f"the classes named are 0..{k - 1}" if class_names else
                 f"without class names at most {k} classes are possible: is it an id rather than a class?")
        raise InputError(path, f"{what} {value} of image {_image_of(labels, i)} is not a class index ({names})")


def _image_of(labels: np.ndarray, flat: int) -> int:
    return int(np.unravel_index(flat, labels.shape)[0]) if labels.ndim else 0


def data_warnings(s: ImageSet) -> list[str]:
    """What is accepted but suspicious in a set, in words a front end shows before any work on it."""
    if not len(s):
        return []
    flat = s.images.reshape(len(s), -1)
    constant = flat.min(axis=1) == flat.max(axis=1)
    if not constant.any():
        return []
    n = int(constant.sum())
    if n == len(s):
        value = float(flat[0, 0])
        same = bool((flat[:, 0] == value).all())
        return [f"{s.source or 'the data'}: every image holds a single value"
                + (f" ({value:.4g} everywhere)" if same else "") + "; there is nothing in it to learn"]
    first = int(np.argmax(constant))
    return [f"{s.source or 'the data'}: {n} of {len(s)} images hold a single value each (blank?), "
            f"the first is image {first}"]


def validate(s: ImageSet) -> ImageSet:
    """Checks that hold for every reader's output; raises InputError naming the source."""
    src = s.source or None
    check_numeric(src, "images", s.images.dtype)
    if s.images.ndim not in (4, 5):
        raise InputError(src, f"expected images of shape (N, C, H, W) or (N, C, D, H, W), got {s.images.shape}")
    if len(s) == 0:
        raise InputError(src, "holds no images")
    if s.channels not in (1, 3):
        raise InputError(src, f"images have {s.channels} channels; 1 (gray) or 3 (RGB) expected")
    check_finite(s.source, s.images)
    if s.masks is not None:
        if s.masks.shape != (len(s), *s.size):
            raise InputError(src, f"masks of shape {s.masks.shape} do not match images {s.images.shape}")
    if s.labels is not None and s.labels.shape != (len(s),):
        raise InputError(src, f"labels of shape {s.labels.shape} do not match {len(s)} images")
    if s.labels is not None:
        check_labels(src, s.labels, s.class_names)
    if s.names is not None and len(s.names) != len(s):
        raise InputError(src, f"{len(s.names)} image names do not match {len(s)} images")
    if s.prompts is not None and len(s.prompts) != len(s):
        raise InputError(src, f"{len(s.prompts)} prompts do not match {len(s)} images")
    return s
