"""Where the pieces of a generation split across processes lie, and how they become the one file asked for.

Merge at the end, not an HDF5 virtual dataset: each process writes its own shard, a MedSynth file of the samples
it drew, and when every sample is drawn the main process copies them, in sample order, into FILE.h5. A MedSynth
file holds its own data (readers refuse /images kept in other files: engine/io/medsynth_h5.py), so the result can
be copied, moved and opened anywhere like any other; the price is one more write of the samples, at the end,
with their compressed chunks copied as stored (SampleWriter.append_stored): disk time, no compression.

    FILE.h5.shards/                      beside FILE.h5 while the run is unfinished
        part-001-rank000.h5[.partial]    attempt 1, process 0: the samples it drew (.partial until it ended)
        part-001-rank001.h5[.partial]
        part-002-rank000.h5              a resume is a new attempt: new files; the older ones stay as they are
        adopted-002.h5                   a single-process run's FILE.h5.partial, moved in by a resume

A shard's root attribute `medsynth_shard` (JSON) holds the job it belongs to (count, first seed, checkpoint,
sampler, steps, ...: what makes sample i the one that job draws) and the sample indices its rows hold, in order, as
ranges [[lo, hi], ...]. SampleWriter raises `n_complete` only over whole samples, so after a kill every shard says
exactly which samples are done. A file without the attribute (an adopted one, or an unfinished FILE.h5 that a
single process stopped) holds samples 0..n_complete-1 in order, as one process writes them; for those only the
count, the checkpoint and the seeds can be checked.

FILE.h5 appears only when the merge renames its .partial onto it (SampleWriter): a reader sees no file (or the old
one), then the whole new one; every file here has a true `n_complete` at every moment. The folder goes after the
rename; a kill between the two leaves a complete FILE.h5 and a folder that a resume removes.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from engine.errors import InputError
from engine.io import destination
from engine.io.medsynth_h5 import IMAGES, SEEDS, Header, n_complete, open_file, read_header
from engine.io.medsynth_writer import SampleWriter

SHARD_ATTR = "medsynth_shard"
_PART = re.compile(r"^(?:part-(\d+)-rank\d+|adopted-(\d+))\.h5(?:\.partial)?$")


def folder(out: str | Path) -> Path:
    """Where the shards of FILE.h5 lie: FILE.h5.shards beside it."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(out: str | Path, attempt: int, rank: int) -> Path:
    return folder(out) / f"part-{attempt:03d}-rank{rank:03d}.h5"


def shard_attrs(job: dict[str, Any], blocks: list[tuple[int, int]]) -> dict[str, str]:
    """The root attribute that makes a MedSynth file a shard of `job` holding `blocks` in order."""
    return {SHARD_ATTR: json.dumps({"job": job, "blocks": [list(b) for b in blocks]})}


@dataclass(frozen=True)
class Piece:
    """Samples lo..hi-1 of the run are rows row..row+hi-lo-1 of `path`."""

    path: Path
    lo: int
    hi: int
    row: int


def _files(out: Path) -> list[Path]:
    here = folder(out)
    return sorted(p for p in here.iterdir() if _PART.match(p.name)) if here.is_dir() else []


def next_attempt(out: str | Path) -> int:
    """The number of the next attempt at FILE.h5: one past every attempt whose files lie in its folder."""
    numbers = [int(m.group(1) or m.group(2)) for p in _files(Path(out)) if (m := _PART.match(p.name))]
    return max(numbers, default=0) + 1


def in_the_way(out: str | Path) -> Path | None:
    """The shard folder of FILE.h5 when it holds complete samples of an interrupted run, else None."""
    for path in _files(Path(out)):
        with contextlib.suppress(InputError):
            if _opened_count(path)[1] > 0:
                return folder(out)
    return None


def check_clear(out: str | Path) -> None:
    """Refuse a new run of FILE.h5 while its shard folder holds the samples of an interrupted one."""
    left = in_the_way(out)
    if left is not None:
        raise InputError(left, "holds the complete samples of an interrupted run; continue it, or allow overwriting "
                               "to start over")


def remove(out: str | Path) -> None:
    destination.remove_quietly(folder(out))


