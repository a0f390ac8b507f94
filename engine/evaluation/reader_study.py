"""Reader studies: blinded real-vs-synthetic reading, 1-5 ratings, and the figures a paper reports.

A study is two things kept apart:

* the **study folder**, the only thing readers are given: ``study.json`` (item count,
  one shared geometry, nothing about sources), ``items.h5`` (the items' pixels in the
  blinded, shuffled order) and each reader's ``answers-<reader>.jsonl``, one JSON line
  per answer, synced to disk before `Session.answer` returns, so a crash or a power cut
  loses nothing;
* the **answer key** (which item is real, and its source file and index, the seed of the
  draw), kept by the organiser outside that folder, by default beside it as
  ``<folder>.key.json``. `summarise` needs it; reading never does.

Every item is stored on one intensity scale: both sources are mapped through the same
window (percentiles of the pooled drawn items) to 8-bit values, so no value range, dtype,
precision or per-image contrast tells a real item from a synthetic one, and all items are
shown with one fixed display window (`DISPLAY_LEVELS`).

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
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from engine.errors import InputError
from engine.io.medsynth_h5 import IMAGES, Header, open_file, read_header, shown_spacing

STUDY_FILE = "study.json"
ITEMS_FILE = "items.h5"
KEY_SUFFIX = ".key.json"
FORMAT = "medsynth-reader-study"
KEY_FORMAT = "medsynth-reader-study-key"
VERSION = 2  # 1 kept the key (truth, source files) inside study.json, in the folder readers open
VERDICTS = ("real", "fake", "unsure")
TRUTHS = ("real", "synthetic")
RATINGS = ("realism", "anatomy", "consistency")
READER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Items are stored as 8-bit display values and shown with this one window, the same for every item.
DISPLAY_LEVELS = (0.0, 255.0)
WINDOW_PERCENTILES = (0.5, 99.5)
WINDOW_SAMPLES = 2_000_000  # voxels of the pooled items the study window is computed from
CONVENTION = ("fake is the positive call; unsure answers are excluded from accuracy, sensitivity and specificity "
              "and reported as the unsure rate (accuracy_unsure_wrong counts them as wrong); kappas use all three "
              "categories; a reader's last answer to an item counts")


# -- the study folder and its key -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Study:
    """What the readers' folder says: how many items and their one geometry; nothing about sources."""

    folder: Path
    study_id: str
    spatial_dims: int
    n_items: int
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None

    @property
    def items_path(self) -> Path:
        return self.folder / ITEMS_FILE


@dataclass(frozen=True)
class KeyItem:
    id: int
    truth: str  # "real" | "synthetic"
    index: int  # sample index in that source file


@dataclass(frozen=True)
class Key:
    """The organiser's answer key: truth and source of every item, and how the study was drawn."""

    path: Path
    study_id: str
    seed: int
    sources: dict[str, Path]  # truth -> HDF5 file
    items: tuple[KeyItem, ...]  # blinded order

    @property
    def truth(self) -> dict[int, str]:
        return {it.id: it.truth for it in self.items}


class NewStudy(NamedTuple):
    folder: Path  # give this to readers
    key: Path  # keep this


def study_folder(path: str | Path) -> Path:
    """The study folder, given the folder or its study.json."""
    p = Path(path)
    return p.parent if p.name == STUDY_FILE else p


def default_key_path(study: str | Path) -> Path:
    """Where the key goes unless the organiser names a place: beside the study folder, never in it."""
    folder = study_folder(study).resolve()
    return folder.parent / (folder.name + KEY_SUFFIX)


def _relative(path: Path, folder: Path) -> str | None:
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive on Windows: only the absolute path can name it
        return None


def _write_json(target: Path, doc: dict[str, Any]) -> None:
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _check_key_place(key: Path, out: Path) -> None:
    k, o = key.resolve(), out.resolve()
    if k == o or o in k.parents:
        raise InputError(key, "is inside the study folder; the answer key must be kept where readers are not sent")
    if key.exists():
        raise InputError(key, "already exists; an answer key is never overwritten (choose another place)")


