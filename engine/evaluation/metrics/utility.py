"""Downstream utility: does the synthetic data help a segmentation model or a classifier?

The question every synthetic-data paper ends on is answered by training the same small
network three times with the same budget — on real data, on synthetic data, and on both —
and scoring each on held-out *real* data. A ratio synth/real near 1 says the synthetic
set carries what the real one does; well below 1 says it does not, whatever FID says.

Every arm is trained by `segmenter` or `classifier` through the one loop of `training_loop`, and
scored with `dice` (segmentation) or accuracy (classification). Conventions (the project's):
images float32 (N, C, *spatial) scaled to [0, 1] by the caller, masks uint8 label maps
(N, *spatial) with 0 = background, class labels int64 (N,).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.evaluation.metrics.classifier import CLS_STEPS, SmallCNN, accuracy, classify, train_classifier
from engine.evaluation.metrics.dice import dice_iou
from engine.evaluation.metrics.segmenter import SEG_STEPS, build_segmenter, segment, train_segmenter
from engine.evaluation.metrics.training_loop import BATCH, Progress, seeded
from engine.jobs import Requests

Pair = tuple[np.ndarray, np.ndarray]
# What a network that learned nothing is measured against, in words (`segmenter_floor`, `classifier_floor`).
SEGMENTER_FLOOR = "the better of marking every pixel and an untrained segmenter"
CLASSIFIER_FLOOR = "the better of always answering the commonest class and an untrained classifier"


def _num_classes(*label_sets: np.ndarray) -> int:
    top = max((int(np.max(s)) for s in label_sets if len(s)), default=0)
    return max(top + 1, 2)


def segmentation_floor(truth: np.ndarray, num_labels: int, *, ignore_empty: bool = True) -> float:
    """The Dice of a segmenter that learned nothing: every pixel given one label, each label in turn.

    Averaged over labels as `dice_iou` averages them. A trained segmenter that does not beat it has
    learned nothing a Dice could tell, so no figure built on it (a ratio, a comparison) means anything.
    """
    truth = np.asarray(truth)
    per = [dice_iou(np.full_like(truth, label), truth, num_labels, ignore_empty=ignore_empty)["dice_per_label"][label]
           for label in range(1, num_labels)]
    scored = [v for v in per if not math.isnan(v)]
    return float(np.mean(scored)) if scored else math.nan


def classification_floor(labels: np.ndarray) -> float:
    """The accuracy of a classifier that learned nothing: always the commonest class."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else math.nan


def segmenter_floor(images: np.ndarray, masks: np.ndarray, num_labels: int, *, seed: int = 0,
                    device: str | torch.device = "cpu", ignore_empty: bool = True) -> float:
    """What a segmenter that learned nothing scores on (images, masks): the better of marking every pixel
    (`segmentation_floor`) and the same network untrained (the same seed gives the same initial weights)."""
    x = np.asarray(images, dtype=np.float32)
    net = seeded(seed, lambda: build_segmenter(x.shape[1], num_labels, x.ndim - 2)).to(device)
    untrained = dice_iou(segment(net, x), masks, num_labels, ignore_empty=ignore_empty)["dice"]
    return _best(segmentation_floor(masks, num_labels, ignore_empty=ignore_empty), untrained)


def classifier_floor(images: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int = 0,
                     device: str | torch.device = "cpu") -> float:
    """What a classifier that learned nothing scores on (images, labels): the better of always answering the
    commonest class and the same network untrained."""
    x = np.asarray(images, dtype=np.float32)
    net = seeded(seed, lambda: SmallCNN(x.shape[1], num_classes, x.ndim - 2)).to(device)
    return _best(classification_floor(labels), accuracy(classify(net, x), labels, num_classes)["accuracy"])


def _best(*scores: float) -> float:
    return max((s for s in scores if not math.isnan(s)), default=math.nan)


def unlearned(score: float, floor: float, network: str, baseline: str, steps: int) -> str | None:
    """Why a network scoring `score` tells nothing, or None when it beats `floor`, the score of one that
    learned nothing. `network` and `baseline` name both in words ("the segmenter trained on real data",
    "marking every pixel"); the reason names both figures and the training budget, so a user knows what
    to change."""
    if math.isnan(score) or math.isnan(floor):
        return f"{network} could not be scored: no held-out case holds what it looks for"
    if score > floor:
        return None
    return (f"{network} scored {score:.3f}, no better than {baseline} ({floor:.3f}), after {steps} training "
            "steps: too few steps or cases to learn from")


