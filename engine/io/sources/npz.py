"""MedMNIST v2 / MedMNIST+ .npz files: one split as an ImageSet."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engine.data.dataset import ImageSet, check_finite, validate
from engine.errors import InputError
from engine.io.sources.common import reading

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
