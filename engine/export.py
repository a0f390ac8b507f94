"""Exports of a MedSynth file: PNG pairs, loose NIfTI files, and the nnU-Net raw layout a segmentation model trains on.

Every export also writes `samples.csv` (file, mask, seed, class) so that what a sample
is, and how to make it again, survives outside the HDF5 file; an nnU-Net dataset keeps it
beside its folder, where nnU-Net's own checks do not meet a file they do not know.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.data.dataset import to_user_coding
from engine.errors import InputError
from engine.io import destination
from engine.io.export_nifti import NiftiExport
from engine.io.medsynth_h5 import IMAGES, LABELS, MASKS, METRICS, NN_CORR, SEEDS, Header, open_file, read_header
from engine.settings import ExportFormat

# nnU-Net v2 finds a raw dataset only as nnUNet_raw/DatasetNNN_Name (nnunetv2.utilities.dataset_name_id_conversion).
NNUNET_FOLDER = re.compile(r"^Dataset(?P<id>\d{3})_(?P<name>.+)$")
NNUNET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Ids 500-999 are for the user's own datasets; nnU-Net's published ones sit below.
NNUNET_FIRST_ID = 501


def _to_uint(image: np.ndarray, norm: dict, bits: int) -> np.ndarray:
    """Data units → 8- or 16-bit integers: the values themselves when the data were whole numbers of that
    depth (norm["bits"]), so a 12-bit X-ray stays 0..4095; else the normalisation range stretched over them."""
    top = (1 << bits) - 1
    if int(norm.get("bits") or 0) == bits:
        return np.clip(np.round(image), 0, top).astype(np.uint16 if bits == 16 else np.uint8)
    lo, hi = float(norm.get("lo", image.min())), float(norm.get("hi", image.max()))
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * top
    return np.round(scaled).astype(np.uint16 if bits == 16 else np.uint8)


class PngExport:
    """images/NAME.png (16-bit gray or 8-bit colour over the normalisation range) and masks/NAME.png in the
    user's mask coding."""

    def __init__(self, out: Path, header: Header, has_masks: bool) -> None:
        self.out, self.norm, self.coding = out, header.normalisation, header.mask_coding
        (out / "images").mkdir()
        if has_masks:
            (out / "masks").mkdir()

    def write(self, name: str, image: np.ndarray, mask: np.ndarray | None) -> tuple[list[str], str]:
        # Gray at the data's own depth (16 bits when it has none); colour at 8, the only depth PIL writes it in.
        pixels = _to_uint(image, self.norm, int(self.norm.get("bits") or 16) if image.shape[0] == 1 else 8)
        pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
        Image.fromarray(pixels).save(self.out / "images" / f"{name}.png")
        if mask is None:
            return [f"images/{name}.png"], ""
        # In the user's coding: grey-level masks come back as the grey values they were drawn with.
        Image.fromarray(to_user_coding(mask, self.coding)).save(self.out / "masks" / f"{name}.png")
        return [f"images/{name}.png"], f"masks/{name}.png"

    def finish(self) -> None:
        pass


def _check(path: str | Path, out: Path, fmt: str) -> None:
    if fmt not in ExportFormat.values():
        raise InputError(path, f"cannot be exported as {fmt!r}; formats are {', '.join(ExportFormat.values())}")
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file; choose an empty or new folder")
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "exists and is not empty; choose an empty or new folder")


