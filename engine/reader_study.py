"""Reader studies: blinded real-vs-synthetic reading, 1-5 ratings, and the figures a paper reports.

A study is a folder: ``study.json`` lists the items in their blinded, shuffled order
(source file, index and truth are kept there, never shown), and each reader's
answers go to ``answers-<reader>.jsonl``, one JSON line per answer, synced to disk
before `Session.answer` returns, so a crash or a power cut loses nothing.

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

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.store import attrs_dict, n_complete, open_file, shown_spacing

STUDY_FILE = "study.json"
FORMAT = "medsynth-reader-study"
VERDICTS = ("real", "fake", "unsure")
TRUTHS = ("real", "synthetic")
RATINGS = ("realism", "anatomy", "consistency")
READER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CONVENTION = ("fake is the positive call; unsure answers are excluded from accuracy, sensitivity and specificity "
              "and reported as the unsure rate (accuracy_unsure_wrong counts them as wrong); kappas use all three "
              "categories; a reader's last answer to an item counts")


# -- the study file ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyItem:
    id: int
    truth: str  # "real" | "synthetic"
    index: int  # sample index in that source file


@dataclass(frozen=True)
class Study:
    folder: Path
    seed: int
    spatial_dims: int
    sources: dict[str, Path]  # truth -> HDF5 file
    items: tuple[StudyItem, ...]  # blinded order
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None
    units: str

    def item(self, item_id: int) -> StudyItem:
        for it in self.items:
            if it.id == item_id:
                return it
        raise InputError(self.folder / STUDY_FILE, f"has no item {item_id}")


def study_folder(path: str | Path) -> Path:
    """The study folder, given the folder or its study.json."""
    p = Path(path)
    return p.parent if p.name == STUDY_FILE else p


def _sample_shape(f: Any) -> tuple[int, tuple[int, ...]]:
    shape = tuple(int(s) for s in f["images"].shape[1:])
    dims = int(f.attrs.get("spatial_dims", len(shape) - 1))
    return dims, shape


def _relative(path: Path, folder: Path) -> str | None:
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive on Windows: only the absolute path can name it
        return None


def create_study(real: str | Path, synth: str | Path, out: str | Path, n_real: int, n_synth: int,
                 seed: int) -> Path:
    """Draw n_real + n_synth samples, shuffle them into one blinded order, and write out/study.json.

    Returns the path of study.json. The draw and the order come from `seed` alone, and the
    file records both, so the file (not the seed) is the record of what readers saw.
    """
    real, synth, out = Path(real), Path(synth), Path(out)
    if n_real < 1 or n_synth < 1:
        raise InputError(None, f"a study needs at least one real and one synthetic item (asked for {n_real} real, "
                               f"{n_synth} synthetic)")
    if real.resolve() == synth.resolve():
        raise InputError(synth, "is the same file as the real one; a study compares two different files")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "already exists and is not an empty folder; a study needs a new folder of its own")
    info: dict[str, dict[str, Any]] = {}
    for truth, path, wanted in (("real", real, n_real), ("synthetic", synth, n_synth)):
        with open_file(path) as f:
            n = n_complete(f)
            dims, shape = _sample_shape(f)
            a = attrs_dict(f)
        if n < wanted:
            raise InputError(path, f"has {n} complete samples; the study asks for {wanted} {truth} ones")
        info[truth] = {"path": path, "n": n, "dims": dims, "shape": shape, "attrs": a}
    r, s = info["real"], info["synthetic"]
    if r["attrs"].get("kind") == "synthetic":
        # Swapped arguments would silently invert every figure of the study.
        raise InputError(real, "is marked kind='synthetic'; pass it as the synthetic file, and real data as real")
    if r["dims"] != s["dims"]:
        raise InputError(synth, f"holds {s['dims']}D samples but {real} holds {r['dims']}D ones; "
                                "a study compares 2D with 2D or 3D with 3D")
    if r["shape"] != s["shape"]:
        # A reader would tell the sources apart by size alone: the study would not be blind.
        raise InputError(synth, f"samples are {'x'.join(map(str, s['shape']))} but {real} holds "
                                f"{'x'.join(map(str, r['shape']))}; real and synthetic items must have one shape")

    rng = np.random.default_rng(seed)
    drawn = [("real", int(i)) for i in sorted(rng.choice(r["n"], n_real, replace=False))]
    drawn += [("synthetic", int(i)) for i in sorted(rng.choice(s["n"], n_synth, replace=False))]
    order = rng.permutation(len(drawn))
    out.mkdir(parents=True, exist_ok=True)
    items = [{"id": k + 1, "truth": drawn[j][0], "index": drawn[j][1]} for k, j in enumerate(order)]
    ra = r["attrs"]
    doc = {
        "format": FORMAT, "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": int(seed), "spatial_dims": r["dims"], "image_shape": list(r["shape"]),
        "n_real": n_real, "n_synthetic": n_synth,
        "sources": {truth: {"path": str(v["path"].resolve()), "relative": _relative(v["path"], out),
                            "n_complete": v["n"]} for truth, v in info.items()},
        # Every item is shown with the real file's geometry: a spacing or orientation that
        # differed between the sources would give the truth away.
        "geometry": {"spacing": ra.get("spacing"), "affine": ra.get("affine") if r["dims"] == 3 else None,
                     "units": str(ra.get("intensity_units", ""))},
        "items": items,
    }
    target = out / STUDY_FILE
    tmp = out / (STUDY_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    _fsync_dir(out)
    return target


def load_study(path: str | Path) -> Study:
    folder = study_folder(path)
    file = folder / STUDY_FILE
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(folder, f"holds no {STUDY_FILE}; create a study first") from None
    except (OSError, ValueError) as exc:
        raise InputError(file, f"is not a readable study file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(file, f"is not a MedSynth reader study (no format={FORMAT!r})")
    sources = {}
    for truth, src in doc["sources"].items():
        # Relative first: a study folder moved together with its data keeps working.
        rel = (folder / src.get("relative", "")).resolve()
        sources[truth] = rel if src.get("relative") and rel.exists() else Path(src["path"])
    geo = doc.get("geometry") or {}
    spacing = tuple(float(v) for v in geo["spacing"]) if geo.get("spacing") else None
    affine = np.asarray(geo["affine"], float) if geo.get("affine") is not None else None
    items = tuple(StudyItem(int(it["id"]), str(it["truth"]), int(it["index"])) for it in doc["items"])
    return Study(folder, int(doc["seed"]), int(doc["spatial_dims"]), sources, items, spacing, affine,
                 str(geo.get("units", "")))


# -- answers -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    item: int
    verdict: str
    realism: int | None = None
    anatomy: int | None = None
    consistency: int | None = None
    seconds: float = 0.0
    answered: str = ""  # UTC time


@dataclass(frozen=True)
class BlindItem:
    """What the reading UI may know of an item: no source, index or truth."""

    id: int
    number: int  # 1-based position in the reading order
    total: int


@dataclass(frozen=True)
class BlindImage:
    image: np.ndarray  # (H, W), (3, H, W), or a volume (X, Y, Z) as the viewer takes it
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None
    units: str
    spatial_dims: int


def check_reader(name: str) -> str:
    if not isinstance(name, str) or not READER_RE.match(name):
        raise InputError(None, f"reader name {name!r} must start with a letter or digit and hold only letters, "
                               "digits, '.', '_' and '-' (it names the answers file)")
    return name


def answers_path(study: str | Path, reader: str) -> Path:
    return study_folder(study) / f"answers-{check_reader(reader)}.jsonl"


def readers(study: str | Path) -> list[str]:
    """Readers with an answers file in the study, sorted by name."""
    names = [p.name[len("answers-"):-len(".jsonl")] for p in study_folder(study).glob("answers-*.jsonl")]
    return sorted(n for n in names if READER_RE.match(n))


def load_answers(path: Path) -> dict[int, Answer]:
    """The last answer per item. A line torn by a crash mid-write is skipped, never fatal."""
    out: dict[int, Answer] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            d = json.loads(line)
            a = Answer(int(d["item"]), str(d["verdict"]), d.get("realism"), d.get("anatomy"), d.get("consistency"),
                       float(d.get("seconds", 0.0)), str(d.get("answered", "")))
        except (ValueError, KeyError, TypeError):
            continue
        if a.verdict in VERDICTS:
            out[a.item] = a
    return out


def _fsync_dir(folder: Path) -> None:
    # A new file's name lives in its folder: sync the folder too, where the OS allows it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rating(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= 5:
        raise InputError(None, f"{name} rating must be a whole number from 1 to 5 or none, got {value!r}")
    return int(value)


class Session:
    """One reader's pass through a study. Opening it again resumes at the first unanswered item."""

    def __init__(self, study: str | Path, reader: str) -> None:
        self.study = load_study(study)
        self.reader = check_reader(reader)
        self.path = answers_path(self.study.folder, reader)
        self._repair_torn_tail()
        known = {it.id for it in self.study.items}
        self.answers = {k: a for k, a in load_answers(self.path).items() if k in known}

    def _repair_torn_tail(self) -> None:
        # A crash mid-write can leave a line without its newline; the next answer must not be glued to it.
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb+") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())

    @property
    def total(self) -> int:
        return len(self.study.items)

    @property
    def spatial_dims(self) -> int:
        return self.study.spatial_dims

    @property
    def n_answered(self) -> int:
        return len(self.answers)

    @property
    def done(self) -> bool:
        return self.n_answered == self.total

    def item_at(self, number: int) -> BlindItem:
        """The item at 1-based position `number` of the reading order."""
        if not 1 <= number <= self.total:
            raise InputError(None, f"the study has items 1..{self.total}, not {number}")
        return BlindItem(self.study.items[number - 1].id, number, self.total)

    def item(self, item_id: int) -> BlindItem:
        for k, it in enumerate(self.study.items, 1):
            if it.id == item_id:
                return BlindItem(it.id, k, self.total)
        raise InputError(self.study.folder / STUDY_FILE, f"has no item {item_id}")

    def next_item(self) -> BlindItem | None:
        """The first item this reader has not answered, or None when all are answered."""
        for k, it in enumerate(self.study.items, 1):
            if it.id not in self.answers:
                return BlindItem(it.id, k, self.total)
        return None

    def answer(self, item_id: int, verdict: str, realism: int | None = None, anatomy: int | None = None,
               consistency: int | None = None, seconds: float = 0.0) -> Answer:
        """Record one answer; it is on disk when this returns. A second answer to an item replaces the first."""
        self.item(item_id)
        if verdict not in VERDICTS:
            raise InputError(None, f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        if consistency is not None and self.spatial_dims != 3:
            raise InputError(None, "slice consistency is rated for volumes only; this study shows 2D images")
        seconds = float(seconds)
        if not math.isfinite(seconds) or seconds < 0:
            raise InputError(None, f"seconds must be a finite number >= 0, got {seconds!r}")
        a = Answer(int(item_id), verdict, _rating("realism", realism), _rating("anatomy", anatomy),
                   _rating("consistency", consistency), round(seconds, 3),
                   datetime.now(timezone.utc).isoformat(timespec="seconds"))
        line = json.dumps({"reader": self.reader, **asdict(a)})
        new = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            _fsync_dir(self.path.parent)
        self.answers[a.item] = a
        return a

    def image(self, item_id: int) -> BlindImage:
        """The item's pixels in the study's one geometry, ready for the viewer; nothing names the source."""
        it = self.study.item(item_id)
        path = self.study.sources[it.truth]
        with open_file(path) as f:
            if it.index >= n_complete(f):
                raise InputError(path, f"has no complete sample {it.index}; was it changed after the study was made?")
            image = np.asarray(f["images"][it.index], np.float32)
        if self.spatial_dims == 3:
            # Stored (C, D, H, W); the viewer takes voxel order (X, Y, Z). Only the first channel is read.
            image = np.ascontiguousarray(np.transpose(image[0], (2, 1, 0)))
        elif image.shape[0] != 3:
            image = image[0]
        return BlindImage(image, shown_spacing(self.study.spacing, self.spatial_dims), self.study.affine,
                          self.study.units, self.spatial_dims)


# -- figures ---------------------------------------------------------------------------------------------------------
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


def summarise(study_dir: str | Path) -> dict[str, Any]:
    """Per-reader and pooled figures and inter-reader agreement of a study (see the module's conventions)."""
    study = load_study(study_dir)
    truth = {it.id: it.truth for it in study.items}
    answers = {r: {k: a for k, a in load_answers(answers_path(study.folder, r)).items() if k in truth}
               for r in readers(study.folder)}
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
        "study": {"folder": str(study.folder), "items": len(truth), "real": n_real, "synthetic": len(truth) - n_real,
                  "seed": study.seed, "spatial_dims": study.spatial_dims},
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
