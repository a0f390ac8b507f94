"""What an evaluation leaves: its figures in the file's /metrics group, and the pictures the app plots."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from engine.errors import InputError
from engine.io.medsynth_h5 import NN_CORR, NN_INDEX, write_metrics


def pictures(sets: dict, summary: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """What the app plots: every sample's nearest correlation and the closest pairs as pictures."""
    from engine.evaluation.figures import picture

    nn = extras.get("nn")
    mem = summary.get("memorization") or {}
    if nn is None or not sets:
        return {"nn_corr": None, "pairs": []}
    pairs = [(picture(sets["synth"][0][i]), picture(sets["train"][0][j]), f"#{i} vs train #{j}: {c:.3f}")
             for i, j, c in mem.get("closest", [])[:6]]
    return {"nn_corr": np.asarray(nn[1]), "pairs": pairs}


def write_results(f: h5py.File, figures: dict[str, float], summary: dict[str, Any], extras: dict[str, Any]) -> None:
    """The figures, the summary and the nearest-neighbour arrays into /metrics, replacing an older evaluation's."""
    nn = extras.get("nn")
    arrays = {} if nn is None else {NN_INDEX: nn[0].astype(np.int64), NN_CORR: nn[1].astype(np.float32)}
    # replace: a new evaluation's figures never mix with an older one's.
    write_metrics(f, figures, plain(summary), arrays=arrays, replace=True,
                  array_attrs={"train_data": str(summary.get("sources", {}).get("train"))})


def check_writable_folder(folder: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        raise InputError(folder, "is a read-only folder, so the evaluation report cannot be written there") from None


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python, NaN to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(value, np.integer):
        return int(value)
    return value
