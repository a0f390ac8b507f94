"""The in-memory form every reader returns, and the checks every reader relies on."""

from __future__ import annotations

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
    """

    images: np.ndarray
    masks: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    # Voxel size in mm; for volumes in (x, y, z) order, i.e. (W, H, D) of the stored arrays.
    spacing: tuple[float, ...] | None = None
    # Volumes only: the 4x4 voxel-to-world (RAS, mm) matrix shared by every volume of the set,
    # indexing voxels as (x, y, z) = (W, H, D) of the stored (D, H, W) arrays.
    affine: np.ndarray | None = None
    modality: str = "generic"  # "CT", "MR", "generic": picks the intensity normalisation
    source: str = ""
    kind: str = "real"
    # Where each image came from ("case_003 · z 41", a file stem), or None when only its index says.
    names: list[str] | None = None

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


def check_finite(path: str | Path, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(path, f"contains {bad} NaN or Inf value(s)")


def check_pair(image_path: str | Path, image_shape: tuple[int, ...], mask_path: str | Path,
               mask_shape: tuple[int, ...]) -> None:
    if tuple(image_shape) != tuple(mask_shape):
        raise InputError(mask_path, f"mask shape {tuple(mask_shape)} does not match image "
                                    f"{Path(image_path).name} shape {tuple(image_shape)}")


def validate(s: ImageSet) -> ImageSet:
    """Checks that hold for every reader's output; raises InputError naming the source."""
    src = s.source or None
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
    if s.names is not None and len(s.names) != len(s):
        raise InputError(src, f"{len(s.names)} image names do not match {len(s)} images")
    return s
