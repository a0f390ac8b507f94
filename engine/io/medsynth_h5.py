"""The MedSynth HDF5 file (format_version 1): its names, its header, its checks and every read of it; /metrics.

    /images   float32 (N, C, H, W) or (N, C, D, H, W), in the data's units
    /masks    uint8 (N, H, W) or (N, D, H, W) label maps            (when the file has masks)
    /labels   int64 (N,) class indices                               (when the file has classes)
    /seeds    int64 (N,) the seed each sample was drawn with
    /names    str (N,) where each sample came from                   (when known)
    /prompts  str (N,) UTF-8, the text each sample was drawn with    (text-prompted models; older files lack it)
    /metrics  figures as attributes, a JSON "summary", nn_index / nn_corr per sample (after an evaluation)
    root attributes: the `Header`; lists and dicts are JSON text, since HDF5 attributes hold no nested data.

Datasets are allocated for the planned sample count up front and ``n_complete`` is raised only after
a batch is written and flushed, so a reader (or the app's gallery) opened mid-run, or after a crash,
trusts exactly the first ``n_complete`` samples. A writer (engine/io/medsynth_writer.py) fills ``NAME.partial``
beside the file it was asked for and renames it onto that name when done: a reader of the name sees the old file,
or none, until then; the partial file is the one to read mid-run, and what a kill leaves.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from engine.data.dataset import ImageSet, check_labels, check_numeric, validate
from engine.errors import InputError
from engine.io import destination

FORMAT = "medsynth"
FORMAT_VERSION = 1
IMAGES, MASKS, LABELS, SEEDS, NAMES, PROMPTS = "images", "masks", "labels", "seeds", "names", "prompts"
METRICS = "metrics"
SUMMARY = "summary"  # the /metrics attribute holding the JSON summary; every other attribute there is a figure
NN_INDEX, NN_CORR = "nn_index", "nn_corr"  # /metrics arrays: each sample's nearest training image and its correlation
NOT_MEDSYNTH = "is HDF5 but not a MedSynth file (no format='medsynth' attribute or /images)"
# Root attributes stored as JSON text, and the JSON each must hold.
JSON_FIELDS = {"class_names": list, "label_names": dict, "mask_coding": dict, "normalisation": dict, "config": dict}
PER_SAMPLE = (IMAGES, MASKS, LABELS, SEEDS, NAMES, PROMPTS)  # datasets with one row per sample
GIB = 1024 ** 3


def to_json(value: Any) -> str:
    """JSON text for an attribute: numpy values become lists or numbers, anything else its str."""
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _int_keys(mapping: Any, value: type = str) -> dict:
    # JSON turns integer keys into text; the file's label numbers are integers again once read.
    return {int(k): value(v) for k, v in (mapping or {}).items()}


def _json_attr(source: str | Path | None, key: str, value: Any, where: str = "") -> Any:
    """A JSON attribute's value, or one line naming the file and the attribute when it is not the JSON it must be."""
    if not isinstance(value, str):
        return value
    try:
        value = json.loads(value or "null")
    except json.JSONDecodeError as exc:
        raise InputError(source, f"attribute {key!r}{where} is not valid JSON ({exc.msg} at character {exc.pos})") \
            from None
    wanted = JSON_FIELDS.get(key)
    if wanted is not None and value is not None and not isinstance(value, wanted):
        raise InputError(source, f"attribute {key!r}{where} holds a JSON {type(value).__name__}, not a "
                                 f"{'list' if wanted is list else 'mapping'}")
    return value


def _whole(source: str | Path | None, key: str, value: Any) -> int:
    value = _plain(value)
    if not (isinstance(value, int) or isinstance(value, float) and value.is_integer()):
        raise InputError(source, f"attribute {key!r} is {value!r}, not a whole number")
    return int(value)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    value = value.item() if isinstance(value, np.generic) else value
    # Fixed-length text attributes (other HDF5 writers) read as bytes.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass
