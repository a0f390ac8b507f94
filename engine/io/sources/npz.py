"""MedMNIST v2 / MedMNIST+ .npz files: one split as an ImageSet."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from engine.data.dataset import ImageSet, check_finite, validate
from engine.errors import InputError
from engine.io.sources.common import check_declared, numbered_class_names, reading

log = logging.getLogger(__name__)


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
    with reading(path, "a MedMNIST .npz file"), np.load(path, allow_pickle=False) as z:
        keys = list(z.files)
        if f"{split}_images" not in keys:
            raise InputError(path, f"has no '{split}_images' array (arrays: {', '.join(keys) or 'none'})")
        names_key = next((k for k in ("class_names", "label_names") if k in keys), None)
        _check_sizes(path, z, [f"{split}_images", f"{split}_labels", names_key])
        images = np.asarray(z[f"{split}_images"])
        raw_labels = np.asarray(z[f"{split}_labels"]) if f"{split}_labels" in keys else None
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
        if flat.shape[1] == 0:
            raise InputError(path, f"'{split}_labels' has shape {raw_labels.shape}: no label for any image")
        if flat.shape[1] > 1:
            log.info("%s: multi-label (%d columns); class labels not used", path, flat.shape[1])
        else:
            labels = _class_indices(path, f"'{split}_labels'", flat[:, 0])
            names = numbered_class_names(path, f"'{split}_labels' value", labels, file_names or class_names)
    return validate(ImageSet(images=images.astype(np.float32), labels=labels, class_names=names,
                             source=str(path)))


def _check_sizes(path: Path, z: np.lib.npyio.NpzFile, keys: list[str | None]) -> None:
    """What each array's header declares, checked against its member's size and this machine's memory before
    numpy allocates it: a few KB of zip must not ask for gigabytes."""
    for key in keys:
        if key is None or f"{key}.npy" not in z.zip.namelist():
            continue
        info = z.zip.getinfo(f"{key}.npy")
        with z.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
        count = math.prod(shape)
        declared = f"a '{key}' array of shape {shape} ({dtype})"
        # Read in its own type, then copied as float32 (and once more when its axes are moved).
        check_declared(path, declared, count * dtype.itemsize, info.file_size, count * (dtype.itemsize + 8))


def _class_indices(path: Path, what: str, values: np.ndarray) -> np.ndarray:
    # Above 2**53 a float is no whole number one can count to, and past int64 a value would wrap when cast.
    top = 2**53 if np.issubdtype(values.dtype, np.floating) else np.iinfo(np.int64).max
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)) \
            or np.any(values < 0) or np.any(values > top) or np.any(np.rint(values) != values):
        raise InputError(path, f"{what} must be non-negative whole class indices")
    return values.astype(np.int64)
