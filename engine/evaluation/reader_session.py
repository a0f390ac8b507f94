"""Reading a study: one reader's blinded pass, answers and 1-5 ratings.

Each reader's answers go to ``answers-<reader>.jsonl`` in the study folder, one JSON line
per answer, synced to disk before `Session.answer` returns, so a crash or a power cut
loses nothing. Only each reader's last answer to an item counts. Nothing here reads the
answer key: a reader's view names no source, index or truth.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

from engine.errors import InputError
from engine.evaluation.reader_study import (
    DISPLAY_LEVELS,
    LINK_FAULT,
    STUDY_FILE,
    VERDICTS,
    fsync_dir,
    load_study,
    study_file,
    study_folder,
)
from engine.io.medsynth_h5 import shown_spacing

READER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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


# Opened without following a link, so a link put in place after the check is not followed either.
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def answers_path(study: str | Path, reader: str) -> Path:
    """The reader's answers file; refused when it is a link or lies outside the study folder (`study_file`)."""
    return study_file(study_folder(study), f"answers-{check_reader(reader)}.jsonl")


def _open_answers(path: Path, flags: int) -> int:
    """The answers file opened as itself: not through a link, and (to write) not a second name of another file."""
    try:
        fd = os.open(path, flags | NO_FOLLOW, 0o644)
    except OSError:
        if path.is_symlink():  # a link made after the check
            raise InputError(path, LINK_FAULT) from None
        raise
    st = os.fstat(fd)
    fault = None if stat.S_ISREG(st.st_mode) else "is not a plain file"
    if fault is None and flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
        fault = "has another name elsewhere (a hard link); answers are written only to a file of the study's own"
    if fault:
        os.close(fd)
        raise InputError(path, fault)
    return fd


def readers(study: str | Path) -> list[str]:
    """Readers with an answers file in the study, sorted by name."""
    names = [p.name[len("answers-"):-len(".jsonl")] for p in study_folder(study).glob("answers-*.jsonl")]
    return sorted(n for n in names if READER_RE.match(n))


def load_answers(path: Path) -> dict[int, Answer]:
    """The last answer per item. A line torn by a crash mid-write is skipped, never fatal."""
    out: dict[int, Answer] = {}
    if not path.exists() and not path.is_symlink():
        return out
    with os.fdopen(_open_answers(path, os.O_RDONLY), "r", encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    for line in text.splitlines():
        try:
            d = json.loads(line)
            a = Answer(int(d["item"]), str(d["verdict"]), d.get("realism"), d.get("anatomy"), d.get("consistency"),
                       float(d.get("seconds", 0.0)), str(d.get("answered", "")))
        except (ValueError, KeyError, TypeError):
            continue
        if a.verdict in VERDICTS:
            out[a.item] = a
    return out


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
            with os.fdopen(_open_answers(self.path, os.O_RDWR), "rb+") as fh:
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
        with os.fdopen(_open_answers(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(self.path.parent)
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