def _holdout(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    k = min(max(int(round(n * share)), 1), n - 1)
    return order[k:], order[:k]


def class_fidelity(real_images: np.ndarray, real_labels: np.ndarray, synth_images: np.ndarray,
                   synth_labels: np.ndarray, num_classes: int | None = None, *, steps: int = CLS_STEPS,
                   batch: int = BATCH, seed: int = 0, device: str | torch.device = "cpu",
                   holdout: float = 0.25, progress: Progress | None = None,
                   requests: Requests | None = None) -> dict:
    """Label quality: a classifier trained on real data, scored on synthetic samples and their labels.

    A share ``holdout`` of the real set is kept back to give the ceiling: the real held-out
    accuracy is what a perfect generator's samples would score. Returns {"accuracy",
    "per_class" (recall per conditioning class, NaN where no sample had that class),
    "real_accuracy", "real_per_class", "n_real_train", "n_real_test", "n_synth"}.
    """
    real_labels, synth_labels = np.asarray(real_labels), np.asarray(synth_labels)
    k = num_classes or _num_classes(real_labels, synth_labels)
    if len(real_labels) < 2:
        raise ValueError("class fidelity needs at least two real samples (one to train, one to hold out)")
    _check_steps(steps)
    train_idx, test_idx = _holdout(len(real_labels), holdout, seed)
    real_images = np.asarray(real_images, dtype=np.float32)
    model = train_classifier(real_images[train_idx], real_labels[train_idx], k, steps=steps, batch=batch,
                             seed=seed, device=device, progress=progress, requests=requests)
    on_synth = accuracy(classify(model, synth_images), synth_labels, k)
    on_real = accuracy(classify(model, real_images[test_idx]), real_labels[test_idx], k)
    floor = classifier_floor(real_images[test_idx], real_labels[test_idx], k, seed=seed, device=device)
    return {"accuracy": on_synth["accuracy"], "per_class": on_synth["per_class"],
            "real_accuracy": on_real["accuracy"], "real_per_class": on_real["per_class"],
            "n_real_train": int(len(train_idx)), "n_real_test": int(len(test_idx)),
            "n_synth": int(len(synth_labels)), "real_floor": floor,
            "not_measured": unlearned(on_real["accuracy"], floor, "the classifier trained on real data",
                                      CLASSIFIER_FLOOR, steps)}


def untrained(steps: int) -> str | None:
    """Why a budget of `steps` trains nothing, or None. An untrained network scores the same whatever it
    was (not) trained on, so every ratio of synthetic to real would read 1."""
    return f"{steps} training steps: an untrained network measures nothing" if steps < 1 else None


def _check_steps(steps: int) -> None:
    if why := untrained(steps):
        raise ValueError(why)


def _offset(progress: Progress | None, done: int, total: int) -> Progress | None:
    """One training's progress as part of the three: the caller sees one bar, not three restarts."""
    if progress is None:
        return None
    return lambda step, _steps: progress(done + step, total)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) else math.nan


def _sets(real_train: Pair, synth: Pair) -> list[tuple[str, np.ndarray, np.ndarray]]:
    ri, rt = np.asarray(real_train[0], dtype=np.float32), np.asarray(real_train[1])
    si, st = np.asarray(synth[0], dtype=np.float32), np.asarray(synth[1])
    if ri.shape[1:] != si.shape[1:]:
        raise ValueError(f"real images {ri.shape[1:]} and synthetic images {si.shape[1:]} differ per sample")
    return [("real", ri, rt), ("synth", si, st),
            ("both", np.concatenate([ri, si]), np.concatenate([rt, st.astype(rt.dtype)]))]


