"""Radiomic features of images and volumes, and the Fréchet Radiomics Distance (FRD) built on them.

FRD (Konz, Osuala et al.) compares two image sets through a fixed vector of hand-made radiomic
features instead of an ImageNet network's activations: nothing is downloaded, every feature has a
name a radiologist recognises, and the same features apply to 2D images and 3D volumes.

The feature set is a compact subset of the IBSI / PyRadiomics families, computed here with numpy:

* first order: intensity statistics of all pixels, plus the entropy and uniformity of a fixed
  32-bin histogram over [0, 1];
* gradient: statistics of the gradient magnitude (edge strength);
* texture: grey-level co-occurrence matrix (GLCM) features at distances 1 and 2, each averaged over
  the 4 (2D) or 13 (3D) unique directions, as PyRadiomics does, so the vector has the same length
  and meaning in 2D and 3D.

Intensities are taken as given in [0, 1] (values outside are clipped): a fixed quantisation over a
fixed range is what lets a darker synthetic set show up as darker instead of being re-stretched away.
Multi-channel images are averaged to one grey channel first, as FRD does.
"""

from __future__ import annotations

import itertools

import numpy as np

from engine.evaluation.metrics.frechet import frechet_from_features

LEVELS = 32  # grey levels of the GLCM and bins of the histogram
DISTANCES = (1, 2)  # GLCM offsets in pixels: fine texture and one coarser scale

_FIRST_ORDER = ("mean", "std", "skewness", "kurtosis", "p10", "p25", "p50", "p75", "p90", "iqr",
                "min", "max", "range", "mad", "energy", "entropy", "uniformity")
_GRADIENT = ("grad_mean", "grad_std", "grad_p90")
_GLCM = ("contrast", "dissimilarity", "homogeneity", "asm", "correlation", "entropy")

# Pixels handled per chunk: bounds the memory of the index arrays whatever N and the image size.
_CHUNK_PIXELS = 1 << 22


def feature_names() -> list[str]:
    """Names of the columns of `radiomic_features`, in order."""
    glcm = [f"glcm_{name}_d{d}" for d in DISTANCES for name in _GLCM]
    return list(_FIRST_ORDER) + list(_GRADIENT) + glcm


def _grey(images: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) in [0, 1] → (N, *spatial) float32, channels averaged, clipped to [0, 1]."""
    x = np.asarray(images)
    if x.ndim not in (4, 5):
        raise ValueError(f"expected images (N, C, H, W) or volumes (N, C, D, H, W); got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("no images given")
    x = x.astype(np.float32, copy=False).mean(axis=1)
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values")
    return np.clip(x, 0.0, 1.0)


def _directions(spatial_dims: int) -> list[tuple[int, ...]]:
    """The unique unit offsets: one of each ± pair (first non-zero component positive).

    A symmetric GLCM counts both (i, j) and (j, i), so the offset and its negative give the same
    matrix; 2D has 4 such directions, 3D 13.
    """
    dirs = []
    for off in itertools.product((-1, 0, 1), repeat=spatial_dims):
        nonzero = [o for o in off if o != 0]
        if nonzero and nonzero[0] > 0:
            dirs.append(off)
    return dirs


def _pair_slices(offset: tuple[int, ...], shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices selecting every pixel and its neighbour at `offset` that both lie inside the image."""
    src, dst = [], []
    for s, n in zip(offset, shape):
        if s >= 0:
            src.append(slice(0, n - s))
            dst.append(slice(s, n))
        else:
            src.append(slice(-s, n))
            dst.append(slice(0, n + s))
    return (slice(None), *src), (slice(None), *dst)


