"""Whole 3D volumes for 3D training: NIfTI files, MSD / nnU-Net folders and DICOM series → size³ cubes.

Every case is turned to RAS, checked against its mask, resampled to one spacing shared by the
whole set and cropped or padded to size³ voxels around its foreground, so that a 3D model sees
every case at the same physical scale. Cases are read one at a time and only the size³ result is
kept: a set of full-resolution CTs does not fit in memory, its cubes do.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from engine.data.dataset import ImageSet, check_finite, validate
from engine.errors import InputError
from engine.io import partners
from engine.io.dicom import read_dicom_series
from engine.io.sources import Case, source_for
from engine.io.sources.common import looks_like_ct, machine_memory, size_text
from engine.io.sources.nifti import code_label_maps, label_values, read_array

log = logging.getLogger(__name__)

# Auto spacing leaves this much room around the largest foreground, so that a slightly
# misjudged body edge is not cut off.
FIT_MARGIN = 1.05
CT_BODY_HU = -500.0
# Non-CT body: above this fraction of the way from a low to a high percentile; MR background is
# near the low end, and the high percentile ignores a few very bright voxels.
BODY_FRACTION = 0.1
# Above this many voxels, the body and the modality are judged on a strided view: the answer is
# a bounding box, which a coarser grid gives to within the stride, at a fraction of the time.
JUDGE_VOXELS = 2_000_000
CT_AIR_HU = -1024.0
_RAS = np.array([[0, 1], [1, 1], [2, 1]], float)


@dataclass
class VolumeOptions:
    """How whole volumes become training cubes.

    size:    edge of the cube in voxels (the model's image_size).
    spacing: target voxel size in mm (x, y, z); None picks one isotropic spacing for the set,
             the finest at which every case's foreground fits the cube (never finer than the
             finest native spacing of the data).
    crop:    "foreground" centres each cube on the case's foreground, "center" on the volume.
    channel: which channel of a multi-channel MSD / nnU-Net case to read.
    """

    size: int
    spacing: tuple[float, float, float] | None = None
    crop: str = "foreground"
    channel: int = 0


@dataclass
class _Volume:
    image: np.ndarray  # float32 (X, Y, Z), RAS voxel order
    mask: np.ndarray | None  # uint8 (X, Y, Z) in the file's values, or None
    spacing: np.ndarray  # (3,) mm along X, Y, Z
    modality: str  # "CT", "MR" or "generic"
    values: tuple[int, ...] = ()  # the values the full-resolution mask holds


def read_volumes(path: str | Path, options: VolumeOptions) -> ImageSet:
    """Read a NIfTI file or folder, an MSD / nnU-Net folder, a DICOM series or a folder of series as
    size³ volumes: images float32 (N, 1, D, H, W), masks uint8 (N, D, H, W), axes (z, y, x) in RAS.

    Raises InputError naming the offending file; nothing is written anywhere.
    """
    path = Path(path)
    size = int(options.size)
    if size < 2:
        raise InputError(None, f"volume size {size} is too small; at least 2 voxels per axis are needed")
    if options.crop not in ("foreground", "center"):
        raise InputError(None, f"crop {options.crop!r} is not one of 'foreground', 'center'")
    # The source that claims the path (a NIfTI file or folder, an MSD / nnU-Net folder, DICOM) lists its cases.
    cases, label_names, allowed = source_for(path).volume_cases(path, options.channel)
    # The cubes are allocated before any case is read: a size no memory holds is said now, not as a MemoryError.
    need = len(cases) * size**3 * (5 if cases and cases[0].mask is not None else 4)
    if need > machine_memory():
        raise InputError(path, f"{len(cases)} volume(s) of {size}³ voxels need about {size_text(need)} of memory, "
                               f"more than this machine has ({size_text(machine_memory())}); choose a smaller size")
    boxes: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(cases)
    if options.spacing is not None:
        target = np.array([float(s) for s in options.spacing])
        if target.shape != (3,) or not np.all(target > 0):
            raise InputError(None, f"spacing {list(options.spacing)} must be three positive sizes in mm (x, y, z)")
    else:
        # Two passes: the spacing depends on every case's foreground, and holding every case at
        # full resolution until it is known would not fit in memory, so each case is read twice.
        target, boxes = _auto_spacing(cases, allowed, size)
    has_masks = cases[0].mask is not None
    images = np.empty((len(cases), 1, size, size, size), np.float32)
    masks = np.zeros((len(cases), size, size, size), np.uint8) if has_masks else None
    modalities = []
    # The labels are the values of the full-resolution files: a small label that resampling drops
    # from every cube still keeps its number, so the coding does not depend on the spacing.
    found: set[int] = set()
    for i, case in enumerate(cases):
        vol = _load(case, allowed)
        found.update(vol.values)
        if options.crop == "center":
            centre = (np.array(vol.image.shape) - 1) / 2.0
        else:
            lo, hi = boxes[i] or _foreground_box(vol)
            centre = (lo + hi) / 2.0
        image, mask = _sample(vol, centre, target, size)
        # Stored arrays are (D, H, W) = (z, y, x): the layout of every volume in the engine.
        images[i, 0] = image.transpose(2, 1, 0)
        if masks is not None and mask is not None:
            masks[i] = mask.transpose(2, 1, 0)
        modalities.append(vol.modality)
    modality, count = Counter(modalities).most_common(1)[0]
    if count < len(modalities):
        log.info("%s: cases differ in modality %s; the set is treated as %s", path, dict(Counter(modalities)),
                 modality)
    # Synthetic volumes have no patient position: the cube is centred on world (0, 0, 0), in RAS
    # with its axes along x, y, z (a source's obliquity is not kept).
    affine = np.diag([*target, 1.0])
    affine[:3, 3] = -(size - 1) / 2.0 * target
    coding: dict[int, int] = {}
    if masks is not None:
        masks, coding, label_names = code_label_maps(masks, path, label_names, found)
    return validate(ImageSet(images=images, masks=masks, label_names=label_names or {}, mask_coding=coding,
                             spacing=tuple(float(s) for s in target), affine=affine, modality=modality,
                             source=str(path)))


# ---------------------------------------------------------------- one case in RAS


def _load(case: Case, allowed: set[int] | None) -> _Volume:
    if case.dicom:
        v = read_dicom_series(case.image)
        image, affine = _to_ras(v.array, v.affine)
        modality = v.modality
    else:
        image, affine = read_array(case.image, "image", case.channel)
        image, affine = _to_ras(image, affine)
        modality = case.modality
    check_finite(case.image, image)
    if min(image.shape) < 2:
        raise InputError(case.image, f"is 2D or less (shape {image.shape}); a 3D volume needs 2 voxels or more along "
                                     "each axis")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(spacing > 0):
        raise InputError(case.image, f"has voxel size {tuple(spacing.tolist())} mm; every size must be positive")
    if modality not in ("CT", "MR", "generic"):
        modality = "CT" if looks_like_ct(_strided(image)) else "MR"
    mask, values = None, ()
    if case.mask is not None:
        raw, mask_affine = read_array(case.mask, "label map", None)
        # Checked in memory order: np.unique of a flipped or Fortran-ordered view first copies
        # it into C order, seconds for a full CT.
        order = "F" if raw.flags.f_contiguous and not raw.flags.c_contiguous else "C"
        flat = raw.ravel(order=order)
        values = tuple(label_values(case.mask, flat, allowed))
        labels = flat.astype(np.uint8).reshape(raw.shape, order=order)
        mask, mask_affine = _to_ras(labels, mask_affine)
        partners.check_geometry(case.image, image.shape, affine, case.mask, mask.shape, mask_affine)
    return _Volume(image, mask, spacing, modality, values)


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip / permute voxel axes to the closest RAS order (nibabel's as_closest_canonical, on arrays,
    so NIfTI and DICOM volumes take the same path)."""
    ornt = nib.orientations.io_orientation(affine)
    if np.array_equal(ornt, _RAS):
        return array, affine
    # A view (flips and axis swaps): copying a full CT into C order would cost seconds and buys nothing,
    # as only the cube's region is ever read from it.
    out = nib.orientations.apply_orientation(array, ornt)
    return out, affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)