def nnunet_folder(to: Path, dataset_id: int | None = None, name: str | None = None) -> Path:
    """The DatasetNNN_Name folder an nnU-Net export writes. `to` is nnUNet_raw (the folder is made in
    it, the id the next free one from 501 unless given), or already a DatasetNNN_Name folder."""
    own = NNUNET_FOLDER.match(to.name)
    if own:
        if dataset_id not in (None, int(own["id"])) or name not in (None, own["name"]):
            raise InputError(to, "is itself a DatasetNNN_Name folder; give its parent (nnUNet_raw) to choose "
                                 "another id or name")
        return to
    name = name or "MedSynth"
    if not NNUNET_NAME.match(name):
        raise InputError(None, f"dataset name {name!r}: use letters, digits, '_', '-' or '.' (nnU-Net folder names)")
    taken = {int(m["id"]): p for p in (to.iterdir() if to.is_dir() else ()) if (m := NNUNET_FOLDER.match(p.name))}
    if dataset_id is None:
        dataset_id = next((i for i in range(NNUNET_FIRST_ID, 1000) if i not in taken), None)
        if dataset_id is None:
            raise InputError(to, "holds a dataset for every id 501-999; give a free dataset id")
    if not 1 <= dataset_id <= 999:
        raise InputError(None, f"dataset id {dataset_id}: nnU-Net ids have three digits, 1-999")
    folder = to / f"Dataset{dataset_id:03d}_{name}"
    if dataset_id in taken and taken[dataset_id] != folder:
        # nnU-Net looks datasets up by id alone, so two folders with one id make both ambiguous.
        raise InputError(taken[dataset_id], f"already has dataset id {dataset_id}; choose another id")
    return folder


def nearest_correlations(path: str | Path, f: Any, n: int, train_data: str | Path | None) -> np.ndarray:
    """Each sample's correlation with its nearest training image: computed against `train_data`
    when given, else the ones `medsynth evaluate` stored in the file."""
    if train_data is not None:
        from engine.evaluation.inputs import load_training_like
        from engine.evaluation.metrics.memorization import nearest_training

        synth, train = load_training_like(path, train_data)
        return nearest_training(synth[:n], train)[1]
    stored = f.get(f"{METRICS}/{NN_CORR}")
    if stored is None or stored.shape[0] < n:
        raise InputError(path, "has no nearest-training-image correlations for every sample; run medsynth evaluate "
                               "on it first, or pass --train-data DATA")
    return np.asarray(stored[:n], np.float64)


def export(path: str | Path, to: str | Path, fmt: str,
           progress: Callable[[int, int], None] | None = None, *, max_corr: float | None = None,
           train_data: str | Path | None = None, dataset_id: int | None = None,
           dataset_name: str | None = None) -> dict:
    """Write the complete samples of MedSynth file `path` into the new or empty folder `to` as `fmt`.

    nnU-Net: `to` is the nnUNet_raw folder and the dataset goes into `DatasetNNN_Name` inside it
    (see `nnunet_folder`), with `samples.csv` beside it as `DatasetNNN_Name.samples.csv`, outside
    what nnU-Net reads. With `max_corr`, samples whose nearest training image correlates above it
    are left out, so data can be shared without sharing a patient's image. Every refusal comes
    before the folder is made, so a refused export leaves nothing behind.

    The files are written into `.NAME.partial` beside the folder and it is renamed to `to` when all are
    written, so a folder of that name is always a whole export; a full or read-only disk is one line
    naming the folder, with the partial folder removed. A second export into the same folder is refused
    while the first runs; a killed export's partial folder is removed by the next one.
    """
    if fmt != "nnunet" and (dataset_id is not None or dataset_name is not None):
        raise InputError(None, "a dataset id or name is for the nnunet format only")
    out = nnunet_folder(Path(to), dataset_id, dataset_name) if fmt == "nnunet" else Path(to)
    table_path = out.with_name(f"{out.name}.samples.csv") if fmt == "nnunet" else out / "samples.csv"
    _check(path, out, fmt)
    if table_path.exists():
        raise InputError(table_path, "already exists; choose another dataset id or folder")
    if max_corr is not None and not -1.0 <= max_corr <= 1.0:
        raise InputError(None, f"--max-corr {max_corr} is not a correlation between -1 and 1")
    with open_file(path) as f:
        h = read_header(f)
        n = h.n_complete
        if n == 0:
            raise InputError(path, "holds no complete samples")
        corr = nearest_correlations(path, f, n, train_data) if max_corr is not None else None
        keep = np.ones(n, bool) if corr is None else corr <= max_corr
        if not keep.any():
            raise InputError(path, f"every sample correlates above {max_corr} with a training image; nothing to "
                                   "export")
        volumes = h.volume
        has_masks = MASKS in f
        if fmt == "png" and volumes:
            raise InputError(path, "holds volumes; PNG is for 2D images, export volumes with --format nifti or nnunet")
        if fmt == "nnunet" and not has_masks:
            raise InputError(path, "has no masks; an nnU-Net dataset needs a label map for every case")
        destination.check_writable(out, _rough_bytes(f, int(keep.sum()), fmt), folder=True)
        with destination.writer_lock(out):
            work = destination.temp_beside(out, hidden=True)
            destination.remove_quietly(work)  # a killed export's: the lock says no export is writing it now
            # samples.csv goes in the folder, renamed with it; nnU-Net's beside it, renamed right after it.
            table = work / table_path.name if fmt != "nnunet" else destination.temp_beside(table_path)
            try:
                with destination.translating(out):
                    written, rows = _write_all(path, f, h, n, keep, corr, fmt, work, has_masks, progress)
                    _write_table(table, rows, corr is not None)
                    if out.exists():
                        out.rmdir()  # checked empty above; a rename replaces no folder on every system
                    destination.commit(work, out)
                    if fmt == "nnunet":
                        destination.commit(table, table_path)
            except BaseException:
                destination.remove_quietly(work)
                destination.remove_quietly(table)
                raise
    return {"out": str(out), "n": written, "left_out": int(n - written), "format": fmt, "samples_csv": str(table_path)}