def _study_window(sources: dict[str, Any], drawn: list[tuple[str, int]]) -> tuple[float, float]:
    """One intensity window for every item: percentiles of the drawn items of both sources, pooled.

    Each item gives the same number of voxels, so neither source's scale decides the window alone.
    """
    per_item = max(1, WINDOW_SAMPLES // len(drawn))
    values = []
    for truth, index in drawn:
        x = np.asarray(sources[truth][IMAGES][index], np.float32).ravel()
        x = x[:: max(1, x.size // per_item)]
        values.append(x[np.isfinite(x)])
    pooled = np.concatenate(values)
    if pooled.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(pooled, WINDOW_PERCENTILES))
    if hi <= lo:
        lo, hi = float(pooled.min()), float(pooled.max())
    return (lo, hi if hi > lo else lo + 1.0)


def to_display(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Source intensities → 8-bit display values through the study's one window (clipped at both ends)."""
    lo, hi = window
    scaled = (np.nan_to_num(np.asarray(image, np.float32), nan=lo) - lo) / (hi - lo)
    return np.round(np.clip(scaled, 0.0, 1.0) * DISPLAY_LEVELS[1]).astype(np.uint8)


def _write_items(path: Path, sources: dict[str, Any], order: list[tuple[str, int]], shape: tuple[int, ...],
                 window: tuple[float, float]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w", locking=False) as f:
        # Uncompressed on purpose: a compressed chunk's size would tell smooth images from noisy ones.
        images = f.create_dataset("images", (len(order), *shape), np.uint8, chunks=(1, *shape))
        for row, (truth, index) in enumerate(order):
            images[row] = to_display(sources[truth][IMAGES][index], window)
        f.attrs["format"] = FORMAT + "-items"
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def create_study(real: str | Path, synth: str | Path, out: str | Path, n_real: int, n_synth: int,
                 seed: int, key: str | Path | None = None) -> NewStudy:
    """Draw n_real + n_synth samples, shuffle them into one blinded order, and write the study and its key.

    The study folder `out` gets the items and nothing that names their source; the key goes to
    `key` (default: `default_key_path(out)`), which must lie outside `out`. The draw and the
    order come from `seed` alone; the key records it, so the key (not the seed) is the record.
    """
    real, synth, out = Path(real), Path(synth), Path(out)
    key = Path(key) if key else default_key_path(out)
    if n_real < 1 or n_synth < 1:
        raise InputError(None, f"a study needs at least one real and one synthetic item (asked for {n_real} real, "
                               f"{n_synth} synthetic)")
    if real.resolve() == synth.resolve():
        raise InputError(synth, "is the same file as the real one; a study compares two different files")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "already exists and is not an empty folder; a study needs a new folder of its own")
    _check_key_place(key, out)
    info: dict[str, dict[str, Any]] = {}
    for truth, path, wanted in (("real", real, n_real), ("synthetic", synth, n_synth)):
        with open_file(path) as f:
            h = read_header(f)
            shape = tuple(int(s) for s in f[IMAGES].shape[1:])
        n = h.n_complete
        if n < wanted:
            raise InputError(path, f"has {n} complete samples; the study asks for {wanted} {truth} ones")
        info[truth] = {"path": path, "n": n, "dims": h.spatial_dims, "shape": shape, "header": h}
    r, s = info["real"], info["synthetic"]
    if r["header"].kind == "synthetic":
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
    order = [drawn[j] for j in rng.permutation(len(drawn))]
    study_id = uuid.uuid4().hex
    created = datetime.now(UTC).isoformat(timespec="seconds")
    rh: Header = r["header"]
    out.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with open_file(real) as fr, open_file(synth) as fs:
            files = {"real": fr, "synthetic": fs}
            window = _study_window(files, drawn)
            written.append(out / ITEMS_FILE)
            _write_items(out / ITEMS_FILE, files, order, r["shape"], window)
        written.append(key)
        _write_json(key, {
            "format": KEY_FORMAT, "version": VERSION, "study_id": study_id, "created": created,
            "note": "the answer key of a reader study: keep it from the readers",
            "study_folder": str(out.resolve()), "seed": int(seed), "n_real": n_real, "n_synthetic": n_synth,
            "sources": {truth: {"path": str(v["path"].resolve()), "relative": _relative(v["path"], key.parent),
                                "n_complete": v["n"]} for truth, v in info.items()},
            "window": {"lo": window[0], "hi": window[1], "units": rh.intensity_units,
                       "percentiles": list(WINDOW_PERCENTILES)},
            "items": [{"id": k + 1, "truth": truth, "index": index} for k, (truth, index) in enumerate(order)],
        })
        written.append(out / STUDY_FILE)
        # The readers' file is written last: a study folder with study.json in it is complete.
        _write_json(out / STUDY_FILE, {
            "format": FORMAT, "version": VERSION, "study_id": study_id, "spatial_dims": r["dims"],
            "image_shape": list(r["shape"]), "items": len(order), "items_file": ITEMS_FILE,
            # Every item is shown with the real file's geometry: a spacing or orientation that
            # differed between the sources would give the truth away.
            "geometry": {"spacing": list(rh.spacing) if rh.spacing else None,
                         "affine": rh.affine.tolist() if r["dims"] == 3 and rh.affine is not None else None},
            "display_levels": list(DISPLAY_LEVELS),
        })
    except BaseException:
        for p in written:
            for leftover in (p, p.with_name(p.name + ".tmp")):
                leftover.unlink(missing_ok=True)
        raise
    return NewStudy(out, key)


def _read_json(file: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(file, f"is not a readable {what} ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(file, f"is not a {what}")
    return doc


def _study_doc(folder: Path) -> dict[str, Any]:
    file = folder / STUDY_FILE
    if not file.exists():
        raise InputError(folder, f"holds no {STUDY_FILE}; create a study first")
    doc = _read_json(file, "study file")
    if doc.get("format") != FORMAT:
        raise InputError(file, f"is not a MedSynth reader study (no format={FORMAT!r})")
    return doc


def _is_legacy(doc: dict[str, Any]) -> bool:
    return int(doc.get("version", 1)) < 2


def load_study(path: str | Path) -> Study:
    """The readers' view of a study; a first-version study (its key inside the folder) is refused."""
    folder = study_folder(path)
    doc = _study_doc(folder)
    if _is_legacy(doc):
        raise InputError(folder / STUDY_FILE, "is a first-version study that keeps its answer key in the folder "
                                              "readers open; create the study again to read it blind (its answers "
                                              "can still be summarised)")
    if not (folder / doc.get("items_file", ITEMS_FILE)).exists():
        raise InputError(folder, f"holds no {ITEMS_FILE}; the study folder is incomplete")
    try:
        geo = doc.get("geometry") or {}
        spacing = tuple(float(v) for v in geo["spacing"]) if geo.get("spacing") else None
        affine = np.asarray(geo["affine"], float) if geo.get("affine") is not None else None
        return Study(folder, str(doc["study_id"]), int(doc["spatial_dims"]), int(doc["items"]), spacing, affine)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(folder / STUDY_FILE, f"is a damaged study file (bad or missing {exc})") from None


def _key_items(doc: dict[str, Any]) -> tuple[KeyItem, ...]:
    return tuple(KeyItem(int(it["id"]), str(it["truth"]), int(it["index"])) for it in doc["items"])


def _sources(doc: dict[str, Any], base: Path) -> dict[str, Path]:
    sources = {}
    for truth, src in doc["sources"].items():
        # Relative first: files moved together keep working.
        rel = (base / src["relative"]).resolve() if src.get("relative") else None
        sources[truth] = rel if rel is not None and rel.exists() else Path(src["path"])
    return sources


def load_key(path: str | Path, study: Study | None = None) -> Key:
    """The organiser's answer key; with `study`, it must be that study's key."""
    file = Path(path)
    if not file.exists():
        raise InputError(file, "does not exist; the summary needs the study's answer key (kept by the organiser)")
    doc = _read_json(file, "answer key")
    if doc.get("format") != KEY_FORMAT:
        raise InputError(file, f"is not the answer key of a MedSynth reader study (no format={KEY_FORMAT!r})")
    if study is not None and doc.get("study_id") != study.study_id:
        raise InputError(file, f"is the answer key of another study, not of {study.folder}")
    return _key(file, doc, str(doc.get("study_id", "")), file.parent)


def _key(file: Path, doc: dict[str, Any], study_id: str, base: Path) -> Key:
    try:
        return Key(file, study_id, int(doc["seed"]), _sources(doc, base), _key_items(doc))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(file, f"is a damaged answer key (bad or missing {exc})") from None


def _legacy_key(folder: Path, doc: dict[str, Any]) -> Key:
    # A first-version study.json is its own key.
    return _key(folder / STUDY_FILE, doc, "", folder)


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
    levels: tuple[float, float]  # the study's one display window, the same for every item
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
        known = set(range(1, self.total + 1))
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
        return self.study.n_items

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
        # Items are numbered in reading order: an item's id is its position.
        return BlindItem(number, number, self.total)

    def item(self, item_id: int) -> BlindItem:
        if isinstance(item_id, bool) or not 1 <= int(item_id) <= self.total:
            raise InputError(self.study.folder / STUDY_FILE, f"has no item {item_id}")
        return BlindItem(int(item_id), int(item_id), self.total)

    def next_item(self) -> BlindItem | None:
        """The first item this reader has not answered, or None when all are answered."""
        for k in range(1, self.total + 1):
            if k not in self.answers:
                return BlindItem(k, k, self.total)
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
                   datetime.now(UTC).isoformat(timespec="seconds"))
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
        """The item's pixels in the study's one geometry and window, ready for the viewer; nothing names the source."""
        row = self.item(item_id).id - 1
        path = self.study.items_path
        try:
            with h5py.File(path, "r", locking=False) as f:
                image = np.asarray(f["images"][row])
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(path, f"has no readable item {item_id} ({exc}); was it changed after the study was made?"
                             ) from None
        if self.spatial_dims == 3:
            # Stored (C, D, H, W); the viewer takes voxel order (X, Y, Z). Only the first channel is read.
            image = np.ascontiguousarray(np.transpose(image[0], (2, 1, 0)))
        elif image.shape[0] != 3:
            image = image[0]
        return BlindImage(image, shown_spacing(self.study.spacing, self.spatial_dims), self.study.affine,
                          DISPLAY_LEVELS, self.spatial_dims)


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


def summarise(study_dir: str | Path, key: str | Path | None = None) -> dict[str, Any]:
    """Per-reader and pooled figures and inter-reader agreement of a study (see the module's conventions).

    `key` is the study's answer key (default: `default_key_path`); a first-version study holds its own.
    """
    folder = study_folder(study_dir)
    doc = _study_doc(folder)
    if _is_legacy(doc):
        answer_key, dims = _legacy_key(folder, doc), int(doc["spatial_dims"])
    else:
        study = load_study(folder)
        answer_key, dims = load_key(key if key else default_key_path(folder), study), study.spatial_dims
    truth = answer_key.truth
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
        "study": {"folder": str(folder), "key": str(answer_key.path), "items": len(truth), "real": n_real,
                  "synthetic": len(truth) - n_real, "seed": answer_key.seed, "spatial_dims": dims},
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
