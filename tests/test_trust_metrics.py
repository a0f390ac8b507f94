"""Known answers for the distances that need no downloaded weights, diversity and memorization."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.evaluation.metrics.diversity import mmd, ms_ssim_diversity, ms_ssim_settings
from engine.evaluation.metrics.memorization import (
    HIST_EDGES,
    memorization_distance,
    memorization_summary,
    mifid,
    nearest_training,
)
from engine.evaluation.metrics.radiomics import feature_names, frd, radiomic_features


def smooth_images(n: int, shape: tuple[int, ...], seed: int, sigma: float = 2.0) -> np.ndarray:
    """Random smooth fields in [0.2, 0.8]: structured like tissue, each one different."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, *shape))
    x = ndimage.gaussian_filter(noise, sigma=(0,) + (sigma,) * len(shape))
    x = x / (np.abs(x).max(axis=tuple(range(1, x.ndim)), keepdims=True) + 1e-12)
    return (0.5 + 0.3 * x)[:, None].astype(np.float32)


def checkerboard(shape: tuple[int, ...]) -> np.ndarray:
    return (np.indices(shape).sum(axis=0) % 2).astype(np.float32)[None, None]


# --- radiomic features and FRD -----------------------------------------------------------------

def test_feature_vector_matches_names_in_2d_and_3d():
    names = feature_names()
    assert len(names) == len(set(names))
    for x in (smooth_images(4, (28, 28), 0), smooth_images(3, (16, 16, 16), 0)):
        f = radiomic_features(x)
        assert f.shape == (len(x), len(names))
        assert np.isfinite(f).all()
    # A flat image has no texture, yet every feature stays finite.
    assert np.isfinite(radiomic_features(np.full((2, 1, 8, 8), 0.3, np.float32))).all()


def test_glcm_of_a_pixel_checkerboard_has_the_hand_computed_values():
    # Levels 0 and 31 (32 levels over [0, 1]). At distance 1 horizontal and vertical neighbours always
    # differ by 31 (contrast 961, homogeneity 1/962, correlation -1) and diagonal ones never do
    # (contrast 0, homogeneity 1, correlation 1); the four directions average to half of each.
    # At distance 2 every neighbour has the same value.
    f = dict(zip(feature_names(), radiomic_features(checkerboard((8, 8)))[0]))
    assert f["glcm_contrast_d1"] == pytest.approx(961 / 2)
    assert f["glcm_dissimilarity_d1"] == pytest.approx(31 / 2)
    assert f["glcm_homogeneity_d1"] == pytest.approx((1 / 962 + 1) / 2)
    assert f["glcm_correlation_d1"] == pytest.approx(0.0, abs=1e-12)
    assert f["glcm_contrast_d2"] == pytest.approx(0.0)
    assert f["glcm_homogeneity_d2"] == pytest.approx(1.0)
    assert f["glcm_asm_d2"] == pytest.approx(0.5, abs=1e-3)  # two levels, half the pairs each
    assert (f["mean"], f["std"], f["entropy"], f["uniformity"]) == pytest.approx((0.5, 0.5, 1.0, 0.5))
    # In 3D, 7 of the 13 directions (3 axes, 4 body diagonals) join voxels of opposite value.
    f3 = dict(zip(feature_names(), radiomic_features(checkerboard((6, 6, 6)))[0]))
    assert f3["glcm_contrast_d1"] == pytest.approx(961 * 7 / 13)


def test_frd_is_zero_for_identical_sets_and_grows_with_brightness_shift_and_blur():
    real = smooth_images(150, (32, 32), seed=1)
    other = smooth_images(150, (32, 32), seed=2)  # same distribution, other samples
    assert frd(real, real) == pytest.approx(0.0, abs=1e-6)
    base = frd(real, other)
    shifted = [frd(real, np.clip(other + s, 0, 1)) for s in (0.05, 0.1, 0.2)]
    assert base < shifted[0] < shifted[1] < shifted[2]
    assert shifted[1] > 5 * base
    blurred = ndimage.gaussian_filter(other, sigma=(0, 0, 1.5, 1.5))
    assert frd(real, blurred) > 5 * base


def test_frd_on_volumes():
    real = smooth_images(40, (16, 16, 16), seed=3)
    assert frd(real, real) == pytest.approx(0.0, abs=1e-6)
    assert frd(real, np.clip(real + 0.15, 0, 1)) > 1.0


# --- MMD and MS-SSIM diversity -----------------------------------------------------------------

