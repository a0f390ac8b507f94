"""Dice and IoU of label maps: how well a predicted segmentation agrees with the truth.

Conventions (the project's): masks uint8 label maps (N, *spatial) with 0 = background.

Dice and IoU are MONAI's ``DiceMetric`` / ``MeanIoU`` on one-hot tensors without the
background channel. Empty-vs-empty convention (``ignore_empty``, MONAI's default True):
a case whose ground truth lacks a label gives NaN for that label and is left out of that
label's mean, so a false positive on a lesion-free image is not penalised, and a model
that predicts nothing scores 0 rather than being rewarded on every lesion-free image.
With ``ignore_empty=False`` an empty truth scores 1 when the prediction is empty too and
0 otherwise. The per-label figure is the mean over cases; the overall figure is the mean
of the per-label figures over labels that occur (macro average, as nnU-Net reports), so
a rare label counts as much as a common one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.utils import one_hot

# Chunk of cases sent through the metric or the network at once: bounds memory for volumes.
CHUNK = 16


def _label_tensor(masks: np.ndarray | torch.Tensor, num_labels: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(masks)).long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_labels):
        raise ValueError(f"{name} holds labels outside 0..{num_labels - 1}")
    return t


def dice_iou(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, num_labels: int,
             *, ignore_empty: bool = True) -> dict:
    """Dice and IoU of label maps (N, *spatial), per foreground label and their mean.

    Returns {"dice", "iou", "dice_per_label", "iou_per_label", "cases_per_label"}; the
    per-label dicts are keyed by label value (1..num_labels-1) and a label that no case
    could score (absent from every truth under ``ignore_empty``) is NaN and left out of
    the mean. See the module notes for the empty-vs-empty convention.
    """
    if num_labels < 2:
        raise ValueError("num_labels counts the background too, so it must be at least 2")
    p = _label_tensor(pred, num_labels, "pred")
    t = _label_tensor(truth, num_labels, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and truth {tuple(t.shape)} differ in shape")
    if p.dim() < 3:
        raise ValueError(f"expected label maps (N, H, W) or (N, D, H, W); got shape {tuple(p.shape)}")
    dice = DiceMetric(include_background=False, reduction="mean_batch", get_not_nans=True,
                      ignore_empty=ignore_empty)
    iou = MeanIoU(include_background=False, reduction="mean_batch", get_not_nans=True,
                  ignore_empty=ignore_empty)
    for i in range(0, len(p), CHUNK):
        yp = one_hot(p[i:i + CHUNK, None], num_labels)
        y = one_hot(t[i:i + CHUNK, None], num_labels)
        dice(y_pred=yp, y=y)
        iou(y_pred=yp, y=y)
    out: dict = {}
    for key, metric in (("dice", dice), ("iou", iou)):
        if len(p) == 0:
            per = [math.nan] * (num_labels - 1)
            counts = [0] * (num_labels - 1)
        else:
            values, not_nans = metric.aggregate()
            # MONAI reports 0 for a label with no scorable case; NaN says "not measured" honestly.
            per = [float(v) if n > 0 else math.nan for v, n in zip(values.tolist(), not_nans.tolist())]
            counts = [int(n) for n in not_nans.tolist()]
        out[f"{key}_per_label"] = {k + 1: v for k, v in enumerate(per)}
        scored = [v for v in per if not math.isnan(v)]
        out[key] = float(np.mean(scored)) if scored else math.nan
    # Dice and IoU leave out the same cases, so one count serves both.
    out["cases_per_label"] = {k + 1: c for k, c in enumerate(counts)}
    return out