def adopt_partial(out: str | Path) -> None:
    """Move what a killed single process left (FILE.h5.partial) into the shard folder, one rename, never a copy:
    the merge writes FILE.h5.partial anew. A partial file without a complete sample holds nothing to keep."""
    partial = destination.temp_beside(out)
    if not partial.exists():
        return
    if _opened_count(partial)[1] == 0:
        destination.remove_quietly(partial)
        return
    target = folder(out) / f"adopted-{next_attempt(out):03d}.h5"
    with destination.translating(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(target)


def _opened_count(path: Path) -> tuple[dict[str, Any], int]:
    """(the shard attribute's JSON or {}, the samples `path` holds whole); a file killed before its first
    flush holds none. A file that is not the MedSynth file it claims to be is an InputError naming it."""
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError:
        return {}, 0
    with f:
        if "n_complete" not in f.attrs or IMAGES not in f:
            return {}, 0
        shard = f.attrs.get(SHARD_ATTR)
        try:
            meta = json.loads(shard) if shard is not None else {}
        except (TypeError, ValueError):
            raise InputError(path, f"attribute {SHARD_ATTR!r} is not valid JSON") from None
        return meta, n_complete(f)


def pieces(out: str | Path, job: dict[str, Any], seeds_fit: Callable[[np.ndarray, int], bool]) -> list[Piece]:
    """Every complete sample of `job` that its interrupted runs left: in FILE.h5.shards, and in FILE.h5 when one
    process stopped before the end. A file of another job (other settings) is an InputError naming it: samples
    drawn otherwise must not join this file. `seeds_fit(seeds, first)` says whether stored seeds are those of
    samples first, first+1, ... (a redrawn sample keeps a seed of its own)."""
    out = Path(out)
    found: list[Piece] = []
    for path in [*_files(out), *([out] if out.exists() else [])]:
        meta, count = _opened_count(path)
        if count == 0:
            continue
        if meta:
            _check_job(path, meta.get("job") or {}, job)
            row = 0
            for lo, hi in meta.get("blocks") or []:
                take = min(hi - lo, count - row)
                if take <= 0:
                    break
                found.append(Piece(path, lo, lo + take, row))
                row += take
        else:
            _check_prefix(path, count, job, seeds_fit)
            found.append(Piece(path, 0, count, 0))
    return found


def _check_count(path: Path, planned: int, n: int) -> None:
    if planned != n:
        raise InputError(path, f"holds a run of {planned} samples, not {n}: continue it with that count, or allow "
                               "overwriting to start over")


def whole(out: str | Path, n: int) -> bool:
    """Whether FILE.h5 is there with all of its `n` samples (a run of another count is an InputError)."""
    out = Path(out)
    if not out.exists():
        return False
    with open_file(out) as f:
        planned, count = int(f.attrs.get("n_planned", 0)), n_complete(f)
    _check_count(out, planned, n)
    return count == planned


def _check_job(path: Path, theirs: dict[str, Any], ours: dict[str, Any]) -> None:
    for key, value in ours.items():
        if theirs.get(key) != value:
            raise InputError(path, f"holds samples of another run ({key} {theirs.get(key)!r}, not {value!r}): "
                                   "continue it with the settings it was started with, or allow overwriting "
                                   "to start over")


def _check_prefix(path: Path, count: int, job: dict[str, Any], seeds_fit: Callable[[np.ndarray, int], bool]) \
        -> None:
    with h5py.File(path, "r", locking=False) as f:
        h = read_header(f)
        seeds = f[SEEDS][:count] if SEEDS in f else None
    _check_count(path, h.n_planned, job["n"])
    if h.checkpoint_sha256 != job["checkpoint_sha256"] or seeds is None or not seeds_fit(seeds, 0):
        raise InputError(path, "holds samples of another model or seed: continue it with the model and seed it was "
                               "started with, or allow overwriting to start over")


def missing(n: int, batch: int, found: list[Piece]) -> list[tuple[int, int]]:
    """The samples still to draw, as blocks within the run's batches (lo..hi-1 each): a batch drawn anywhere is
    made of the same samples as in a single process's run."""
    done = np.zeros(n, bool)
    for p in found:
        done[p.lo:p.hi] = True
    blocks = []
    for start in range(0, n, batch):
        todo = np.flatnonzero(~done[start:start + batch]) + start
        if len(todo) == 0:
            continue
        # Runs of consecutive indices: normally the whole batch (a shard stores whole batches).
        cuts = np.flatnonzero(np.diff(todo) > 1) + 1
        blocks += [(int(run[0]), int(run[-1]) + 1) for run in np.split(todo, cuts)]
    return blocks


def _cover(n: int, found: list[Piece]) -> list[Piece]:
    """Pieces covering 0..n-1 once each, in order (a sample found twice is taken from the first piece)."""
    ordered = sorted(found, key=lambda p: (p.lo, -p.hi))
    cover: list[Piece] = []
    at = 0
    for p in ordered:
        if p.hi <= at:
            continue
        if p.lo > at:
            break
        cover.append(Piece(p.path, at, p.hi, p.row + at - p.lo))
        at = p.hi
    if at < n:
        raise ValueError(f"sample {at} of {n} is in no shard")
    return cover


def prefix(n: int, found: list[Piece]) -> int:
    """How many of the run's samples, from the first, the pieces hold without a gap."""
    at = 0
    for p in sorted(found, key=lambda p: (p.lo, -p.hi)):
        if p.lo > at:
            break
        at = max(at, p.hi)
    return min(at, n)


def merge(out: str | Path, n: int, image_shape: tuple[int, ...], header: Header, found: list[Piece], *,
          masks: bool, labels: bool, prompts: bool, batch: int,
          progress: Callable[[int], None] | None = None, upto: int | None = None, job: dict[str, Any] | None = None,
          keep_shards: bool = False) -> None:
    """Write FILE.h5 from the pieces (beside it, renamed onto it when whole), then remove the shard folder.

    `header` is the single-process run's; the writer sets the counts, the version and the time as always. With
    `upto` (a stopped run) FILE.h5 holds the run's first `upto` samples of `n`, as a single process's stopped file
    does, and says which `job` it belongs to (a resume continues it); `keep_shards` when the shards hold samples
    beyond those."""
    out = Path(out)
    cover = _cover(n if upto is None else upto, found)
    attrs = {} if upto is None else shard_attrs(job or {}, [(0, upto)])
    with SampleWriter(out, n, image_shape, masks=masks, labels=labels, prompts=prompts, header=header,
                      overwrite=True, lock=False, attrs=attrs) as writer:
        with contextlib.ExitStack() as files:  # closed before the rename: FILE.h5 itself may be one of them
            opened: dict[Path, h5py.File] = {}
            merged = 0
            for p in cover:
                if p.path not in opened:
                    opened[p.path] = files.enter_context(h5py.File(p.path, "r", locking=False))
                f = opened[p.path]
                for lo in range(p.lo, p.hi, batch):
                    hi = min(lo + batch, p.hi)
                    writer.append_stored(f, p.row + lo - p.lo, p.row + hi - p.lo)
                    merged += hi - lo
                    if progress is not None:
                        progress(merged)
    if not keep_shards:
        remove(out)