# ---------------------------------------------------------------- foreground and spacing


def _stride(shape: tuple[int, ...]) -> int:
    return max(1, math.ceil((math.prod(shape) / JUDGE_VOXELS) ** (1 / 3)))


def _strided(image: np.ndarray) -> np.ndarray:
    s = _stride(image.shape)
    return image[::s, ::s, ::s]


def _foreground_box(vol: _Volume) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive voxel bounds (lo, hi) of mask > 0 united with the body: the largest connected
    region above the modality's threshold, so that noise, a table or a bright speck does not count."""
    s = _stride(vol.image.shape)
    small = vol.image[::s, ::s, ::s]
    if vol.modality == "CT":
        body = small > CT_BODY_HU
    else:
        low, high = np.percentile(small, (1, 99))
        body = small > low + BODY_FRACTION * (high - low) if high > low else np.zeros(small.shape, bool)
    los, his = [], []
    regions, n = ndimage.label(body)
    if n:
        largest = int(np.argmax(np.bincount(regions.ravel())[1:])) + 1
        box = ndimage.find_objects(regions, max_label=largest)[largest - 1]
        los.append([b.start * s for b in box])
        his.append([min(b.stop * s - 1, dim - 1) for b, dim in zip(box, vol.image.shape)])
    if vol.mask is not None and vol.mask.any():
        # At full resolution: a small lesion may fall between the strided voxels.
        along = [np.flatnonzero(vol.mask.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
        los.append([int(a[0]) for a in along])
        his.append([int(a[-1]) for a in along])
    if not los:  # nothing stands out: the whole volume is the foreground
        return np.zeros(3), np.array(vol.image.shape, float) - 1
    return np.min(los, axis=0).astype(float), np.max(his, axis=0).astype(float)


def _auto_spacing(cases: list[Case], allowed: set[int] | None, size: int,
                  ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray] | None]]:
    needed, finest = 0.0, math.inf
    boxes: list[tuple[np.ndarray, np.ndarray] | None] = []
    for case in cases:
        vol = _load(case, allowed)
        lo, hi = _foreground_box(vol)
        boxes.append((lo, hi))
        extent = (hi - lo + 1) * vol.spacing
        needed = max(needed, float(extent.max()) * FIT_MARGIN / size)
        finest = min(finest, float(vol.spacing.min()))
    # Rounded up to 1/10000 mm so the stored spacing reads cleanly and still fits.
    spacing = math.ceil(max(needed, finest) * 1e4) / 1e4
    return np.full(3, spacing), boxes


