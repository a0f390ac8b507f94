"""Distances between two sets of feature vectors: the Fréchet distance (FID, FRD) and KID.

Both work on any features — Inception activations, radiomic features, a 3D network's
embeddings — so every distance in the report shares one tested implementation.
"""

from __future__ import annotations

import numpy as np


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as pytorch-fid computes them) of (N, D) features."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, D), got {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d² = |mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½) between two Gaussians.

    Tr((S1 S2)^½) is the sum of the square roots of the eigenvalues of S1 S2, which are real
    and non-negative for covariance matrices; taking them directly avoids the complex parts
    and the singular-matrix retries a matrix square root needs when N < D.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    eig = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = float(np.sqrt(np.clip(eig.real, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt, 0.0))


def frechet_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*gaussian(a), *gaussian(b))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, mean and std over
    random subsets (Bińkowski et al.). Unlike FID it has no bias from the sample count."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        kxx = (xs @ xs.T / d + 1.0) ** 3
        kyy = (ys @ ys.T / d + 1.0) ** 3
        kxy = (xs @ ys.T / d + 1.0) ** 3
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                      - 2.0 * kxy.mean())
    v = np.asarray(values)
    return float(v.mean()), float(v.std())
