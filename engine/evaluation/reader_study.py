"""Reader studies: the study folder readers are given, and the answer key the organiser keeps.

A study is two things kept apart:

* the **study folder**, the only thing readers are given: ``study.json`` (item count,
  one shared geometry, nothing about sources), ``items.h5`` (the items' pixels in the
  blinded, shuffled order) and each reader's answers (`engine.evaluation.reader_session`);
* the **answer key** (which item is real, and its source file and index, the seed of the
  draw), kept by the organiser outside that folder, by default beside it as
  ``<folder>.key.json``. The summary (`engine.evaluation.reader_summary`) needs it; reading never does.

Every item is stored on one intensity scale: both sources are mapped through the same
window (percentiles of the pooled drawn items) to 8-bit values, so no value range, dtype,
precision or per-image contrast tells a real item from a synthetic one, and all items are
shown with one fixed display window (`DISPLAY_LEVELS`).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from engine.errors import InputError
from engine.io.medsynth_h5 import IMAGES, Header, open_file, read_header

STUDY_FILE = "study.json"
ITEMS_FILE = "items.h5"
KEY_SUFFIX = ".key.json"
FORMAT = "medsynth-reader-study"
KEY_FORMAT = "medsynth-reader-study-key"
VERSION = 2  # 1 kept the key (truth, source files) inside study.json, in the folder readers open
VERDICTS = ("real", "fake", "unsure")
TRUTHS = ("real", "synthetic")
RATINGS = ("realism", "anatomy", "consistency")
# Items are stored as 8-bit display values and shown with this one window, the same for every item.
DISPLAY_LEVELS = (0.0, 255.0)
WINDOW_PERCENTILES = (0.5, 99.5)
WINDOW_SAMPLES = 2_000_000  # voxels of the pooled items the study window is computed from


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


LINK_FAULT = "is a link; a study's files must be plain files inside its folder, not links to files elsewhere"


def study_file(folder: Path, name: str) -> Path:
    """A file of the study folder, by its plain name; refused when it is a link or would lie outside the folder.

    Readers' answers are appended and items read here: a link (or a name with a path in it) planted in a
    study folder must not make MedSynth write or read a file elsewhere."""
    path = folder / name
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise InputError(path, "is not a plain file name inside the study folder; a study's files stay in its folder")
    if path.is_symlink():
        raise InputError(path, LINK_FAULT)
    if path.exists() and path.resolve().parent != folder.resolve():
        raise InputError(path, "lies outside the study folder; a study's files stay in its folder")
    return path


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
    fsync_dir(target.parent)


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


def _read_sources(real: Path, synth: Path, n_real: int, n_synth: int) -> dict[str, dict[str, Any]]:
    """Each source's path, complete samples, dimensions, shape and header, once both fit one blind study."""
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
    return info


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
    info = _read_sources(real, synth, n_real, n_synth)
    rng = np.random.default_rng(seed)
    drawn = [("real", int(i)) for i in sorted(rng.choice(info["real"]["n"], n_real, replace=False))]
    drawn += [("synthetic", int(i)) for i in sorted(rng.choice(info["synthetic"]["n"], n_synth, replace=False))]
    order = [drawn[j] for j in rng.permutation(len(drawn))]
    fault = item_ids_fault(_key_entries(order))
    if fault:  # before anything is written: a repeated item would be shown, and scored, twice
        raise InputError(key, f"would be a damaged answer key: {fault}")
    out.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        _write_study(out, key, info, drawn, order, seed, written)
    except BaseException:
        for p in written:
            for leftover in (p, p.with_name(p.name + ".tmp")):
                leftover.unlink(missing_ok=True)
        raise
    return NewStudy(out, key)


def _write_study(out: Path, key: Path, info: dict[str, dict[str, Any]], drawn: list[tuple[str, int]],
                 order: list[tuple[str, int]], seed: int, written: list[Path]) -> None:
    """The items, the key, then study.json; each path goes into `written` before its file is begun."""
    r = info["real"]
    rh: Header = r["header"]
    n_real = sum(truth == "real" for truth, _ in drawn)
    n_synth = len(drawn) - n_real
    study_id = uuid.uuid4().hex
    created = datetime.now(UTC).isoformat(timespec="seconds")
    with open_file(r["path"]) as fr, open_file(info["synthetic"]["path"]) as fs:
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
        "items": _key_entries(order),
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


