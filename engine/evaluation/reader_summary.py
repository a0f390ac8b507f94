"""A reader study's figures: accuracy, sensitivity, specificity and ratings per reader and pooled,
inter-reader agreement (Cohen's and Fleiss' kappa), and the tables the CLI and the app show.

Conventions of `summarise`:

* "fake" is the positive call: sensitivity = synthetic items called fake / synthetic
  items called real or fake; specificity = real items called real / real items called
  real or fake. Accuracy is correct calls / (real + fake calls).
* "unsure" answers are left out of accuracy, sensitivity and specificity, and
  reported as the unsure rate = unsure / answered. ``accuracy_unsure_wrong`` gives the
  stricter figure in which every unsure answer counts as wrong.
* Agreement uses all three categories (real, fake, unsure): Cohen's kappa per reader
  pair on the items both answered, Fleiss' kappa on the items every reader answered.
  A kappa is None when undefined (no shared items, or all answers in one category).
* Only each reader's last answer to an item counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.reader_session import Answer, answers_path, load_answers, readers
from engine.evaluation.reader_study import RATINGS, TRUTHS, VERDICTS, answer_key, study_folder

CONVENTION = ("fake is the positive call; unsure answers are excluded from accuracy, sensitivity and specificity "
              "and reported as the unsure rate (accuracy_unsure_wrong counts them as wrong); kappas use all three "
              "categories; a reader's last answer to an item counts")


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _mean(values: list[int | float]) -> float | None:
    return float(np.mean(values)) if values else None


def reader_figures(pairs: Sequence[tuple[str, Answer]]) -> dict[str, Any]:
    """Figures for (truth, answer) pairs: one reader's, or several readers' pooled."""
    c = {f"{t}_{v}": 0 for t in TRUTHS for v in VERDICTS}
    for truth, a in pairs:
        c[f"{truth}_{a.verdict}"] += 1
    answered = len(pairs)
    unsure = c["real_unsure"] + c["synthetic_unsure"]
    correct = c["synthetic_fake"] + c["real_real"]
    ratings = {name: {t: _mean([getattr(a, name) for truth, a in pairs if truth == t and getattr(a, name) is not None])
                      for t in TRUTHS} for name in RATINGS}
    return {
        "answered": answered, "unsure": unsure, "decided": answered - unsure, "correct": correct,
        "accuracy": _ratio(correct, answered - unsure),
        "accuracy_unsure_wrong": _ratio(correct, answered),
        "sensitivity": _ratio(c["synthetic_fake"], c["synthetic_fake"] + c["synthetic_real"]),
        "specificity": _ratio(c["real_real"], c["real_real"] + c["real_fake"]),
        "unsure_rate": _ratio(unsure, answered),
        "ratings": ratings,
        "mean_seconds": _mean([a.seconds for _, a in pairs]),
        "counts": c,
    }


def cohen_kappa(a: Sequence[str], b: Sequence[str], categories: Sequence[str] = VERDICTS) -> float | None:
    """Cohen's kappa of two raters' labels of the same items: (p_o - p_e) / (1 - p_e)."""
    if len(a) != len(b):
        raise ValueError(f"two raters need labels of the same items ({len(a)} vs {len(b)})")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in categories)
    return None if math.isclose(p_e, 1.0) else (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from an items x categories table of how many raters chose each category.

    Every row must sum to the same number of raters n >= 2. P_i = (sum_j n_ij^2 - n) / (n (n - 1)),
    p_j = sum_i n_ij / (N n); kappa = (mean P_i - sum p_j^2) / (1 - sum p_j^2).
    """
    table = np.asarray(counts, float)
    if table.size == 0 or table.shape[0] == 0:
        return None
    n = table.sum(axis=1)
    if not np.all(n == n[0]) or n[0] < 2:
        raise ValueError("every item needs the same number (>= 2) of ratings")
    raters = n[0]
    p_i = ((table ** 2).sum(axis=1) - raters) / (raters * (raters - 1))
    p_j = table.sum(axis=0) / (table.shape[0] * raters)
    p_e = float((p_j ** 2).sum())
    return None if math.isclose(p_e, 1.0) else (float(p_i.mean()) - p_e) / (1.0 - p_e)


