"""The MedSynth HDF5 file (format_version 1): written batch by batch, readable at every moment.

Datasets are allocated for the planned sample count up front and ``n_complete``
is raised only after a batch is written and flushed, so a reader (or the app's
gallery) opened mid-run, or after a crash, trusts exactly the first
``n_complete`` samples.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from engine import __version__
from engine.data.dataset import ImageSet, validate
from engine.errors import InputError

FORMAT = "medsynth"
FORMAT_VERSION = 1


def _json(value: Any) -> str:
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


class SampleWriter:
    """Appends samples to a new MedSynth HDF5 file; use as a context manager."""

    def __init__(self, path: str | Path, n: int, image_shape: tuple[int, ...], *, masks: bool,
                 labels: bool, kind: str = "synthetic", class_names: list[str] | None = None,
                 label_names: dict[int, str] | None = None, spacing: tuple[float, ...] | None = None,
                 affine: np.ndarray | None = None, units: str = "", normalisation: dict | None = None,
                 config: dict | None = None, checkpoint_sha256: str = "", overwrite: bool = False,
                 mask_coding: dict[int, int] | None = None) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise InputError(self.path, "already exists; choose another name or allow overwriting it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.n = int(n)
        self.count = 0
        spatial = tuple(image_shape[1:])
        self.f = h5py.File(self.path, "w", locking=False)
        opts = dict(compression="gzip", compression_opts=4, shuffle=True)
        self.images = self.f.create_dataset("images", (self.n, *image_shape), np.float32,
                                            chunks=(1, *image_shape), **opts)
        self.masks = (self.f.create_dataset("masks", (self.n, *spatial), np.uint8, chunks=(1, *spatial),
                                            **opts) if masks else None)
        self.labels = self.f.create_dataset("labels", (self.n,), np.int64) if labels else None
        self.seeds = self.f.create_dataset("seeds", (self.n,), np.int64)
        metrics = self.f.create_group("metrics")
        metrics.attrs["summary"] = "{}"
        a = self.f.attrs
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
        a["kind"] = kind
        a["spatial_dims"] = len(spatial)
        a["class_names"] = _json(class_names or [])
        a["label_names"] = _json({str(k): v for k, v in (label_names or {}).items()})
        a["mask_coding"] = _json({str(k): int(v) for k, v in (mask_coding or {}).items()})
        a["spacing"] = np.asarray(spacing if spacing else (1.0,) * len(spatial), np.float64)
        # Without a known position the affine is the spacing alone: voxel (x, y[, z]) = stored (W, H[, D]) to mm.
        a["affine"] = np.asarray(affine if affine is not None else np.diag([*a["spacing"], 1.0]), np.float64)
        a["intensity_units"] = units
        a["normalisation"] = _json(normalisation or {})
        a["config"] = _json(config or {})
        a["checkpoint_sha256"] = checkpoint_sha256
        a["medsynth_version"] = __version__
        a["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        a["n_planned"] = self.n
        a["n_complete"] = 0
        self.f.flush()

    def append(self, images: np.ndarray, seeds: np.ndarray, masks: np.ndarray | None = None,
               labels: np.ndarray | None = None) -> None:
        b = len(images)
        lo, hi = self.count, self.count + b
        if hi > self.n:
            raise ValueError(f"{hi} samples exceed the {self.n} planned")
        self.images[lo:hi] = images
        self.seeds[lo:hi] = seeds
        if self.masks is not None and masks is not None:
            self.masks[lo:hi] = masks
        if self.labels is not None and labels is not None:
            self.labels[lo:hi] = labels
        # Data first, then the count: a reader never sees a count ahead of its data.
        self.f.flush()
        self.count = hi
        self.f.attrs["n_complete"] = hi
        self.f.flush()

    def set_metrics(self, figures: dict[str, float], summary: dict | None = None) -> None:
        write_metrics(self.f, figures, summary)

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_metrics(f: h5py.File, figures: dict[str, float], summary: dict | None = None) -> None:
    group = f.require_group("metrics")
    for key, value in figures.items():
        group.attrs[key] = value
    merged = json.loads(group.attrs.get("summary", "{}"))
    merged.update(summary or figures)
    group.attrs["summary"] = _json(merged)


def write_image_set(path: str | Path, s: ImageSet, *, overwrite: bool = False) -> Path:
    """Write a whole ImageSet (e.g. real data or phantoms) as a MedSynth file of kind "real"."""
    with SampleWriter(path, len(s), s.images.shape[1:], masks=s.masks is not None,
                      labels=s.labels is not None, kind=s.kind, class_names=s.class_names,
                      label_names=s.label_names, spacing=s.spacing, affine=s.affine,
                      normalisation={"modality": s.modality}, overwrite=overwrite, mask_coding=s.mask_coding) as w:
        if s.names is not None:
            w.f.create_dataset("names", data=list(s.names), dtype=h5py.string_dtype())
        for lo in range(0, len(s), 256):
            hi = min(lo + 256, len(s))
            w.append(s.images[lo:hi], np.arange(lo, hi),
                     None if s.masks is None else s.masks[lo:hi],
                     None if s.labels is None else s.labels[lo:hi])
    return Path(path)


def read_names(f: h5py.File) -> list[str] | None:
    """Each sample's provenance ("case_003 · z 41") when the file records it (/names), else None."""
    if "names" not in f:
        return None
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in f["names"][:]]