def _rough_bytes(f: Any, n: int, fmt: str) -> int:
    """A floor on what the export will take: compressed files, taken as a quarter of the raw data. Only a
    destination that clearly cannot hold it is refused up front; a tighter one is found out while writing."""
    per = int(np.prod(f[IMAGES].shape[1:])) * (2 if fmt == "png" else 4)
    if MASKS in f:
        per += int(np.prod(f[MASKS].shape[1:]))
    return n * per // 4


def _write_all(path: str | Path, f: Any, h: Header, n: int, keep: np.ndarray, corr: np.ndarray | None, fmt: str,
               out: Path, has_masks: bool, progress: Callable[[int, int], None] | None) -> tuple[int, list]:
    out.mkdir(parents=True)
    writer = (PngExport(out, h, has_masks) if fmt == "png" else
              NiftiExport(out, h, int(f[IMAGES].shape[1]), fmt == "nnunet", Path(path).name))
    seeds = f[SEEDS][:n] if SEEDS in f else None
    labels = f[LABELS][:n] if LABELS in f else None
    rows = []
    written = 0
    # One sample in memory at a time: a file of volumes can be many times the RAM.
    for i in range(n):
        if not keep[i]:
            continue
        name = f"synth_{i:05d}"  # the file's own index, so names still point at the HDF5 sample
        files, mask_file = writer.write(name, f[IMAGES][i], f[MASKS][i] if has_masks else None)
        label = None if labels is None else int(labels[i])
        rows.append([";".join(files), mask_file, "" if seeds is None else int(seeds[i]),
                     "" if label is None else label,
                     "" if label is None or not 0 <= label < len(h.class_names) else h.class_names[label]]
                    + ([] if corr is None else [round(float(corr[i]), 4)]))
        written += 1
        if progress:
            progress(written, int(keep.sum()))
    writer.finish()
    return written, rows


def _write_table(path: Path, rows: list, gated: bool) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        table = csv.writer(fh)
        # nn_corr only when the export was gated by it: the figure the decision rested on.
        table.writerow(["file", "mask", "seed", "class_index", "class_name"] + (["nn_corr"] if gated else []))
        table.writerows(rows)