def _glcm_features(p: np.ndarray) -> np.ndarray:
    """(n, L, L) normalised symmetric GLCMs → (n, 6) features in the order of _GLCM."""
    lv = np.arange(p.shape[-1], dtype=np.float64)
    i, j = lv[:, None], lv[None, :]
    diff2 = (i - j) ** 2
    contrast = (p * diff2).sum(axis=(1, 2))
    dissimilarity = (p * np.abs(i - j)).sum(axis=(1, 2))
    homogeneity = (p / (1.0 + diff2)).sum(axis=(1, 2))
    asm = (p * p).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=(1, 2))
    # The matrix is symmetric, so row and column marginals share one mean and variance.
    mu = (p * i).sum(axis=(1, 2))
    var = (p * (i - mu[:, None, None]) ** 2).sum(axis=(1, 2))
    cov = (p * (i - mu[:, None, None]) * (j - mu[:, None, None])).sum(axis=(1, 2))
    # A single grey level has no variance; scikit-image calls such a texture perfectly correlated,
    # and a fixed value keeps the feature finite for flat images (empty background patches).
    safe = var > 1e-12
    correlation = np.where(safe, cov / np.where(safe, var, 1.0), 1.0)
    return np.stack([contrast, dissimilarity, homogeneity, asm, correlation, entropy], axis=1)


def _texture(q: np.ndarray) -> np.ndarray:
    """(n, *spatial) int64 grey levels → (n, len(DISTANCES) * len(_GLCM)) direction-averaged GLCM features."""
    n, shape = q.shape[0], q.shape[1:]
    # One bincount per offset over (image, level a, level b) triples: a single pass over the pixels
    # builds every image's co-occurrence matrix at once.
    base = (np.arange(n, dtype=np.int64) * (LEVELS * LEVELS)).reshape((n,) + (1,) * len(shape))
    out = []
    for d in DISTANCES:
        per_dir = []
        for unit in _directions(len(shape)):
            offset = tuple(d * u for u in unit)
            if any(abs(o) >= s for o, s in zip(offset, shape)):
                continue  # no pixel pair fits inside an image this small
            src, dst = _pair_slices(offset, shape)
            idx = base + q[src] * LEVELS + q[dst]
            counts = np.bincount(idx.ravel(), minlength=n * LEVELS * LEVELS).reshape(n, LEVELS, LEVELS)
            counts = counts + counts.transpose(0, 2, 1)
            p = counts / counts.sum(axis=(1, 2), keepdims=True)
            per_dir.append(_glcm_features(p))
        if per_dir:
            out.append(np.mean(per_dir, axis=0))
        else:
            out.append(np.zeros((n, len(_GLCM))))
    return np.concatenate(out, axis=1)