def summarise(study_dir: str | Path, key: str | Path | None = None) -> dict[str, Any]:
    """Per-reader and pooled figures and inter-reader agreement of a study (see the module's conventions).

    `key` is the study's answer key (default: `default_key_path`); a first-version study holds its own.
    """
    folder = study_folder(study_dir)
    study_key, dims = answer_key(folder, key)
    truth = study_key.truth
    answers = {r: {i: a for i, a in load_answers(answers_path(folder, r)).items() if i in truth}
               for r in readers(folder)}
    per_reader = {}
    pooled: list[tuple[str, Answer]] = []
    for r, given in answers.items():
        pairs = [(truth[k], a) for k, a in sorted(given.items())]
        pooled += pairs
        per_reader[r] = {**reader_figures(pairs), "complete": len(given) == len(truth)}
    cohen = []
    for ra, rb in combinations(sorted(answers), 2):
        shared = sorted(set(answers[ra]) & set(answers[rb]))
        cohen.append({"readers": [ra, rb], "items": len(shared),
                      "kappa": cohen_kappa([answers[ra][k].verdict for k in shared],
                                           [answers[rb][k].verdict for k in shared])})
    fleiss = None
    if len(answers) >= 2:
        common = sorted(set.intersection(*(set(g) for g in answers.values())))
        table = [[sum(answers[r][k].verdict == v for r in answers) for v in VERDICTS] for k in common]
        fleiss = {"readers": sorted(answers), "items": len(common), "kappa": fleiss_kappa(table)}
    n_real = sum(t == "real" for t in truth.values())
    return {
        "study": {"folder": str(folder), "key": str(study_key.path), "items": len(truth), "real": n_real,
                  "synthetic": len(truth) - n_real, "seed": study_key.seed, "spatial_dims": dims},
        "convention": CONVENTION,
        "readers": per_reader,
        "pooled": reader_figures(pooled),
        "agreement": {"cohen": cohen, "fleiss": fleiss},
    }


# -- tables for the CLI and the app ------------------------------------------------------------------------------
FIGURE_COLUMNS = ["Reader", "Answered", "Accuracy", "Sensitivity", "Specificity", "Unsure",
                  "Realism real / synth", "Anatomy real / synth", "Consistency real / synth", "Seconds / item"]


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def figure_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row of formatted figures per reader and a last 'pooled' row, in FIGURE_COLUMNS order."""
    n = summary["study"]["items"]
    rows = []
    for name, fig in [*summary["readers"].items(), ("pooled", summary["pooled"])]:
        answered = f"{fig['answered']} / {n}" if name != "pooled" else str(fig["answered"])
        row = [name, answered, _pct(fig["accuracy"]), _pct(fig["sensitivity"]), _pct(fig["specificity"]),
               _pct(fig["unsure_rate"])]
        row += [f"{_num(fig['ratings'][r]['real'])} / {_num(fig['ratings'][r]['synthetic'])}" for r in RATINGS]
        row.append(_num(fig["mean_seconds"], 1))
        rows.append(row)
    return rows


def agreement_rows(summary: dict[str, Any]) -> list[list[str]]:
    """[measure, readers, shared items, kappa] rows: each Cohen pair, then Fleiss over all readers."""
    ag = summary["agreement"]
    rows = [["Cohen's kappa", " – ".join(c["readers"]), str(c["items"]), _num(c["kappa"], 3)] for c in ag["cohen"]]
    if ag["fleiss"] is not None:
        f = ag["fleiss"]
        rows.append(["Fleiss' kappa", ", ".join(f["readers"]), str(f["items"]), _num(f["kappa"], 3)])
    return rows