# ---------------------------------------------------------------- resampling into the cube


def _sample(vol: _Volume, centre: np.ndarray, target: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The size³ cube at `target` spacing centred on voxel position `centre`: image linear, mask
    nearest; what lies outside the volume is padded (image minimum, mask 0).

    Resampling and cropping are one step, so only the cube's voxels are ever interpolated, and the
    cube's grid is exactly `target` apart (a zoom by a whole output shape would not be).
    """
    shape = np.array(vol.image.shape)
    step = target / vol.spacing  # input voxels per output voxel
    start = centre - (size - 1) / 2.0 * step  # input position of output voxel 0
    stop = start + (size - 1) * step
    # Downsampling without smoothing aliases fine structure (noise, thin bone) into the cube.
    sigma = np.maximum((step - 1.0) / 2.0, 0.0)
    margin = np.ceil(3 * sigma).astype(int) + 2
    lo = np.clip(np.floor(start).astype(int) - margin, 0, shape - 1)
    hi = np.clip(np.ceil(stop).astype(int) + margin + 1, lo + 1, shape)
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    # Output voxels whose centre lies outside the volume's extent (voxel edges at -0.5 and N - 0.5)
    # are padding; inside, interpolation reads the nearest edge voxel rather than a pad value.
    axes = [start[k] + np.arange(size) * step[k] for k in range(3)]
    inside = [(a >= -0.5) & (a <= shape[k] - 0.5) for k, a in enumerate(axes)]
    outside = ~(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])
    sub = vol.image[region]
    if np.any(sigma > 0):
        sub = ndimage.gaussian_filter(sub, sigma, mode="nearest")
    image = ndimage.affine_transform(sub, step, offset=start - lo, output_shape=(size,) * 3, order=1,
                                     mode="nearest", output=np.float32)
    floor = float(vol.image.min())
    # CT outside the scanner's field of view is often stored as -2000 or -3024; air is the honest pad.
    image[outside] = max(floor, CT_AIR_HU) if vol.modality == "CT" else floor
    mask = None
    if vol.mask is not None:
        mask = ndimage.affine_transform(vol.mask[region], step, offset=start - lo, output_shape=(size,) * 3,
                                        order=0, mode="nearest")
        mask[outside] = 0
    return image, mask