def _key_entries(order: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """The key's items: the blinded order, numbered from 1."""
    return [{"id": k + 1, "truth": truth, "index": index} for k, (truth, index) in enumerate(order)]


def _read_json(file: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(file, f"is not a readable {what} ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(file, f"is not a {what}")
    return doc


def _study_doc(folder: Path) -> dict[str, Any]:
    file = study_file(folder, STUDY_FILE)
    if not file.exists():
        raise InputError(folder, f"holds no {STUDY_FILE}; create a study first")
    doc = _read_json(file, "study file")
    if doc.get("format") != FORMAT:
        raise InputError(file, f"is not a MedSynth reader study (no format={FORMAT!r})")
    fault = _study_fault(doc)
    if fault:
        raise InputError(file, f"is a damaged study file: {fault}")
    return doc


def _whole(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                       and np.isfinite(x) for x in v)


def _shown(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _study_fault(doc: dict[str, Any]) -> str | None:
    """What is wrong with a study.json's fields, or None. Every field is checked before any is used."""
    version = doc.get("version", 1)
    if not _whole(version, 1):
        return f"'version' must be a whole number, not {_shown(version)}"
    if version < 2:  # a first-version study: its own key, checked as a key (`_key_items`)
        return None if _whole(doc.get("spatial_dims"), 2) and doc.get("spatial_dims") in (2, 3) \
            else f"'spatial_dims' must be 2 or 3, not {_shown(doc.get('spatial_dims'))}"
    checks = [
        ("study_id", lambda v: isinstance(v, str) and v != "", "a non-empty text"),
        ("spatial_dims", lambda v: v in (2, 3) and not isinstance(v, bool), "2 or 3"),
        ("items", lambda v: _whole(v, 1), "a whole number of items, at least 1"),
        ("image_shape", lambda v: v is None or (isinstance(v, list) and v != [] and all(_whole(x, 1) for x in v)),
         "a list of positive sizes"),
        ("items_file", lambda v: isinstance(v, str), "a file name"),
        ("geometry", lambda v: v is None or isinstance(v, dict), "an object"),
    ]
    for key, ok, what in checks:
        value = doc.get(key, ITEMS_FILE if key == "items_file" else None if key in ("image_shape", "geometry")
                        else ...)
        if value is ...:
            return f"it has no {key!r}"
        if not ok(value):
            return f"{key!r} must be {what}, not {_shown(value)}"
    geo = doc.get("geometry") or {}
    spacing, affine = geo.get("spacing"), geo.get("affine")
    if spacing is not None and not (_numbers(spacing) and spacing and all(x > 0 for x in spacing)):
        return f"'geometry.spacing' must be positive numbers, not {_shown(spacing)}"
    if affine is not None and not (isinstance(affine, list) and len(affine) == 4 and all(
            _numbers(row) and len(row) == 4 for row in affine)):
        return f"'geometry.affine' must be 4 rows of 4 numbers, not {_shown(affine)}"
    return None


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
    if not study_file(folder, doc.get("items_file", ITEMS_FILE)).exists():
        raise InputError(folder, f"holds no {ITEMS_FILE}; the study folder is incomplete")
    try:
        geo = doc.get("geometry") or {}
        spacing = tuple(float(v) for v in geo["spacing"]) if geo.get("spacing") else None
        affine = np.asarray(geo["affine"], float) if geo.get("affine") is not None else None
        return Study(folder, str(doc["study_id"]), int(doc["spatial_dims"]), int(doc["items"]), spacing, affine)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(folder / STUDY_FILE, f"is a damaged study file (bad or missing {exc})") from None


def _key_items(doc: dict[str, Any]) -> tuple[KeyItem, ...]:
    items = doc["items"]
    if not isinstance(items, list) or not items:
        raise ValueError("'items': a list of items")
    fault = item_ids_fault(items)
    if fault:
        raise ValueError(fault)
    return tuple(KeyItem(int(it["id"]), str(it["truth"]), int(it["index"])) for it in items)


def item_ids_fault(items: list[Any]) -> str | None:
    """Why a study's item list is unusable, or None: each item an id, a truth and a source index, every id
    and every source sample once. Checked when a study is created and whenever its key is read: a repeated
    id would count one item's answers against another's truth."""
    ids: set[int] = set()
    samples: set[tuple[str, int]] = set()
    for it in items:
        if not isinstance(it, dict) or not _whole(it.get("id"), 1) or it.get("truth") not in TRUTHS \
                or not _whole(it.get("index"), 0):
            return f"'items': {_shown(it)} is not an item (id >= 1, truth real or synthetic, index >= 0)"
        if it["id"] in ids:
            return f"'items': item id {it['id']} appears more than once"
        if (it["truth"], it["index"]) in samples:
            return f"'items': {it['truth']} sample {it['index']} appears more than once"
        ids.add(it["id"])
        samples.add((it["truth"], it["index"]))
    return None


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
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(file, f"is a damaged answer key (bad or missing {exc})") from None


def _legacy_key(folder: Path, doc: dict[str, Any]) -> Key:
    # A first-version study.json is its own key.
    return _key(folder / STUDY_FILE, doc, "", folder)


def answer_key(study_dir: str | Path, key: str | Path | None = None) -> tuple[Key, int]:
    """The study's answer key (default: `default_key_path`) and its spatial dims.

    A first-version study holds its own key in study.json.
    """
    folder = study_folder(study_dir)
    doc = _study_doc(folder)
    if _is_legacy(doc):
        return _legacy_key(folder, doc), int(doc["spatial_dims"])
    study = load_study(folder)
    return load_key(key if key else default_key_path(folder), study), study.spatial_dims


def fsync_dir(folder: Path) -> None:
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

