"""Thumbnails of a MedSynth file: the lazy list model behind the gallery (thumbnail_drawing.py draws them).

Thumbnails are read one sample at a time, only when the view paints them, and in
small time slices on the GUI thread so that scrolling never waits on a whole page of
reads. The file is open only during one such slice and closed before control returns
to the event loop: HDF5 refuses a read-write open of a file that this process holds
read-only, so a handle kept across turns would make an evaluation of the shown file
fail when it writes its figures. Opening per slice also reads a fresh n_complete from
a file that a sampling job is still writing.
"""

from __future__ import annotations

import textwrap
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QWidget

from engine.errors import InputError
from engine.evaluation.metrics.phantom_fidelity import CountRule, count_rule
from engine.io.medsynth_h5 import (
    IMAGES,
    LABELS,
    MASKS,
    PROMPTS,
    SEEDS,
    Header,
    n_complete,
    open_file,
    read_header,
    read_prompts,
)
from medsynth_gui.thumbnail_drawing import COLOUR_NAMES, render_thumbnail, unreadable_pixmap
from medsynth_gui.viewer.colors import PALETTE

# The viewer's palette (ITK-SNAP's order), so a label has one colour everywhere in the app.
LABEL_COLOURS: list[tuple[int, int, int]] = list(PALETTE)
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 64, 192, 96
CACHE_ITEMS = 2000
CACHE_BYTES = 96 * 2**20  # 2,000 thumbnails at 192 px would be ~300 MB
LOAD_BUDGET_S = 0.025  # per event-loop turn: long enough to fill a page, short enough to keep input smooth
PREFETCH_BUDGET_S = 0.010
WINDOW_SAMPLES = 8
POLL_MS = 1000
PROMPT_CHARS, PROMPT_WIDTH = 400, 60  # a report-length prompt is cut and wrapped: a tooltip is not a reader