class Header:
    """The root attributes of a MedSynth file, typed. Older files lack some: they read as the defaults."""

    kind: str = "synthetic"  # "synthetic" (drawn by a model) or "real" (a data set written as a MedSynth file)
    spatial_dims: int = 2
    class_names: list[str] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)  # mask label → its name
    mask_coding: dict[int, int] = field(default_factory=dict)  # mask label → the user's value; empty: the same
    # Pixel / voxel size in mm, (x, y[, z]) = stored (W, H[, D]); written as 1 mm each when unknown.
    spacing: tuple[float, ...] | None = None
    # Voxel (x, y[, z]) → world mm; written as the spacing alone when unknown. Only a volume's is a position.
    affine: np.ndarray | None = None
    intensity_units: str = ""
    normalisation: dict[str, Any] = field(default_factory=dict)  # modality, lo, hi, bits...
    config: dict[str, Any] = field(default_factory=dict)  # the generating run's public config
    checkpoint_sha256: str = ""
    medsynth_version: str = ""
    created: str = ""
    n_planned: int = 0
    n_complete: int = 0
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names or []]
        self.label_names = _int_keys(self.label_names)
        self.mask_coding = _int_keys(self.mask_coding, int)
        self.spacing = tuple(float(s) for s in self.spacing) if self.spacing is not None and len(self.spacing) \
            else None
        self.affine = None if self.affine is None else np.asarray(self.affine, np.float64)
        self.normalisation, self.config = dict(self.normalisation or {}), dict(self.config or {})

    @classmethod
    def from_attrs(cls, attrs: Any, images_shape: tuple[int, ...] | None = None,
                   source: str | Path | None = None) -> Header:
        """The header from a file's root attributes (`f.attrs` or a dict of them); the shape of /images
        stands in for the counts and dimensions a file does not record. An attribute that is not what its
        field holds (bad JSON, text for a number) is an InputError naming `source` and the attribute."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in attrs.items():
            if key not in known:
                continue
            values[key] = _json_attr(source, key, _plain(value)) if key in JSON_FIELDS else _plain(value)
        if images_shape is not None:
            values.setdefault("n_planned", images_shape[0])
            values.setdefault("n_complete", images_shape[0])
            values.setdefault("spatial_dims", len(images_shape) - 2)
        for f in fields(cls):
            if f.name in values and isinstance(f.default, (str, int)):
                # numpy scalars as the field's own type; a count must be a whole number, not text or 2.5
                values[f.name] = _whole(source, f.name, values[f.name]) if isinstance(f.default, int) \
                    else str(values[f.name])
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            # Name the attribute: the first that fails alone.
            for key, value in values.items():
                try:
                    cls(**{key: value})
                except (TypeError, ValueError):
                    raise InputError(source, f"attribute {key!r} cannot be read ({exc})") from None
            raise InputError(source, f"has unreadable MedSynth attributes ({exc})") from None

    def to_attrs(self) -> dict[str, Any]:
        """The attributes as written: JSON text for lists and dicts, the spacing and affine filled in."""
        spacing = np.asarray(self.spacing if self.spacing else (1.0,) * self.spatial_dims, np.float64)
        affine = self.affine if self.affine is not None else np.diag([*spacing, 1.0])
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("label_names", "mask_coding"):
                value = to_json({str(k): v for k, v in value.items()})
            elif f.name in JSON_FIELDS:
                value = to_json(value)
            out[f.name] = value
        out.update(spacing=spacing, affine=np.asarray(affine, np.float64))
        return out

    @property
    def volume(self) -> bool:
        return self.spatial_dims == 3

    @property
    def volume_affine(self) -> np.ndarray | None:
        """The affine when it places samples in the world: a volume's; a 2D file's is its spacing alone."""
        return self.affine if self.volume else None

    @property
    def modality(self) -> str:
        return str(self.normalisation.get("modality", "generic"))

    def shown_spacing(self) -> tuple[float, ...] | None:
        return shown_spacing(self.spacing, self.spatial_dims)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)


def shown_spacing(spacing: tuple[float, ...] | None, spatial_dims: int) -> tuple[float, ...] | None:
    """A file's spacing (x, y[, z]) per axis of a sample as viewers take it: a 2D (H, W) picture's
    (rows, cols) = (y, x); a volume, shown as (X, Y, Z), keeps (x, y, z)."""
    if not spacing:
        return None
    return tuple(spacing)[::-1] if spatial_dims != 3 else tuple(spacing)


def _check_medsynth(f: h5py.File, path: str | Path) -> h5py.File:
    if f.attrs.get("format") != FORMAT or IMAGES not in f:
        f.close()
        raise InputError(path, NOT_MEDSYNTH)
    return f


def open_file(path: str | Path) -> h5py.File:
    """Open a MedSynth HDF5 file read-only, or fail with one line naming it."""
    try:
        # No file lock: the app reads files that a sampling job is still appending to.
        f = h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise InputError(path, "does not exist") from None
    except OSError as exc:
        raise InputError(path, f"is not a readable HDF5 file ({exc.args[0] if exc.args else exc})") from None
    return _check_medsynth(f, path)


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
    return _check_medsynth(f, path)


def n_complete(f: h5py.File) -> int:
    """How many samples a reader may trust: the rest are planned but not (or not yet) written.

    `read_header(f).n_complete` says the same after checking the whole file; this reads the one attribute
    (and the rows it counts) alone, for readers that poll.
    """
    rows = f[IMAGES].shape[0] if f[IMAGES].shape else 0
    return _check_count(f.filename, _whole(f.filename, "n_complete", f.attrs.get("n_complete", rows)), rows)


def _check_count(path: str | Path, n: int, rows: int) -> int:
    if n < 0:
        raise InputError(path, f"attribute 'n_complete' is {n}; a count of samples cannot be negative")
    if n > rows:
        raise InputError(path, f"attribute 'n_complete' says {n} samples are complete, but /images has room for "
                               f"only {rows}")
    return n


def read_header(f: h5py.File) -> Header:
    """The header, after checking that the file holds what it declares: every reader's first call.

    The checks read no images: the stored types and row counts of the per-sample datasets against n_complete,
    that the first n_complete rows of each are stored in the file itself (a few KB cannot hold 10^8 images),
    and the class labels against the class names, so nothing later allocates or builds per class from a lie.
    """
    path = f.filename
    shape = tuple(f[IMAGES].shape)
    if len(shape) not in (4, 5) or min(shape[1:]) < 1:
        raise InputError(path, f"/images has shape {shape}; expected (N, C, H, W) or (N, C, D, H, W)")
    h = Header.from_attrs(f.attrs, images_shape=shape, source=path)
    if h.spatial_dims != len(shape) - 2:
        raise InputError(path, f"attribute 'spatial_dims' is {h.spatial_dims}, but /images holds "
                               f"{len(shape) - 2}D samples {shape[2:]}")
    n = _check_count(path, h.n_complete, shape[0])
    check_numeric(path, "/images values", f[IMAGES].dtype, "fiu")
    for name, kinds in ((MASKS, "iub"), (LABELS, "iu"), (SEEDS, "iu")):
        if name in f:
            check_numeric(path, f"/{name} values", f[name].dtype, kinds)
    if PROMPTS in f:
        _prompt_rows(f)
    if MASKS in f and tuple(f[MASKS].shape[1:]) != shape[2:]:
        raise InputError(path, f"/masks has shape {tuple(f[MASKS].shape)}, which does not match /images {shape}")
    for name in PER_SAMPLE:
        _check_rows(path, name, (f[name].shape or (0,))[0] if name in f else n, n)
    for name in (IMAGES, MASKS):  # the bulk a reader allocates; the per-sample numbers are a few bytes a row
        if name in f:
            _check_stored(path, f[name], n)
    if LABELS in f and n:
        check_labels(path, f[LABELS][:n], h.class_names)
    return h


def _check_rows(path: str | Path, name: str, rows: int, n: int) -> None:
    if rows < n:
        raise InputError(path, f"/{name} has {rows} rows but attribute 'n_complete' says {n} samples are complete")


def _check_stored(path: str | Path, d: h5py.Dataset, n: int) -> None:
    """Refuse a dataset whose first `n` rows the file does not store: HDF5 reads unstored rows as zeros, so a
    small file could otherwise declare (and make a reader allocate, or an export write) any number of samples."""
    name = d.name.lstrip("/")
    plist = d.id.get_create_plist()
    if d.is_virtual or plist.get_external_count():
        raise InputError(path, f"/{name} keeps its data in other files; a MedSynth file holds its own data")
    if n == 0:
        return
    declared = n * _row_bytes(d)
    layout = plist.get_layout()
    if layout == h5py.h5d.CHUNKED:
        chunks = d.chunks
        per_row_block = int(np.prod([-(-s // c) for s, c in zip(d.shape[1:], chunks[1:])], dtype=np.int64))
        needed = -(-n // chunks[0]) * per_row_block
        have = d.id.get_num_chunks()
        stored_rows = min(n, have // max(per_row_block, 1) * chunks[0])
    elif layout == h5py.h5d.CONTIGUOUS:
        needed, have = 1, int(d.id.get_storage_size() >= d.size * d.dtype.itemsize)
        stored_rows = n if have else 0
    else:  # compact: stored in the header itself
        return
    if have < needed:
        raise InputError(path, f"declares {n} complete samples ({declared / GIB:.1f} GiB of /{name}) but stores "
                               f"data for {'none' if stored_rows == 0 else f'at most {stored_rows}'} of them")


def _row_bytes(d: h5py.Dataset, dtype: Any = None) -> int:
    """Bytes of one sample of `d` in memory, as stored or as `dtype`."""
    return int(np.prod(d.shape[1:], dtype=np.int64)) * np.dtype(dtype or d.dtype).itemsize


def attrs_dict(f: h5py.File) -> dict[str, Any]:
    """Every root attribute, JSON text decoded, as plain Python: for provenance records and checks that want
    the file's own words (use `read_header` for its meaning)."""
    out = {key: _plain(value) for key, value in f.attrs.items()}
    for key in JSON_FIELDS:
        if key in out:
            out[key] = _json_attr(f.filename, key, out[key])
    return out


