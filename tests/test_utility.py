"""Downstream utility: Dice/IoU on known answers, and trainings that tell good synthetic data from bad."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.data.phantoms import UNITS, make_phantoms
from engine.evaluation.metrics import utility as U
from engine.evaluation.metrics.classifier import classify, train_classifier
from engine.evaluation.metrics.dice import dice_iou
from engine.evaluation.metrics.segmenter import segment, train_segmenter
from engine.jobs import Cancelled
from tests.conftest import StopAfter


def _square(size: int, top: int, left: int, side: int, label: int = 1, dims: int = 2) -> np.ndarray:
    m = np.zeros((size,) * dims, np.uint8)
    m[tuple(slice(o, o + side) for o in ((top,) * (dims - 2) + (top, left)))] = label
    return m


def _pairs(s) -> tuple[np.ndarray, np.ndarray]:
    return s.images / UNITS, s.masks


@pytest.fixture(scope="module")
def phantoms32():
    """Train, held-out test and an independent 'perfect generator' draw, disjoint by seed."""
    return make_phantoms(200, 32, seed=0), make_phantoms(100, 32, seed=10_000), make_phantoms(200, 32, seed=20_000)


# --------------------------------------------------------------------------- Dice / IoU

def test_dice_iou_of_known_overlap_is_exact():
    # Two 4x4 squares offset by one pixel each way share a 3x3 block.
    a, b = _square(12, 2, 2, 4), _square(12, 3, 3, 4)
    r = dice_iou(a[None], b[None], 2)
    assert r["dice"] == pytest.approx(2 * 9 / (16 + 16), abs=1e-6)
    assert r["iou"] == pytest.approx(9 / (16 + 16 - 9), abs=1e-6)
    assert r["dice_per_label"] == {1: r["dice"]} and r["cases_per_label"] == {1: 1}


def test_dice_iou_known_overlap_in_3d():
    a, b = _square(10, 1, 1, 4, dims=3), _square(10, 2, 2, 4, dims=3)  # cubes sharing 3x3x3
    r = dice_iou(a[None], b[None], 2)
    assert r["dice"] == pytest.approx(2 * 27 / 128, abs=1e-6)
    assert r["iou"] == pytest.approx(27 / (128 - 27), abs=1e-6)


def test_identical_masks_score_one_and_disjoint_zero():
    a = _square(12, 2, 2, 4)
    same = dice_iou(a[None], a[None], 2)
    assert same["dice"] == pytest.approx(1.0) and same["iou"] == pytest.approx(1.0)
    apart = dice_iou(a[None], _square(12, 7, 7, 4)[None], 2)
    assert apart["dice"] == 0.0 and apart["iou"] == 0.0


def test_multi_label_mean_averages_labels_and_skips_empty_truth():
    # Case 0: label 1 perfect, label 2 a known overlap. Case 1: no label 2 in truth, a false label 2 predicted.
    truth0 = _square(12, 0, 0, 4, 1) + _square(12, 6, 6, 4, 2)
    pred0 = _square(12, 0, 0, 4, 1) + _square(12, 7, 7, 4, 2)
    truth1 = _square(12, 1, 1, 4, 1)
    pred1 = truth1 + _square(12, 7, 7, 3, 2)
    truth, pred = np.stack([truth0, truth1]), np.stack([pred0, pred1])
    d2 = 2 * 9 / 32
    r = dice_iou(pred, truth, 3)
    assert r["dice_per_label"][1] == pytest.approx(1.0)
    assert r["dice_per_label"][2] == pytest.approx(d2)  # case 1 has no label 2 in truth: left out
    assert r["cases_per_label"] == {1: 2, 2: 1}
    assert r["dice"] == pytest.approx((1.0 + d2) / 2)
    assert r["iou"] == pytest.approx((1.0 + 9 / 23) / 2)
    # Counting empty truths: the false positive scores 0 for label 2 in case 1.
    strict = dice_iou(pred, truth, 3, ignore_empty=False)
    assert strict["dice_per_label"][2] == pytest.approx(d2 / 2)
    assert strict["cases_per_label"] == {1: 2, 2: 2}


def test_empty_versus_empty_convention():
    empty = np.zeros((1, 8, 8), np.uint8)
    r = dice_iou(empty, empty, 3)
    assert math.isnan(r["dice"]) and math.isnan(r["dice_per_label"][1]) and r["cases_per_label"] == {1: 0, 2: 0}
    strict = dice_iou(empty, empty, 3, ignore_empty=False)
    assert strict["dice"] == 1.0 and strict["iou"] == 1.0
    # A label absent from every truth is NaN and does not drag the mean.
    a = _square(8, 1, 1, 3)
    r = dice_iou(a[None], a[None], 3)
    assert math.isnan(r["dice_per_label"][2]) and r["dice"] == pytest.approx(1.0)


def test_dice_iou_rejects_bad_input():
    a = _square(8, 1, 1, 3, label=2)[None]
    with pytest.raises(ValueError, match="outside"):
        dice_iou(a, a, 2)
    with pytest.raises(ValueError, match="shape"):
        dice_iou(a, a[:, :4], 3)


# --------------------------------------------------------------------------- segmentation

def test_segmenter_learns_phantom_lesions(phantoms32):
    train, test, _ = phantoms32
    x, y = _pairs(train)
    untrained = train_segmenter(x, y, 3, steps=0)
    trained = train_segmenter(x, y, 3, steps=200)
    before = dice_iou(segment(untrained, test.images / UNITS), test.masks, 3)["dice"]
    after = dice_iou(segment(trained, test.images / UNITS), test.masks, 3)["dice"]
    assert after > 0.5 and after > before + 0.3, (before, after)


def test_training_is_deterministic_and_leaves_global_rng_alone(phantoms32):
    x, y = _pairs(phantoms32[0])
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = train_segmenter(x[:32], y[:32], 3, steps=3, batch=8, seed=5)
    b = train_segmenter(x[:32], y[:32], 3, steps=3, batch=8, seed=5)
    assert torch.rand(1) == expected
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_segmentation_utility_tells_good_synthetic_data_from_bad(phantoms32):
    train, test, draw = phantoms32
    seen: list[tuple[int, int]] = []
    good = U.segmentation_utility(_pairs(train), _pairs(test), _pairs(draw), steps=150,
                                  progress=lambda d, t: seen.append((d, t)))
    # Mismatched pairs: the same images, each with another sample's mask.
    shuffled = (draw.images / UNITS, draw.masks[np.random.default_rng(0).permutation(len(draw.masks))])
    bad = U.segmentation_utility(_pairs(train), _pairs(test), shuffled, steps=150)
    assert good["real"]["dice"] > 0.4
    assert 0.8 <= good["ratio_synth_real"] <= 1.25, good["ratio_synth_real"]
    assert good["ratio_both_real"] > 0.8
    assert bad["ratio_synth_real"] < 0.5, bad["ratio_synth_real"]
    assert bad["real"] == good["real"]  # same seed, same data: the real-only run is reproducible
    assert seen[0] == (1, 450) and seen[-1] == (450, 450) and len(seen) == 450
    assert set(good) >= {"real", "synth", "both", "ratio_synth_real", "ratio_both_real", "n"}
    assert good["n"] == {"real": 200, "synth": 200, "both": 400}


def test_cancel_raises_with_steps_done(phantoms32):
    x, y = _pairs(phantoms32[0])
    with pytest.raises(Cancelled, match="after 4 of 10"):
        U.segmentation_utility((x[:16], y[:16]), (x[16:24], y[16:24]), (x[:16], y[:16]), steps=10, batch=4,
                               requests=StopAfter(4))


def test_segmenter_handles_sizes_the_strides_do_not_divide():
    s = make_phantoms(8, 30, seed=3)
    model = train_segmenter(s.images / UNITS, s.masks, 3, steps=2, batch=4)
    pred = segment(model, s.images / UNITS)
    assert pred.shape == (8, 30, 30) and pred.dtype == np.uint8


def test_3d_segmenter_and_classifier_train_and_predict():
    s = make_phantoms(6, 16, dims=3, seed=0)
    x = s.images / UNITS
    model = train_segmenter(x, s.masks, 3, steps=3, batch=2, spatial_dims=3)
    with torch.no_grad():
        logits = model(torch.as_tensor(x[:2], dtype=torch.float32))
    assert logits.shape == (2, 3, 16, 16, 16) and torch.isfinite(logits).all()
    pred = segment(model, x)
    assert pred.shape == (6, 16, 16, 16) and pred.dtype == np.uint8 and pred.max() < 3
    clf = train_classifier(x, s.labels, 4, steps=3, batch=2)
    assert classify(clf, x).shape == (6,)
    with pytest.raises(ValueError, match="spatial_dims"):
        train_segmenter(x, s.masks, 3, steps=1, spatial_dims=2)


# --------------------------------------------------------------------------- classification

def test_class_fidelity_high_on_independent_draw_low_on_shuffled_labels():
    real = make_phantoms(400, 32, seed=0)
    draw = make_phantoms(200, 32, seed=30_000)
    shuffled = draw.labels[np.random.default_rng(1).permutation(len(draw.labels))]
    good = U.class_fidelity(real.images / UNITS, real.labels, draw.images / UNITS, draw.labels, 4)
    bad = U.class_fidelity(real.images / UNITS, real.labels, draw.images / UNITS, shuffled, 4)
    assert good["real_accuracy"] > 0.5  # the ceiling; chance is 0.25
    # A perfect generator scores about the ceiling (an independent draw may beat a 100-sample hold-out).
    assert good["accuracy"] > 0.5 and good["accuracy"] > good["real_accuracy"] - 0.15, good
    assert bad["accuracy"] < 0.4 and bad["accuracy"] < good["accuracy"] - 0.2, bad
    assert len(good["per_class"]) == 4 and good["n_real_train"] == 300 and good["n_real_test"] == 100


def test_classification_utility_reports_each_training(phantoms32):
    train, test, draw = phantoms32
    shuffled = draw.labels[np.random.default_rng(2).permutation(len(draw.labels))]
    r = U.classification_utility((train.images / UNITS, train.labels), (test.images / UNITS, test.labels),
                                 (draw.images / UNITS, shuffled), steps=100)
    assert r["num_classes"] == 4
    assert {"real", "synth", "both"} <= set(r) and len(r["real"]["per_class"]) == 4
    assert r["real"]["accuracy"] > 0.4
    assert r["ratio_synth_real"] < 0.8, r
    assert r["ratio_synth_real"] == pytest.approx(r["synth"]["accuracy"] / r["real"]["accuracy"])