class ThumbnailModel(QAbstractListModel):
    """Rows are the complete samples that pass the class filter; DecorationRole loads lazily."""

    SampleRole = Qt.ItemDataRole.UserRole + 1
    MismatchRole = Qt.ItemDataRole.UserRole + 2  # "mask shows 0 lesions, class says 1", or "" (known once drawn)
    loaded = Signal()  # every thumbnail the view asked for is loaded

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path = ""
        self.file: h5py.File | None = None  # open only inside reading(), never across event-loop turns
        self.shape: tuple[int, ...] = ()  # /images, as found at the last look
        self.has_masks = False
        self.header = Header()
        self.n_planned = 0
        self.n_complete = 0
        self.labels: np.ndarray | None = None
        self.seeds: np.ndarray | None = None
        self.prompts: list[str] | None = None  # each complete sample's prompt, when the file stores them
        self.class_names: list[str] = []
        self.label_names: dict[int, str] = {}
        self.class_filter: int | None = None
        self.rows = np.zeros(0, np.int64)
        self.size = DEFAULT_SIZE
        self.window: tuple[float, float] | None = None
        self.aspect = 1.0
        self.volume = False
        self.wanted: Callable[[int], bool] = lambda row: True
        self._images: h5py.Dataset | None = None
        self._masks: h5py.Dataset | None = None
        self._cache: OrderedDict[int, QPixmap] = OrderedDict()
        self._present: dict[int, tuple[int, ...]] = {}  # mask labels seen in each rendered sample
        self.count_rule: CountRule | None = None  # when the class names are lesion counts
        self._mismatch: dict[int, str] = {}
        self._queue: OrderedDict[int, None] = OrderedDict()
        self._ahead: list[int] = []
        self._timer = QTimer(self, singleShot=True, interval=0)
        self._timer.timeout.connect(self._load_some)

    # ---- file ----
    def load(self, path: str | Path) -> None:
        """Open a MedSynth file; raises InputError naming it. Reads labels and seeds, never images."""
        try:
            f, h, shape = self._open_checked(path)
        except InputError:
            if self.path and Path(path).resolve() == Path(self.path).resolve():
                self.unload()  # the file shown is gone: show nothing rather than a model of a missing file
            raise
        self.beginResetModel()
        try:
            self._take(path, f, h, shape)
        except (KeyError, ValueError, TypeError, OSError) as exc:
            self._forget()
            raise InputError(path, f"could not be read ({exc})") from None
        finally:
            self._release()
            if f.id.valid:
                f.close()
            self.endResetModel()

    def _take(self, path: str | Path, f: h5py.File, h: Header, shape: tuple[int, ...]) -> None:
        self.close()
        self.path, self.header = str(path), h
        self.class_filter = None
        self._bind(f)
        self.volume = len(shape) == 5
        self.shape, self.has_masks = tuple(shape), MASKS in f
        self.n_planned, self.class_names, self.label_names = h.n_planned, h.class_names, h.label_names
        self.count_rule = count_rule(self.class_names) if MASKS in f and LABELS in f else None
        spacing = list(h.spacing or ())
        # Spacing is (x, y[, z]): a thumbnail (2D image or axial slice) has x along its columns, y along its rows.
        sx, sy = spacing[:2] if len(spacing) >= 2 and min(spacing[:2]) > 0 else (1.0, 1.0)
        self.aspect = sy / sx
        norm = h.normalisation
        self.window = (float(norm["lo"]), float(norm["hi"])) if {"lo", "hi"} <= set(norm) else None
        self.n_complete = 0
        self.labels = np.zeros(0, np.int64) if LABELS in f else None
        self.seeds = np.zeros(0, np.int64)
        self.prompts = [] if PROMPTS in f else None
        self._grow(n_complete(f))
        self.rows = self._matching(0, self.n_complete)

    @staticmethod
    def _open_checked(path: str | Path) -> tuple[h5py.File, Header, tuple[int, ...]]:
        f = open_file(path)
        try:
            h = read_header(f)  # checks the shapes of /images and /masks, and that the rows are there
            shape = f[IMAGES].shape
        except InputError:
            f.close()
            raise
        except (KeyError, ValueError, TypeError, OSError) as exc:
            f.close()
            raise InputError(path, f"has unreadable MedSynth attributes ({exc})") from None
        return f, h, shape

    def unload(self) -> None:
        self.beginResetModel()
        self._forget()
        self.endResetModel()

    def _forget(self) -> None:
        self.close()
        self.path, self.header, self.rows = "", Header(), np.zeros(0, np.int64)
        self.n_complete = self.n_planned = 0
        self.labels = self.seeds = self.prompts = None
        self.shape, self.has_masks = (), False
        self.class_filter = None

    def _bind(self, f: h5py.File) -> None:
        # Dataset handles are kept for the slice: looking them up per thumbnail costs as much as reading one.
        self.file = f
        self._images = f[IMAGES]
        self._masks = f[MASKS] if MASKS in f else None

    def _release(self) -> None:
        if self.file is not None and self.file.id.valid:
            self.file.close()
        self.file = self._images = self._masks = None

    @contextmanager
    def reading(self) -> Iterator[h5py.File]:
        """The file, open for one batch of reads and closed after it (a nested call reuses the open file)."""
        if self.file is not None:
            yield self.file
            return
        self._bind(open_file(self.path))
        try:
            yield self.file  # type: ignore[misc]
        finally:
            self._release()

    def close(self) -> None:
        self._release()
        self._cache.clear()
        self._present.clear()
        self._mismatch.clear()
        self._queue.clear()
        self._ahead = []

    def reopen(self) -> tuple[int, int]:
        """Re-read n_complete (re-opening the file) and append new rows; returns (before, after)."""
        before = self.n_complete
        with self.reading() as f:
            now = n_complete(f)
            if now < before:
                return before, now  # a new run replaced the file under the same name: the caller starts over
            self.shape = tuple(f[IMAGES].shape)
            self._grow(now)
        if now > before:
            new = self._matching(before, now)
            if len(new):
                self.beginInsertRows(QModelIndex(), len(self.rows), len(self.rows) + len(new) - 1)
                self.rows = np.concatenate([self.rows, new])
                self.endInsertRows()
        return before, now

    def _grow(self, now: int) -> None:
        f, before = self.file, self.n_complete
        assert f is not None
        if now > before:
            if self.labels is not None:
                self.labels = np.concatenate([self.labels, f[LABELS][before:now].astype(np.int64)])
            if SEEDS in f:
                self.seeds = np.concatenate([self.seeds, f[SEEDS][before:now].astype(np.int64)])
            if self.prompts is not None:
                # To `now`, as the labels: a writer may have completed more since it was read.
                self.prompts += (read_prompts(f, before) or [])[:now - before]
            self.n_complete = now
        if self.window is None and now > 0:
            self.window = self._percentile_window()

    def _percentile_window(self) -> tuple[float, float]:
        """A per-file window from a few samples spread over the file: one scale for every thumbnail."""
        picks = np.unique(np.linspace(0, self.n_complete - 1, min(WINDOW_SAMPLES, self.n_complete)).astype(int))
        values = np.concatenate([self._read(int(i))[0].ravel() for i in picks])
        lo, hi = np.percentile(np.nan_to_num(values), (0.5, 99.5))
        return float(lo), float(hi) if hi > lo else float(lo) + 1.0

    def _read(self, sample: int) -> tuple[np.ndarray, np.ndarray | None]:
        images, masks = self._images, self._masks
        if images is None:
            raise OSError("file is closed")
        if self.volume:
            mid = images.shape[2] // 2  # central axial slice
            return images[sample, :, mid], (None if masks is None else masks[sample, mid])
        return images[sample], (None if masks is None else masks[sample])

    # ---- filter and lookup ----
    def _matching(self, lo: int, hi: int) -> np.ndarray:
        if self.class_filter is None or self.labels is None:
            return np.arange(lo, hi, dtype=np.int64)
        return lo + np.flatnonzero(self.labels[lo:hi] == self.class_filter).astype(np.int64)

    def set_class_filter(self, cls: int | None) -> None:
        self.beginResetModel()
        self.class_filter = cls
        self.rows = self._matching(0, self.n_complete)
        self._queue.clear()
        self._ahead = []
        self.endResetModel()

    def class_counts(self) -> np.ndarray:
        if self.labels is None:
            return np.zeros(0, np.int64)
        top = max(len(self.class_names), int(self.labels.max()) + 1 if len(self.labels) else 0)
        return np.bincount(self.labels[self.labels >= 0], minlength=top)

    def class_name(self, cls: int) -> str:
        return self.class_names[cls] if 0 <= cls < len(self.class_names) else f"class {cls}"

    def row_of(self, sample: int) -> int:
        i = int(np.searchsorted(self.rows, sample))
        return i if i < len(self.rows) and self.rows[i] == sample else -1

    def sample_at(self, row: int) -> int:
        return int(self.rows[row])

    # ---- thumbnails ----
    def set_size(self, size: int) -> None:
        self.size = int(size)
        self._cache.clear()
        self._queue.clear()
        self._ahead = []
        if len(self.rows):
            self.dataChanged.emit(self.index(0), self.index(len(self.rows) - 1), [Qt.ItemDataRole.DecorationRole])

    def pending(self) -> int:
        return len(self._queue)

    def has_thumbnail(self, sample: int) -> bool:
        return sample in self._cache

    def cached(self) -> int:
        return len(self._cache)

    def render(self, sample: int) -> QImage:
        """The thumbnail of one sample, read and drawn now (the view's path goes through the queue)."""
        with self.reading():
            image, mask = self._read(sample)
        if mask is not None:
            self._present[sample] = tuple(int(v) for v in np.unique(mask) if v > 0)
        if self.count_rule is not None and self.labels is not None and self._masks is not None:
            whole = self._masks[sample] if self.volume else mask  # lesions are counted in the whole volume
            self._mismatch[sample] = self.count_rule.mismatch(whole, int(self.labels[sample]))
        return render_thumbnail(image, mask, self.window or (0.0, 1.0), self.size, self.aspect)

    def prefetch(self, rows: Iterable[int]) -> None:
        """Load these rows while the user is idle, after anything the view asks for."""
        self._ahead = [s for s in (int(self.rows[r]) for r in rows if 0 <= r < len(self.rows))
                       if s not in self._cache]
        if self._ahead and not self._timer.isActive():
            self._timer.start()

    def _load_some(self) -> None:
        try:
            with self.reading():
                self._load_slice()
        except (InputError, OSError):
            # The file went away or was replaced mid-write: the poll or the next open says so; show crosses.
            for sample in [*self._queue, *self._ahead]:
                self._store(sample, unreadable_pixmap(self.size))
            self._queue.clear()
            self._ahead = []
            if len(self.rows):
                self.dataChanged.emit(self.index(0), self.index(len(self.rows) - 1), [Qt.ItemDataRole.DecorationRole])

    def _load_slice(self) -> None:
        start = time.perf_counter()
        done: list[int] = []
        visible = bool(self._queue)
        while self._queue and time.perf_counter() - start < LOAD_BUDGET_S:
            # Newest request first: those are what the view shows now after a fast scroll.
            sample, _ = self._queue.popitem(last=True)
            row = self.row_of(sample)
            if row < 0 or sample in self._cache or not self.wanted(row):
                continue
            self._load(sample)
            done.append(row)
        # Prefetch in shorter slices: it must never delay a scroll the user is making.
        while not self._queue and self._ahead and time.perf_counter() - start < PREFETCH_BUDGET_S:
            sample = self._ahead.pop(0)
            if sample not in self._cache and self.row_of(sample) >= 0:
                self._load(sample)
        if done:
            self.dataChanged.emit(self.index(min(done)), self.index(max(done)), [Qt.ItemDataRole.DecorationRole])
        if self._queue or self._ahead:
            self._timer.start()
        if visible and not self._queue:
            self.loaded.emit()

    def _load(self, sample: int) -> None:
        try:
            pix = QPixmap.fromImage(self.render(sample))
        except (OSError, KeyError, ValueError, IndexError):
            pix = unreadable_pixmap(self.size)  # a damaged chunk shows as a red cross, the rest still loads
        self._store(sample, pix)

    def _store(self, sample: int, pix: QPixmap) -> None:
        self._cache[sample] = pix
        per_item = max(1, pix.width() * pix.height() * 4)
        limit = max(64, min(CACHE_ITEMS, CACHE_BYTES // per_item))
        while len(self._cache) > limit:
            old, _ = self._cache.popitem(last=False)
            self._present.pop(old, None)
            self._mismatch.pop(old, None)

    # ---- Qt model API ----
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self.rows):
            return None
        sample = int(self.rows[index.row()])
        if role == Qt.ItemDataRole.DecorationRole:
            pix = self._cache.get(sample)
            if pix is not None:
                self._cache.move_to_end(sample)
                return pix
            if self.path:
                self._queue[sample] = None
                self._queue.move_to_end(sample)
                while len(self._queue) > 1024:
                    self._queue.popitem(last=False)
                if not self._timer.isActive():
                    self._timer.start()
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            # Starts with the index so that typing a number in the view jumps to that sample.
            if self.labels is None:
                return f"{sample}"
            return f"{sample} · {self.class_name(int(self.labels[sample]))}"
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(sample)
        if role == self.SampleRole:
            return sample
        if role == self.MismatchRole:
            return self._mismatch.get(sample, "")
        return None

    def _tooltip(self, sample: int) -> str:
        lines = [f"Sample #{sample}"]
        if self.labels is not None:
            lines.append(f"Class: {self.class_name(int(self.labels[sample]))}")
        if self.prompts is not None and sample < len(self.prompts):
            lines.append(_prompt_text(self.prompts[sample]))
        if self.seeds is not None and sample < len(self.seeds):
            lines.append(f"Seed: {int(self.seeds[sample])}")
        present = self._present.get(sample)
        if present is not None:
            names = [f"{self.label_names.get(k, f'label {k}')} ({COLOUR_NAMES[(k - 1) % len(COLOUR_NAMES)]})"
                     for k in present]
            lines.append("Outlines: " + (", ".join(names) if names else "none"))
        if self._mismatch.get(sample):
            lines.append(f"⚠ Label disagrees: {self._mismatch[sample]}")
        lines.append("Double-click or press Enter to open")
        return "\n".join(lines)


def _prompt_text(prompt: str) -> str:
    """The tooltip's prompt line(s): quoted, so an empty or space-ended prompt shows as what it is."""
    if len(prompt) > PROMPT_CHARS:
        prompt = prompt[:PROMPT_CHARS - 1] + "…"
    return textwrap.fill(f"Prompt: “{prompt}”", PROMPT_WIDTH, subsequent_indent="  ") \
        if prompt else "Prompt: (empty)"