def test_mmd_is_zero_for_identical_sets_and_larger_when_shifted():
    real = smooth_images(120, (32, 32), seed=4)
    other = smooth_images(120, (32, 32), seed=5)
    assert mmd(real, real) == 0.0
    same_kind = mmd(real, other)
    shifted = mmd(real, np.clip(other + 0.1, 0, 1))
    assert same_kind < 0.05
    assert shifted > 0.2
    assert shifted > 10 * same_kind


def test_ms_ssim_settings_follow_the_image_size():
    assert ms_ssim_settings((256, 256)) == (11, 1.5, (0.0448, 0.2856, 0.3001, 0.2363, 0.1333))
    kernel, _, weights = ms_ssim_settings((28, 28))
    assert kernel == 7 and len(weights) == 3 and sum(weights) == pytest.approx(1.0)
    assert len(ms_ssim_settings((64, 64))[2]) == 4


@pytest.mark.parametrize("shape", [(28, 28), (32, 32), (32, 32, 32)])
def test_ms_ssim_diversity_of_copies_is_one_and_of_noise_is_low(shape):
    pairs = 8 if len(shape) == 3 else 40
    one = smooth_images(1, shape, seed=6)
    assert ms_ssim_diversity(np.repeat(one, 6, axis=0), pairs=pairs) == pytest.approx(1.0, abs=1e-5)
    noise = np.random.default_rng(7).random((10, 1, *shape), dtype=np.float32)
    assert ms_ssim_diversity(noise, pairs=pairs) < 0.2


def test_ms_ssim_diversity_needs_two_samples():
    with pytest.raises(ValueError):
        ms_ssim_diversity(smooth_images(1, (32, 32), seed=0))


# --- memorization ------------------------------------------------------------------------------

def test_nearest_training_finds_planted_copies_and_the_summary_counts_them():
    train = smooth_images(300, (32, 32), seed=8)
    synth = smooth_images(60, (32, 32), seed=9)  # unrelated to the training set
    planted = {3: 17, 20: 250, 41: 0}
    for s, t in planted.items():
        synth[s] = train[t]
    noisy = {50: 123}  # a copy with a little noise and a brightness change is still a copy
    synth[50] = np.clip(train[123] * 0.9 + 0.05 + np.random.default_rng(1).normal(0, 0.01, train[123].shape), 0, 1)
    # A batch smaller than both sets exercises the chunked search.
    idx, corr = nearest_training(synth, train, batch=64)
    for s, t in {**planted, **noisy}.items():
        assert idx[s] == t
        assert corr[s] > 0.99
    for s in planted:
        assert corr[s] == pytest.approx(1.0, abs=1e-5)
    others = np.setdiff1d(np.arange(len(synth)), list(planted) + list(noisy))
    assert corr[others].max() < 0.8
    summary = memorization_summary(corr, threshold=0.95)
    assert summary["n_above"] == 4
    assert summary["share_above"] == pytest.approx(4 / 60)
    assert summary["max"] == pytest.approx(1.0, abs=1e-5)
    assert summary["median"] < 0.8
    assert sum(summary["hist_counts"]) == 60
    assert summary["hist_edges"] == [float(e) for e in HIST_EDGES]


def test_nearest_training_on_volumes_downsamples_and_still_finds_copies():
    train = smooth_images(12, (40, 40, 40), seed=10)
    synth = smooth_images(3, (40, 40, 40), seed=11)
    synth[1] = train[7]
    idx, corr = nearest_training(synth, train)
    assert idx[1] == 7 and corr[1] > 0.99
    assert np.delete(corr, 1).max() < 0.8


def test_mifid_equals_fid_without_memorization_and_exceeds_it_with():
    rng = np.random.default_rng(12)
    train = rng.standard_normal((200, 64))
    unrelated = rng.standard_normal((100, 64))
    assert memorization_distance(unrelated, train) > 0.1
    assert mifid(12.5, unrelated, train) == pytest.approx(12.5)
    copies = train[:100] + rng.normal(0, 1e-3, (100, 64))
    assert mifid(12.5, copies, train) > 100 * 12.5
    # Known answer: every generated vector has |cos| = 0.96 with its nearest training vector, so
    # d = 0.04 < tau and MiFID = FID / 0.04.
    basis = np.eye(8)
    theta = np.arccos(0.96)
    gen = np.cos(theta) * basis[:4] + np.sin(theta) * basis[4:]
    assert memorization_distance(gen, basis) == pytest.approx(0.04, abs=1e-6)
    assert mifid(3.0, gen, basis) == pytest.approx(3.0 / 0.04, rel=1e-5)
    assert mifid(3.0, gen, basis, tau=0.01) == pytest.approx(3.0)
