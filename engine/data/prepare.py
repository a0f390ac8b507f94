"""From an ImageSet in data units to the tensors a diffusion model trains on, and back.

Intensities map to [-1, 1] by a per-modality rule whose parameters are stored with
the run, so generated images return in the data's own units (HU for CT). Masks
travel as one channel per foreground label at ±1, which a model can denoise like
image channels; decoding takes the strongest positive channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.dataset import ImageSet

# CT in HU: a wide window keeps air, soft tissue and bone apart.
CT_WINDOW = (-1000.0, 1000.0)
MR_PERCENTILES = (0.5, 99.5)
# The whole-number depths of pictures (PNG, TIFF, JPEG) and MedMNIST arrays.
PIXEL_DEPTHS = (8, 16)


@dataclass
class Normalisation:
    modality: str
    lo: float
    hi: float
    units: str = ""
    # 8 or 16 when the data are whole numbers of that depth (an 8-bit photo, a 12- or 16-bit X-ray), else 0:
    # pictures are then written back as those numbers, the data's own units, rather than stretched.
    bits: int = 0

    def forward(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return (x - self.lo) / (self.hi - self.lo) * 2.0 - 1.0

    def inverse(self, y: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return (y + 1.0) / 2.0 * (self.hi - self.lo) + self.lo

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalisation:
        return cls(modality=d["modality"], lo=float(d["lo"]), hi=float(d["hi"]), units=d.get("units", ""),
                   bits=int(d.get("bits", 0)))


def whole_depth(images: np.ndarray) -> int:
    """The smallest of PIXEL_DEPTHS whose whole numbers hold every value, or 0 (negative, fractional or too large)."""
    lo, hi = float(images.min()), float(images.max())
    # Wholeness on a subsample: reading a picture gives whole numbers everywhere or (resized) almost nowhere.
    flat = images.reshape(-1)[:: max(1, images.size // 2_000_000)]
    if lo < 0 or not np.array_equal(flat, np.rint(flat)):
        return 0
    return next((bits for bits in PIXEL_DEPTHS if hi < 1 << bits), 0)


def fit_normalisation(s: ImageSet, modality: str = "auto") -> Normalisation:
    mod = s.modality if modality == "auto" else modality
    if mod == "CT":
        return Normalisation("CT", *CT_WINDOW, units="HU")
    if mod == "MR":
        # Subsample: percentiles over millions of voxels are slow and gain nothing.
        flat = s.images.reshape(-1)[:: max(1, s.images.size // 2_000_000)]
        lo, hi = np.percentile(flat, MR_PERCENTILES)
        lo, hi = float(min(lo, 0.0)), float(hi)
        return Normalisation("MR", lo, hi if hi > lo else lo + 1.0, units="a.u.", bits=whole_depth(s.images))
    lo, hi = float(s.images.min()), float(s.images.max())
    return Normalisation("generic", lo, hi if hi > lo else lo + 1.0, bits=whole_depth(s.images))


def encode_masks(masks: torch.Tensor, mask_labels: int) -> torch.Tensor:
    """(N, H, W) label map → (N, mask_labels - 1, H, W) channels at ±1."""
    labels = torch.arange(1, mask_labels, device=masks.device).view(1, -1, *([1] * (masks.dim() - 1)))
    return (masks.unsqueeze(1).long() == labels).float() * 2.0 - 1.0


def decode_masks(channels: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, K, H, W) channels → (N, H, W) uint8 labels; below zero everywhere means background."""
    c = torch.as_tensor(channels).float()
    best, idx = c.max(dim=1)
    return torch.where(best > 0, idx + 1, torch.zeros_like(idx)).to(torch.uint8).cpu().numpy()


def resize(images: torch.Tensor, size: int, *, nearest: bool = False) -> torch.Tensor:
    """(N, C, H, W) or (N, C, D, H, W) to an isotropic grid of `size` per axis."""
    spatial = tuple(images.shape[2:])
    target = (size,) * len(spatial)
    if spatial == target:
        return images
    if nearest:
        return F.interpolate(images, size=target, mode="nearest-exact")
    if len(spatial) == 3:
        return F.interpolate(images, size=target, mode="trilinear", align_corners=False)
    return F.interpolate(images, size=target, mode="bilinear", align_corners=False, antialias=True)


def resized_geometry(s: ImageSet, size: int) -> tuple[tuple[float, ...] | None, np.ndarray | None]:
    """Spacing (x, y[, z]) and affine of `s` once `resize` has brought it to `size` per axis: the
    field of view stays, so each pixel grows by the factor the grid shrinks (64² at 3 mm → 32² at
    6 mm). The affine is None where the set has none (2D); the file then stores diag(spacing)."""
    if not s.spacing:
        return None, s.affine
    counts = np.asarray(s.size[::-1], float)  # (W, H[, D]): the spacing's order
    scale = counts / size
    spacing = tuple(float(v) for v in np.asarray(s.spacing, float) * scale)
    if s.affine is None:
        return spacing, None
    # Sample centres with align_corners=False: new voxel i sits at old voxel (i + 0.5) * scale - 0.5.
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1.0) / 2.0
    return spacing, np.asarray(s.affine, float) @ step


@dataclass
class TrainingTensors:
    x: torch.Tensor  # (N, C + K, H, W) image channels then mask channels, in [-1, 1]
    labels: torch.Tensor | None  # (N,) int64
    cond: torch.Tensor | None  # (N, K, H, W) mask channels when masks are the condition


def to_tensors(s: ImageSet, norm: Normalisation, size: int, mask_mode: str, mask_labels: int,
               class_conditional: bool) -> TrainingTensors:
    images = torch.from_numpy(np.ascontiguousarray(norm.forward(s.images), dtype=np.float32))
    x = resize(images, size).clamp(-1.0, 1.0)
    cond = None
    if s.masks is not None and mask_mode != "none":
        m = resize(torch.from_numpy(s.masks.astype(np.float32)).unsqueeze(1), size, nearest=True)
        channels = encode_masks(m[:, 0], mask_labels)
        if mask_mode == "joint":
            x = torch.cat([x, channels], dim=1)
        else:
            cond = channels
    labels = torch.from_numpy(s.labels).long() if (class_conditional and s.labels is not None) else None
    return TrainingTensors(x.contiguous(), labels, cond)