def _first_order(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(n, P) intensities and their (n, P) grey levels → (n, len(_FIRST_ORDER)) features."""
    x = x.astype(np.float64)
    mean = x.mean(axis=1)
    dev = x - mean[:, None]
    dev2 = dev * dev  # products, not **3 / **4: numpy's general power is several times slower
    var = dev2.mean(axis=1)
    std = np.sqrt(var)
    flat = std < 1e-12
    safe_std = np.where(flat, 1.0, std)
    # Skewness and excess kurtosis are undefined for a flat image; 0 is the value of a symmetric,
    # Gaussian-like shape and keeps the feature finite.
    skew = np.where(flat, 0.0, (dev2 * dev).mean(axis=1) / safe_std**3)
    kurt = np.where(flat, 0.0, (dev2 * dev2).mean(axis=1) / safe_std**4 - 3.0)
    p10, p25, p50, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90], axis=1)
    lo, hi = x.min(axis=1), x.max(axis=1)
    mad = np.abs(dev).mean(axis=1)
    energy = (x * x).mean(axis=1)  # mean, not sum, so the value does not depend on the image size
    n = x.shape[0]
    hist = np.bincount((levels + np.arange(n)[:, None] * LEVELS).ravel(), minlength=n * LEVELS).reshape(n, LEVELS)
    h = hist / x.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(h > 0, h * np.log2(h), 0.0).sum(axis=1)
    uniformity = (h * h).sum(axis=1)
    return np.stack([mean, std, skew, kurt, p10, p25, p50, p75, p90, p75 - p25,
                     lo, hi, hi - lo, mad, energy, entropy, uniformity], axis=1)


def _gradient(g: np.ndarray) -> np.ndarray:
    """(n, *spatial) → gradient-magnitude mean, std and 90th percentile, in intensity per pixel.

    Forward differences rather than central ones: a central difference skips the pixel itself and
    is blind to pixel-scale alternation (checkerboard noise, a typical sampling artefact).
    """
    core = (slice(None),) + tuple(slice(0, s - 1) for s in g.shape[1:])
    sq = np.zeros(g[core].shape, dtype=np.float64)
    for ax in range(1, g.ndim):
        sq += np.diff(g, axis=ax)[core].astype(np.float64) ** 2
    mag = np.sqrt(sq).reshape(g.shape[0], -1)
    return np.stack([mag.mean(axis=1), mag.std(axis=1), np.percentile(mag, 90, axis=1)], axis=1)


def radiomic_features(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images or (N, C, D, H, W) volumes in [0, 1] → (N, F) float64 features.

    Columns are named by `feature_names()`.
    """
    g = _grey(images)
    n, per = g.shape[0], int(np.prod(g.shape[1:]))
    if min(g.shape[1:]) < 2:
        raise ValueError(f"images are too small for texture features: spatial shape {g.shape[1:]}")
    step = max(1, _CHUNK_PIXELS // per)
    rows = []
    for start in range(0, n, step):
        chunk = g[start:start + step]
        # Inputs are clipped to [0, 1], so only the value 1.0 itself needs folding into the top level.
        q = np.minimum((chunk * LEVELS).astype(np.int64), LEVELS - 1)
        rows.append(np.concatenate([_first_order(chunk.reshape(len(chunk), -1), q.reshape(len(chunk), -1)),
                                    _gradient(chunk), _texture(q)], axis=1))
    return np.concatenate(rows, axis=0)


# Features whose values spread over orders of magnitude between smooth and noisy images. On a
# linear scale one noisy outlier would dominate the covariance; logs make a doubling of contrast
# count the same at any level. (contrast, dissimilarity ≥ 0 → log1p; ASM ≥ 1/LEVELS² > 0 → log.)
_LOG1P = ("glcm_contrast", "glcm_dissimilarity")
_LOG = ("glcm_asm",)


def _transform(features: np.ndarray) -> np.ndarray:
    f = np.array(features, dtype=np.float64)
    names = feature_names()
    if f.ndim != 2 or f.shape[1] != len(names):
        raise ValueError(f"expected (N, {len(names)}) radiomic features; got shape {f.shape}")
    for k, name in enumerate(names):
        if name.startswith(_LOG1P):
            f[:, k] = np.log1p(np.maximum(f[:, k], 0.0))
        elif name.startswith(_LOG):
            f[:, k] = np.log(np.maximum(f[:, k], 1e-12))
    return f


def standardise(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Log-transform the heavy-tailed features, then z-score every set by the reference set's statistics.

    The features live on unrelated scales (GLCM contrast in hundreds of level², homogeneity below 1);
    a Fréchet distance sums squared differences, so unscaled it would measure contrast alone. The
    reference (real) set's mean and std — not pooled ones — fix the yardstick: every synthetic set
    is measured in the same units, so distances of several models against one real set compare.
    A feature constant in the reference set keeps its raw scale (std taken as 1) rather than
    dividing by zero.
    """
    ref = _transform(reference)
    mu = ref.mean(axis=0)
    sd = ref.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return [(ref - mu) / sd] + [(_transform(o) - mu) / sd for o in others]


def frd_from_features(real_features: np.ndarray, synth_features: np.ndarray) -> float:
    """FRD between two sets of `radiomic_features` (lets a caller compute the real set's features once)."""
    zr, zs = standardise(real_features, synth_features)
    return frechet_from_features(zr, zs)


def frd(real: np.ndarray, synth: np.ndarray) -> float:
    """Fréchet Radiomics Distance between two image (or volume) sets in [0, 1]; 0 for matching sets."""
    return frd_from_features(radiomic_features(real), radiomic_features(synth))
