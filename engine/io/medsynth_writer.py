"""Writing a MedSynth HDF5 file (the format is engine/io/medsynth_h5.py's): samples go to ``NAME.partial`` beside
the file asked for, `n_complete` raised only after each batch is flushed, and the partial file renamed onto the name
once it holds a sample — so an old file stays whole for every reader until a new one with samples replaces it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from engine import __version__
from engine.data.dataset import ImageSet
from engine.errors import InputError
from engine.io import destination
from engine.io.medsynth_h5 import (
    FORMAT,
    FORMAT_VERSION,
    IMAGES,
    LABELS,
    MASKS,
    METRICS,
    NAMES,
    PROMPTS,
    SEEDS,
    SUMMARY,
    Header,
    write_metrics,
)


def sample_bytes(image_shape: tuple[int, ...], masks: bool) -> int:
    """What one sample needs on disk at most (uncompressed): its image, its mask, its label and seed."""
    spatial = int(np.prod(image_shape[1:]))
    return int(np.prod(image_shape)) * 4 + (spatial if masks else 0) + 16


def in_the_way(path: str | Path) -> Path | None:
    """The file whose samples writing `path` would lose: the file itself, or an interrupted run's temporary
    file beside it that still holds complete samples; None when nothing would be lost."""
    path = Path(path)
    if path.exists():
        return path
    partial = destination.temp_beside(path)
    return partial if partial.exists() and _holds_samples(partial) else None


def check_new(path: str | Path, overwrite: bool) -> None:
    """Refuse to write `path` where that would lose samples the user did not agree to lose."""
    lost = None if overwrite else in_the_way(path)
    if lost is None:
        return
    if lost == Path(path):
        raise InputError(lost, "already exists; choose another name or allow overwriting it")
    raise InputError(lost, "holds the complete samples of an interrupted run; rename it to keep them (it "
                           "is a MedSynth file), or allow overwriting")


def _holds_samples(path: Path) -> bool:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs.get("n_complete", 0)) > 0
    except (OSError, KeyError, ValueError, TypeError):
        return False  # killed before its first sample: nothing in it to keep


class SampleWriter:
    """Writes samples to a new MedSynth HDF5 file at `path`; use as a context manager.

    The samples go first to a temporary file beside `path` (`writing`: `NAME.partial`), readable throughout
    with `n_complete` true. Leaving the block renames it onto `path` once it holds a sample, so an old file
    at `path` stays whole, for every reader, until a new one with samples replaces it in one step; leaving it
    with no sample (a stop before the first batch) or by an error removes the temporary file and leaves
    `path` as it was. After a kill the temporary file is what remains: every sample it counts is complete.

    `lock` takes the writer lock on `path` (see engine.io.destination) for the writer's life; a caller that
    already holds it passes False. A full disk, a read-only file system or a missing permission is an
    InputError naming `path`, with the temporary file removed. The header is `header`, or built from `fields`
    (Header's field names); its spatial_dims, counts, version and time are the writer's to set. `prompts` adds
    /prompts, and every `append` must then give each sample's prompt. `attrs` are further root attributes (a
    shard's plan, engine/io/shards.py). `keep_on_error` keeps the temporary file, closed with the samples it
    counts, when the block ends in an error other than a disk fault: a shard whose peer process died is kept
    for a resume.
    """

    def __init__(self, path: str | Path, n: int, image_shape: tuple[int, ...], *, masks: bool, labels: bool,
                 header: Header | None = None, overwrite: bool = False, lock: bool = True, prompts: bool = False,
                 attrs: dict[str, Any] | None = None, keep_on_error: bool = False, **fields: Any) -> None:
        self.path = Path(path)
        self.writing = destination.temp_beside(self.path)
        self.n = int(n)
        self.keep_on_error = keep_on_error
        self._attrs = dict(attrs or {})
        self.count = 0
        self.f: h5py.File | None = None
        self._lock = contextlib.ExitStack()
        if lock:
            self._lock.enter_context(destination.writer_lock(self.path))
        try:
            check_new(self.path, overwrite)
            self.per_sample = sample_bytes(tuple(image_shape), masks)
            destination.check_writable(self.path, self.n * self.per_sample)
            with destination.translating(self.path):
                self._create(tuple(image_shape), masks, labels, prompts, header, fields)
        except BaseException:
            self._abort()
            raise

    def _create(self, image_shape: tuple[int, ...], masks: bool, labels: bool, prompts: bool,
                header: Header | None, fields: dict[str, Any]) -> None:
        spatial = tuple(image_shape[1:])
        self.header = replace(header) if header is not None else Header(**fields)
        self.header.spatial_dims, self.header.n_planned, self.header.n_complete = len(spatial), self.n, 0
        self.header.medsynth_version = __version__
        self.header.created = datetime.now(UTC).isoformat(timespec="seconds")
        self.header.format, self.header.format_version = FORMAT, FORMAT_VERSION
        # No chunk cache: every write covers whole chunks, so the cache only held dirty chunks back, and after a
        # failed write (a full disk) HDF5 retried them on close, failed again and crashed the process (rc 139).
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.writing, "w", locking=False, rdcc_nbytes=0)
        opts = dict(compression="gzip", compression_opts=4, shuffle=True)
        self.images = self.f.create_dataset(IMAGES, (self.n, *image_shape), np.float32,
                                            chunks=(1, *image_shape), **opts)
        self.masks = (self.f.create_dataset(MASKS, (self.n, *spatial), np.uint8, chunks=(1, *spatial),
                                            **opts) if masks else None)
        self.labels = self.f.create_dataset(LABELS, (self.n,), np.int64) if labels else None
        self.seeds = self.f.create_dataset(SEEDS, (self.n,), np.int64)
        # Variable-length UTF-8: a finding in any language, each row only as long as its text.
        self.prompts = (self.f.create_dataset(PROMPTS, (self.n,), h5py.string_dtype("utf-8"),
                                              chunks=(max(1, min(self.n, 1024)),), maxshape=(None,))
                        if prompts else None)
        self.f.create_group(METRICS).attrs[SUMMARY] = "{}"
        self.f.attrs.update(self.header.to_attrs())
        self.f.attrs.update(self._attrs)
        self.f.flush()

    def write_names(self, names: list[str]) -> None:
        with self._failing():
            self.f.create_dataset(NAMES, data=list(names), dtype=h5py.string_dtype())

    def append(self, images: np.ndarray, seeds: np.ndarray, masks: np.ndarray | None = None,
               labels: np.ndarray | None = None, prompts: list[str] | None = None) -> None:
        def bulk(lo: int, hi: int) -> None:
            self.images[lo:hi] = images
            if self.masks is not None and masks is not None:
                self.masks[lo:hi] = masks

        self._append(len(images), bulk, seeds, labels, prompts)

    def append_stored(self, src: h5py.File, start: int, stop: int) -> None:
        """Append rows start..stop-1 of `src`, a MedSynth file of this one's layout (a shard): images and masks go
        over as stored, one compressed chunk per sample, never decoded and compressed again, so that merging
        shards costs about the disk's time alone."""
        def bulk(lo: int, hi: int) -> None:
            _copy_rows(src[IMAGES], start, stop, self.images, lo)
            if self.masks is not None:
                _copy_rows(src[MASKS], start, stop, self.masks, lo)

        self._append(stop - start, bulk, src[SEEDS][start:stop],
                     src[LABELS][start:stop] if self.labels is not None else None,
                     list(src[PROMPTS].asstr()[start:stop]) if self.prompts is not None else None)

    def _append(self, b: int, bulk: Any, seeds: np.ndarray, labels: np.ndarray | None,
                prompts: list[str] | None) -> None:
        lo, hi = self.count, self.count + b
        if hi > self.n:
            raise ValueError(f"{hi} samples exceed the {self.n} planned")
        texts = self._prompt_texts(prompts, b)
        with self._failing():
            # Refused before writing rather than found out by a failed write: cheaper, and always clean.
            destination.check_room(self.path, b * self.per_sample + sum(len(t.encode()) for t in texts or ()))
            bulk(lo, hi)
            self.seeds[lo:hi] = seeds
            if self.labels is not None and labels is not None:
                self.labels[lo:hi] = labels
            if self.prompts is not None:
                self.prompts[lo:hi] = np.array(texts, dtype=h5py.string_dtype("utf-8"))
            # Data first, then the count: a reader never sees a count ahead of its data.
            self.f.flush()
            self.count = self.header.n_complete = hi
            self.f.attrs["n_complete"] = hi
            self.f.flush()

    def _prompt_texts(self, prompts: list[str] | None, b: int) -> list[str] | None:
        """The batch's prompts, checked against the file's promise: a file with /prompts has one for every
        sample, and one without drops none silently."""
        if self.prompts is None:
            if prompts is not None:
                raise ValueError("prompts given, but this file was created without /prompts (prompts=True)")
            return None
        if prompts is None or len(prompts) != b:
            raise ValueError(f"this file stores a prompt per sample: {b} expected, "
                             f"{'none' if prompts is None else len(prompts)} given")
        if not all(isinstance(t, str) for t in prompts):
            raise ValueError("each prompt must be text")
        return list(prompts)

    def drop_attrs(self, *names: str) -> None:
        """Remove root attributes that marked the file as unfinished work (see `attrs`) before it is closed."""
        with self._failing():
            for name in names:
                if name in self.f.attrs:
                    del self.f.attrs[name]

    def set_metrics(self, figures: dict[str, float], summary: dict | None = None) -> None:
        with self._failing():
            write_metrics(self.f, figures, summary)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """A disk fault inside: the temporary file goes and the fault is one line naming the target."""
        try:
            with destination.translating(self.path):
                yield
        except (OSError, InputError):
            self._abort()
            raise

    def _abort(self) -> None:
        """Give up: remove the temporary file, keep `path` as it was, let go of the lock."""
        if self.f is not None and self.f.id.valid:
            # Emptying the file first frees the disk, so HDF5's close can write what it still holds: a close
            # that fails on a full disk leaves HDF5 in a state that crashes the process later.
            with contextlib.suppress(OSError):
                os.truncate(self.writing, 0)
            with contextlib.suppress(OSError):
                self.f.close()
        destination.remove_quietly(self.writing)
        self._lock.close()

    def close(self) -> None:
        """Finish: rename the temporary file onto `path` if it holds a sample, else remove it."""
        if self.f is None or not self.f.id.valid:
            self._lock.close()
            return
        if self.count == 0:
            self._abort()
            return
        with self._failing():
            self.f.close()
            destination.commit(self.writing, self.path)
        self._lock.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self.keep_on_error and self.count and self.f is not None and self.f.id.valid:
            with contextlib.suppress(OSError):
                self.f.close()  # every sample it counts is whole; the temporary name says it is unfinished
            self._lock.close()
        else:
            self._abort()


def _copy_rows(src: h5py.Dataset, start: int, stop: int, dst: h5py.Dataset, at: int) -> None:
    """Rows start..stop-1 of `src` into `dst` from row `at`: chunk by chunk as stored where both keep one sample
    per chunk with the same filters (what SampleWriter writes), else decoded and written again."""
    same = (src.chunks == dst.chunks and src.chunks is not None and src.chunks[0] == 1 and src.dtype == dst.dtype
            and src.shape[1:] == dst.shape[1:] and src.compression == dst.compression
            and src.compression_opts == dst.compression_opts and src.shuffle == dst.shuffle)
    if not same:
        dst[at:at + stop - start] = src[start:stop]
        return
    rest = (0,) * (dst.ndim - 1)
    for k in range(stop - start):
        mask, data = src.id.read_direct_chunk((start + k, *rest))
        dst.id.write_direct_chunk((at + k, *rest), data, mask)


def write_image_set(path: str | Path, s: ImageSet, *, overwrite: bool = False) -> Path:
    """Write a whole ImageSet (e.g. real data or phantoms) as a MedSynth file of kind "real"."""
    header = Header(kind=s.kind, class_names=s.class_names, label_names=s.label_names, mask_coding=s.mask_coding,
                    spacing=s.spacing, affine=s.affine, normalisation={"modality": s.modality})
    with SampleWriter(path, len(s), s.images.shape[1:], masks=s.masks is not None, labels=s.labels is not None,
                      header=header, overwrite=overwrite, prompts=s.prompts is not None) as w:
        if s.names is not None:
            w.write_names(s.names)
        for lo in range(0, len(s), 256):
            hi = min(lo + 256, len(s))
            w.append(s.images[lo:hi], np.arange(lo, hi),
                     None if s.masks is None else s.masks[lo:hi],
                     None if s.labels is None else s.labels[lo:hi],
                     None if s.prompts is None else list(s.prompts[lo:hi]))
    return Path(path)
