"""How far a synthetic set is from the real one as a whole (MMD), and how varied it is (MS-SSIM diversity).

Both use MONAI's implementations, so the figures match what MONAI's generative tutorials report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import MMDMetric
from monai.metrics.regression import compute_ms_ssim

from engine.evaluation.metrics.radiomics import radiomic_features, standardise

# Wang et al.'s MS-SSIM weights, finest scale first.
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check_sets(real: np.ndarray, synth: np.ndarray) -> None:
    if len(real) < 2 or len(synth) < 2:
        raise ValueError(f"MMD needs at least 2 samples in each set; got {len(real)} and {len(synth)}")


def mmd_from_features(real_features: np.ndarray, synth_features: np.ndarray, max_samples: int = 1000,
                      n_random_features: int = 1024, seed: int = 0) -> float:
    """MMD² between two sets of `radiomic_features`, with a Gaussian kernel.

    Why radiomic features and not pixels: MONAI's MMD is the linear-kernel estimate, which on raw
    pixels only compares the two mean images — blind to blur or noise, and its size grows with the
    pixel count. On the real-set z-scored radiomic features (the same units as FRD) the figure is
    dimensionless and the same for 28² images and 128³ volumes.

    Why a Gaussian kernel: with the linear kernel MMD would only repeat FRD's mean term. MONAI's
    `y_mapping` maps both sets before its linear kernel, so mapping them through random Fourier
    features (Rahimi & Recht) turns it into an MMD with a Gaussian kernel, which sees every
    difference between the distributions, not only the means. The bandwidth is the median distance
    between real samples (the usual heuristic), so the yardstick depends on the real set only.
    The value lies in [0, 2]; 0 means indistinguishable.

    MONAI's estimate is unbiased and wants equally many samples in both sets, so both are sub-sampled
    to min(len(real), len(synth), max_samples) — which also bounds the cost, quadratic in that count.
    An unbiased MMD² falls slightly below zero for matching sets (exactly so for identical ones);
    that means "no difference seen at this sample size" and is reported as 0.
    """
    real_features, synth_features = np.asarray(real_features), np.asarray(synth_features)
    _check_sets(real_features, synth_features)
    rng = np.random.default_rng(seed)
    m = min(len(real_features), len(synth_features), max_samples)
    zr, zs = standardise(real_features, synth_features)
    zr = zr[np.sort(rng.choice(len(zr), m, replace=False))]
    zs = zs[np.sort(rng.choice(len(zs), m, replace=False))]

    norms = (zr * zr).sum(axis=1)
    sq = norms[:, None] + norms[None, :] - 2.0 * zr @ zr.T
    pair_dist = np.sqrt(np.maximum(sq[np.triu_indices(m, k=1)], 0.0))
    sigma = float(np.median(pair_dist))
    if sigma <= 1e-12:
        sigma = 1.0  # every real sample alike: fall back to the unit scale of z-scores
    w = torch.from_numpy(rng.normal(0.0, 1.0 / sigma, size=(zr.shape[1], n_random_features)))
    b = torch.from_numpy(rng.uniform(0.0, 2.0 * np.pi, size=n_random_features))
    scale = np.sqrt(2.0 / n_random_features)

    def fourier(x: torch.Tensor) -> torch.Tensor:
        return scale * torch.cos(x @ w + b)

    value = MMDMetric(y_mapping=fourier)(torch.from_numpy(zr), torch.from_numpy(zs))
    return max(float(value), 0.0)


def mmd(real: np.ndarray, synth: np.ndarray, max_samples: int = 1000, seed: int = 0) -> float:
    """Gaussian-kernel MMD² between two image (or volume) sets in [0, 1]; see `mmd_from_features`."""
    _check_sets(real, synth)
    rng = np.random.default_rng(seed)
    # Sub-sample before extracting features: features of images that would be dropped are wasted work.
    # The real set's z-scoring then uses the same subset, which is still its unbiased estimate.
    m = min(len(real), len(synth), max_samples)
    real = np.asarray(real)[np.sort(rng.choice(len(real), m, replace=False))]
    synth = np.asarray(synth)[np.sort(rng.choice(len(synth), m, replace=False))]
    return mmd_from_features(radiomic_features(real), radiomic_features(synth), max_samples, seed=seed)


def ms_ssim_settings(spatial_shape: Sequence[int]) -> tuple[int, float, tuple[float, ...]]:
    """(kernel size, Gaussian sigma, scale weights) that make MS-SSIM defined for this image size.

    The standard setting (11-pixel kernel, σ 1.5, five scales) needs sides of 176 pixels: each scale
    halves the image and the coarsest must still hold a kernel. Smaller images (28² MedMNIST, 32³
    phantoms) keep a 7-pixel kernel (σ 1.0) and drop the coarsest scales until it fits, with the
    remaining weights rescaled to sum to 1 so that identical images still score 1 exactly. Failing
    that, a 3-pixel kernel at one scale (plain SSIM) for tiny images.
    """
    side = int(min(spatial_shape))

    def fits(kernel: int, scales: int) -> bool:
        # MONAI's own precondition (it divides by (scales - 1)², not 2^(scales - 1)) ...
        if side // max(1, scales - 1) ** 2 <= kernel - 1:
            return False
        # ... and the actual size of the coarsest scale after halving.
        return side // 2 ** (scales - 1) >= kernel

    if fits(11, 5):
        return 11, 1.5, _MS_SSIM_WEIGHTS
    for kernel, sigma in ((7, 1.0), (3, 0.5)):
        for scales in range(5, 0, -1):
            if fits(kernel, scales):
                w = np.asarray(_MS_SSIM_WEIGHTS[:scales])
                return kernel, sigma, tuple(float(v) for v in w / w.sum())
    raise ValueError(f"images of spatial shape {tuple(spatial_shape)} are too small for MS-SSIM")


def ms_ssim_diversity(images: np.ndarray, pairs: int = 200, seed: int = 0, batch: int = 32) -> float:
    """Mean MS-SSIM over random pairs of distinct samples of one set: 1 = all alike, lower = more diverse.

    Compared between the synthetic and the real set it tells whether a model collapsed onto a few
    images (synthetic ≫ real) or produces noise (≪ real). Works on (N, C, H, W) images and
    (N, C, D, H, W) volumes in [0, 1] with data range 1.
    """
    x = np.asarray(images)
    if x.ndim not in (4, 5):
        raise ValueError(f"expected images (N, C, H, W) or volumes (N, C, D, H, W); got shape {x.shape}")
    n = len(x)
    if n < 2:
        raise ValueError("MS-SSIM diversity needs at least 2 samples")
    kernel, sigma, weights = ms_ssim_settings(x.shape[2:])
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, size=pairs)
    # An offset in 1..n-1 picks the partner uniformly among the other samples, never the same one.
    second = (first + rng.integers(1, n, size=pairs)) % n
    scores = []
    for start in range(0, pairs, batch):
        i, j = first[start:start + batch], second[start:start + batch]
        a = torch.from_numpy(np.clip(x[i].astype(np.float32), 0.0, 1.0))
        b = torch.from_numpy(np.clip(x[j].astype(np.float32), 0.0, 1.0))
        s = compute_ms_ssim(a, b, spatial_dims=x.ndim - 2, data_range=1.0, kernel_size=kernel,
                            kernel_sigma=sigma, weights=weights)
        scores.append(s.reshape(len(i), -1).mean(dim=1))
    return float(torch.cat(scores).mean())