def read_names(f: h5py.File) -> list[str] | None:
    """Each sample's provenance ("case_003 · z 41") when the file records it (/names), else None."""
    if NAMES not in f:
        return None
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in f[NAMES][:]]


def _prompt_rows(f: h5py.File) -> h5py.Dataset:
    """/prompts, after checking it holds one text a row: anything else (numbers, a table) would read as
    nonsense prompts, so it is refused with one line naming the file."""
    d = f[PROMPTS]
    if not isinstance(d, h5py.Dataset) or h5py.check_string_dtype(d.dtype) is None or len(d.shape) != 1:
        what = (f"{d.dtype} values of shape {tuple(d.shape)}" if isinstance(d, h5py.Dataset) else "a group")
        raise InputError(f.filename, f"/prompts holds {what}; expected one text per sample")
    return d


def _texts(values: Any) -> list[str]:
    # Variable-length text reads as bytes; a damaged byte shows as a replacement mark rather than failing the file.
    values = np.atleast_1d(values).tolist()
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def read_prompts(f: h5py.File, start: int = 0) -> list[str] | None:
    """The prompt each complete sample from `start` on was drawn with (/prompts), or None when the file has none
    (every file from before text-prompted models); InputError naming the file when /prompts is not one text a row.
    `start` lets a reader that polls a growing file read only the new samples' prompts."""
    if PROMPTS not in f:
        return None
    d = _prompt_rows(f)
    n = n_complete(f)
    _check_rows(f.filename, PROMPTS, len(d), n)
    return _texts(d[start:n]) if n > start else []