def open_file(path: str | Path) -> h5py.File:
    """Open a MedSynth HDF5 file read-only, or fail with one line naming it."""
    try:
        # No file lock: the app reads files that a sampling job is still appending to.
        f = h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise InputError(path, "does not exist") from None
    except OSError as exc:
        raise InputError(path, f"is not a readable HDF5 file ({exc.args[0] if exc.args else exc})") from None
    if f.attrs.get("format") != FORMAT or "images" not in f:
        f.close()
        raise InputError(path, "is HDF5 but not a MedSynth file (no format='medsynth' attribute or /images)")
    return f


def open_for_update(path: str | Path, wait_s: float = 1.0) -> h5py.File:
    """Open a MedSynth file read-write to add results (/metrics), or fail with one line naming it.

    A long job calls this before its work, so minutes of computing never end in a file it cannot
    write. HDF5 refuses a read-write open while this process holds the file read-only; the app's
    readers hold it only for a moment (a batch of thumbnails), so that refusal is retried briefly.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            f = h5py.File(path, "r+", locking=False)
            break
        except FileNotFoundError:
            raise InputError(path, "does not exist") from None
        except PermissionError:
            raise InputError(path, "is read-only, so the results cannot be written into it; make it writable "
                                   "or evaluate a copy") from None
        except OSError as exc:
            text = str(exc)
            if "already open for read-only" in text and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            if "already open for read-only" in text:
                fault = "is held open read-only elsewhere in this program, so the results cannot be written into it"
            elif "errno = 30" in text or "errno = 13" in text:
                fault = "is read-only, so the results cannot be written into it; make it writable or evaluate a copy"
            else:
                fault = f"cannot be opened for writing ({exc.args[0] if exc.args else exc})"
            raise InputError(path, fault) from None
    if f.attrs.get("format") != FORMAT or "images" not in f:
        f.close()
        raise InputError(path, "is HDF5 but not a MedSynth file (no format='medsynth' attribute or /images)")
    return f


def n_complete(f: h5py.File) -> int:
    return int(f.attrs.get("n_complete", f["images"].shape[0]))


def attrs_dict(f: h5py.File) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in f.attrs.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if key in ("class_names", "label_names", "mask_coding", "normalisation", "config") and isinstance(value, str):
            value = json.loads(value or "null")
        out[key] = value
    return out


def mask_coding(attrs: dict[str, Any]) -> dict[int, int]:
    """{label: the user's value} from a file's attributes; empty when labels are the stored values."""
    return {int(k): int(v) for k, v in (attrs.get("mask_coding") or {}).items()}


def shown_spacing(spacing: tuple[float, ...] | None, spatial_dims: int) -> tuple[float, ...] | None:
    """A file's spacing (x, y[, z]) per axis of a sample as viewers take it: a 2D (H, W) picture's
    (rows, cols) = (y, x); a volume, shown as (X, Y, Z), keeps (x, y, z)."""
    if not spacing:
        return None
    return tuple(spacing)[::-1] if spatial_dims != 3 else tuple(spacing)


def read_image_set(path: str | Path) -> ImageSet:
    """The complete samples of a MedSynth file (images or volumes) as an ImageSet."""
    with open_file(path) as f:
        n = n_complete(f)
        a = attrs_dict(f)
        images = f["images"][:n].astype(np.float32)
        masks = f["masks"][:n] if "masks" in f else None
        labels = f["labels"][:n].astype(np.int64) if "labels" in f else None
        names = read_names(f)
    norm = a.get("normalisation") or {}
    s = ImageSet(images=images, masks=masks, labels=labels, class_names=list(a.get("class_names") or []),
                 label_names={int(k): v for k, v in (a.get("label_names") or {}).items()},
                 mask_coding=mask_coding(a),
                 spacing=tuple(a.get("spacing") or ()) or None, modality=norm.get("modality", "generic"),
                 source=str(path), kind=str(a.get("kind", "real")), names=None if names is None else names[:n],
                 affine=np.asarray(a["affine"], np.float64) if a.get("spatial_dims") == 3 and "affine" in a else None)
    return validate(s)