def segmentation_utility(real_train: Pair, real_test: Pair, synth: Pair, *, num_labels: int | None = None,
                         steps: int = SEG_STEPS, batch: int = BATCH, seed: int = 0,
                         device: str | torch.device = "cpu", ignore_empty: bool = True,
                         progress: Progress | None = None, requests: Requests | None = None) -> dict:
    """Train segmenters on real, synthetic and both (same seed, same steps); score each on real_test.

    Each argument is an (images, masks) pair. ``progress(done, total)`` counts training
    steps over the three runs (total = 3 * steps); a stop in ``requests`` raises Cancelled.
    Returns {"real", "synth", "both"} (each the ``dice_iou`` dict: dice, iou, per label),
    "ratio_synth_real" and "ratio_both_real" (of mean Dice), "ratio_iou_synth_real", "ratio_iou_both_real",
    "num_labels", "steps", "n" (train sizes), "floor" (`segmenter_floor` of real_test) and
    "not_measured": None, or why the real arm, no better than the floor, makes every comparison
    meaningless (the ratios are then NaN).
    """
    _check_steps(steps)
    test_images, test_masks = np.asarray(real_test[0], dtype=np.float32), np.asarray(real_test[1])
    k = num_labels or _num_classes(np.asarray(real_train[1]), np.asarray(synth[1]), test_masks)
    sets = _sets(real_train, synth)
    out: dict = {"num_labels": k, "steps": steps, "n": {}}
    for i, (name, images, masks) in enumerate(sets):
        model = train_segmenter(images, masks, k, steps=steps, batch=batch, seed=seed, device=device,
                                progress=_offset(progress, i * steps, 3 * steps), requests=requests)
        out[name] = dice_iou(segment(model, test_images), test_masks, k, ignore_empty=ignore_empty)
        out["n"][name] = int(len(images))
    out["floor"] = segmenter_floor(test_images, test_masks, k, seed=seed, device=device, ignore_empty=ignore_empty)
    out["not_measured"] = unlearned(out["real"]["dice"], out["floor"], "the segmenter trained on real data",
                                    SEGMENTER_FLOOR, steps)
    useful = out["not_measured"] is None
    out["ratio_synth_real"] = _ratio(out["synth"]["dice"], out["real"]["dice"]) if useful else math.nan
    out["ratio_both_real"] = _ratio(out["both"]["dice"], out["real"]["dice"]) if useful else math.nan
    out["ratio_iou_synth_real"] = _ratio(out["synth"]["iou"], out["real"]["iou"]) if useful else math.nan
    out["ratio_iou_both_real"] = _ratio(out["both"]["iou"], out["real"]["iou"]) if useful else math.nan
    return out


def classification_utility(real_train: Pair, real_test: Pair, synth: Pair, *, num_classes: int | None = None,
                           steps: int = CLS_STEPS, batch: int = BATCH, seed: int = 0,
                           device: str | torch.device = "cpu", progress: Progress | None = None,
                           requests: Requests | None = None) -> dict:
    """The same as segmentation_utility for classification; each argument is an (images, labels) pair.

    Returns {"real", "synth", "both"} (each {"accuracy", "per_class"}), "ratio_synth_real",
    "ratio_both_real" (of accuracy), "num_classes", "steps", "n" (train sizes), "floor"
    (`classifier_floor` of real_test) and "not_measured" (None, or why; the ratios are then NaN).
    """
    _check_steps(steps)
    test_images, test_labels = np.asarray(real_test[0], dtype=np.float32), np.asarray(real_test[1])
    k = num_classes or _num_classes(np.asarray(real_train[1]), np.asarray(synth[1]), test_labels)
    out: dict = {"num_classes": k, "steps": steps, "n": {}}
    for i, (name, images, labels) in enumerate(_sets(real_train, synth)):
        model = train_classifier(images, labels, k, steps=steps, batch=batch, seed=seed, device=device,
                                 progress=_offset(progress, i * steps, 3 * steps), requests=requests)
        out[name] = accuracy(classify(model, test_images), test_labels, k)
        out["n"][name] = int(len(images))
    out["floor"] = classifier_floor(test_images, test_labels, k, seed=seed, device=device)
    out["not_measured"] = unlearned(out["real"]["accuracy"], out["floor"], "the classifier trained on real data",
                                    CLASSIFIER_FLOOR, steps)
    useful = out["not_measured"] is None
    out["ratio_synth_real"] = _ratio(out["synth"]["accuracy"], out["real"]["accuracy"]) if useful else math.nan
    out["ratio_both_real"] = _ratio(out["both"]["accuracy"], out["real"]["accuracy"]) if useful else math.nan
    return out