@dataclass
class Sample:
    """One complete sample as stored: image (C, H, W) or (C, D, H, W); mask (H, W) or (D, H, W)."""

    index: int
    image: np.ndarray
    mask: np.ndarray | None = None
    label: int | None = None
    seed: int | None = None
    name: str | None = None
    prompt: str | None = None  # the text it was drawn with, when the file records prompts


def read_sample(f: h5py.File, index: int) -> Sample:
    """Sample `index`, or InputError naming the file when it is not (yet) complete."""
    n = n_complete(f)
    if not 0 <= index < n:
        raise InputError(f.filename, f"has no complete sample {index} (0..{n - 1})")
    names = read_names(f)
    prompts = _prompt_rows(f) if PROMPTS in f else None
    return Sample(index, f[IMAGES][index], f[MASKS][index] if MASKS in f else None,
                  int(f[LABELS][index]) if LABELS in f else None, int(f[SEEDS][index]) if SEEDS in f else None,
                  names[index] if names is not None and index < len(names) else None,
                  _texts(prompts[index])[0] if prompts is not None and index < len(prompts) else None)


def read_metrics(f: h5py.File) -> tuple[dict[str, float], dict[str, Any]]:
    """(figures, summary) of /metrics; both empty before any evaluation."""
    if METRICS not in f:
        return {}, {}
    attrs = f[METRICS].attrs
    figures = {}
    for key, value in attrs.items():
        if key != SUMMARY:
            try:
                figures[key] = float(value)
            except (TypeError, ValueError):
                raise InputError(f.filename, f"attribute {key!r} of /metrics is {_plain(value)!r}, not a number") \
                    from None
    summary = _json_attr(f.filename, SUMMARY, _plain(attrs.get(SUMMARY, "{}")) or "{}", " of /metrics")
    if not isinstance(summary, dict):
        raise InputError(f.filename, f"attribute {SUMMARY!r} of /metrics holds a JSON {type(summary).__name__}, "
                                     "not a mapping")
    return figures, summary


