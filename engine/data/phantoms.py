"""Deterministic anatomy-like phantoms in 2D and 3D with known ground truth.

Each phantom is a body outline with soft texture, two inner "organs" of fixed
contrast, and 0-3 lesions of varied size, contrast and texture. The mask holds the
lesion labels (1 = hyperintense, 2 = hypointense) and the class is the lesion
count, so a classifier can learn it and tests can check whether a generator
reproduces both. Intensities are in arbitrary MR-like units (0-1000) so that the
normalisation and its inverse are exercised.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from engine.data.dataset import ImageSet

CLASS_NAMES = ["no lesion", "1 lesion", "2 lesions", "3 lesions"]
LABEL_NAMES = {0: "background", 1: "bright lesion", 2: "dark lesion"}
UNITS = 1000.0


def _grid(size: int, dims: int) -> list[np.ndarray]:
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    return list(np.meshgrid(*([axis] * dims), indexing="ij"))


def _ellipsoid(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    r = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    return r <= 1.0


def _texture(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / (noise.std() + 1e-6)


def phantom(seed: int, size: int = 32, dims: int = 2) -> tuple[np.ndarray, np.ndarray, int]:
    """One phantom: (image float32 of shape (size,)*dims, mask uint8, class index)."""
    rng = np.random.default_rng([seed, size, dims])
    grid = _grid(size, dims)
    shape = (size,) * dims
    image = np.zeros(shape, np.float32)

    body_r = rng.uniform(0.68, 0.88, dims)
    body_c = rng.uniform(-0.05, 0.05, dims)
    body = _ellipsoid(grid, body_c, body_r)
    image[body] = 0.45 + 0.04 * _texture(rng, shape, size / 10)[body]

    # Organs sit left and right of centre along the last axis, like kidneys or lungs.
    for side, level in ((-1, 0.25), (1, 0.7)):
        c = body_c.copy()
        c[-1] += side * body_r[-1] * 0.45
        r = body_r * rng.uniform(0.22, 0.3, dims)
        image[_ellipsoid(grid, c, r) & body] = level

    mask = np.zeros(shape, np.uint8)
    count = int(rng.integers(0, 4))
    placed: list[tuple[np.ndarray, float]] = []
    while len(placed) < count:
        radius = float(rng.uniform(0.08, 0.18))
        centre = body_c + rng.uniform(-0.55, 0.55, dims) * body_r
        # Lesions are kept apart so the count (the class) stays visible: radii grow by up to
        # 1.2x below, and the gap must stay more than a pixel at 32 px.
        if any(np.linalg.norm(centre - c) < 1.2 * (radius + r) + 0.1 for c, r in placed):
            continue
        placed.append((centre, radius))
        kind = int(rng.integers(1, 3))
        radii = radius * rng.uniform(0.8, 1.2, dims)
        region = _ellipsoid(grid, centre, radii) & body
        contrast = float(rng.uniform(0.2, 0.4))
        texture = 0.05 * _texture(rng, shape, 1.0)[region]
        base = image[region].mean() if region.any() else 0.45
        image[region] = base + (contrast if kind == 1 else -contrast) + texture
        mask[region] = kind

    gain = rng.uniform(0.9, 1.1)
    image = image * gain + rng.normal(0.0, rng.uniform(0.01, 0.03), shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0) * UNITS
    return image.astype(np.float32), mask, count


def make_phantoms(n: int, size: int = 32, dims: int = 2, seed: int = 0) -> ImageSet:
    """n phantoms as an ImageSet (images (N, 1, *spatial)); phantom i depends only on (seed + i)."""
    items = [phantom(seed + i, size, dims) for i in range(n)]
    images = np.stack([im for im, _, _ in items])[:, None]
    masks = np.stack([m for _, m, _ in items])
    labels = np.array([c for _, _, c in items], dtype=np.int64)
    return ImageSet(images=images, masks=masks, labels=labels, class_names=list(CLASS_NAMES),
                    label_names=dict(LABEL_NAMES), spacing=(1.0,) * dims, modality="MR",
                    source=f"phantoms(n={n}, size={size}, dims={dims}, seed={seed})")