def write_metrics(f: h5py.File, figures: dict[str, float], summary: dict[str, Any] | None = None, *,
                  arrays: dict[str, np.ndarray] | None = None, array_attrs: dict[str, str] | None = None,
                  replace: bool = False) -> None:
    """Add figures, summary entries and per-sample arrays to /metrics, keeping what is there under other names.

    `replace` drops the earlier figures and summary first: a new evaluation is one whole set of results,
    never mixed with an older one's. `array_attrs` annotates every array written (e.g. the data it was
    measured against).
    """
    with destination.translating(f.filename):
        _write_metrics(f, figures, summary, arrays, array_attrs, replace)


def _write_metrics(f: h5py.File, figures: dict[str, float], summary: dict[str, Any] | None,
                   arrays: dict[str, np.ndarray] | None, array_attrs: dict[str, str] | None, replace: bool) -> None:
    group = f.require_group(METRICS)
    _, merged = read_metrics(f)
    if replace:
        merged = {}
        for key in [k for k in group.attrs if k != SUMMARY]:
            del group.attrs[key]
    for key, value in figures.items():
        group.attrs[key] = value
    merged.update(figures if summary is None else summary)
    group.attrs[SUMMARY] = to_json(merged)
    for name, values in (arrays or {}).items():
        if name in group:
            del group[name]
        group.create_dataset(name, data=values)
        for key, text in (array_attrs or {}).items():
            group[name].attrs[key] = text
    f.flush()


def read_image_set(path: str | Path) -> ImageSet:
    """The complete samples of a MedSynth file (images or volumes) as an ImageSet."""
    with open_file(path) as f:
        h = read_header(f)
        n = h.n_complete
        need = n * (_row_bytes(f[IMAGES], np.float32) + (_row_bytes(f[MASKS]) if MASKS in f else 0))
        try:
            images = f[IMAGES][:n].astype(np.float32, copy=False)
            masks = f[MASKS][:n] if MASKS in f else None
        except MemoryError:
            raise InputError(path, f"reading its {n} samples needs about {need / GIB:.1f} GiB of memory, more than "
                                   "this machine can give") from None
        labels = f[LABELS][:n].astype(np.int64) if LABELS in f else None
        names = read_names(f)
        prompts = read_prompts(f)
    s = ImageSet(images=images, masks=masks, labels=labels, class_names=h.class_names, label_names=h.label_names,
                 mask_coding=h.mask_coding, spacing=h.spacing, modality=h.modality, source=str(path),
                 kind=h.kind, names=None if names is None else names[:n], affine=h.volume_affine,
                 prompts=prompts)
    return validate(s)
