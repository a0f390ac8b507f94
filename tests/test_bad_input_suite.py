"""The bad-input suite: every subcommand × every kind of input, each broken the way a corrupt download, a wrong
export, a typo or a crafted file breaks it, made here by the test.

Every case must end the same way: exit code 2, exactly one line on stderr naming the file (or the flag) and the
fault, no traceback, and nothing written (the whole tree is snapshotted before and after). The CLI runs in-process
(`medsynth.cli.main`) for speed; a few cases run `python -m medsynth` as a process to prove the same end to end.

`medsynth FILE` is not in the table: it opens the app, which shows a refusal as words in a dialog
(tests/test_gui_*), not as a line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.data.phantoms import make_phantoms
from engine.io.medsynth_writer import write_image_set
from tests.test_readers_hostile import medmnist, npy_member, patched_nifti, picture_folder, volume, write_npz

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = "[model]\nimage_size = 16\nblock_out_channels = [16, 32]\nattention_levels = [false, true]\n"
TINY_TOML = TINY_MODEL + "[train]\nsteps = 2\nbatch = 4\ncheckpoint_every = 2\nlog_every = 1\nwarmup_steps = 1\n"


# ---------------------------------------------------------------- what a case is


@dataclass
class Case:
    """One bad input: `make(tmp, ctx)` writes it under tmp and returns the command line and the words the one error
    line must hold (the file's or flag's name first, then the fault)."""

    id: str
    kind: str
    make: Callable[[Path, Ctx], tuple[list[str], list[str]]]


class Ctx:
    """Inputs the cases break, made on first use in the case's own folder."""

    def __init__(self, tmp: Path, run: Callable[[], Path]) -> None:
        self.tmp, self._run = tmp, run

    def real_h5(self, name: str = "real.h5", kind: str = "real") -> Path:
        s = make_phantoms(16, size=16, seed=3)
        s.kind = kind
        return write_image_set(self.tmp / name, s)

    def toml(self, text: str = TINY_TOML, name: str = "tiny.toml") -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def run(self) -> Path:
        """A copy of the session's tiny trained run, to break."""
        copy = self.tmp / "run"
        if not copy.exists():
            shutil.copytree(self._run(), copy)
        return copy

    def train(self, data: Path, *flags: str) -> list[str]:
        return ["train", str(data), "--out", str(self.tmp / "out"), "--config", str(self.toml()), *flags]

    def train3d(self, data: Path) -> list[str]:
        return ["train", str(data), "--out", str(self.tmp / "out"), "--preset", "demo-3d", "--steps", "1"]

    def study(self) -> tuple[Path, Path]:
        from engine.evaluation.reader_study import create_study

        made = create_study(self.real_h5(), self.real_h5("synth.h5", "synthetic"), self.tmp / "study", 3, 3, 0)
        return made.folder, made.key


def _h5_edit(path: Path, change: Callable[[h5py.File], None]) -> Path:
    with h5py.File(path, "a") as f:
        change(f)
    return path


def _replace(f: h5py.File, name: str, data: object, **kw: object) -> None:
    del f[name]
    f.create_dataset(name, data=data, **kw)


def _dicom(tmp: Path, change: Callable[[object], None]) -> Path:
    import pydicom

    from tests.test_dicom import write_series

    v = np.full((12, 10, 4), -1000.0, np.float32)
    v[3:9, 3:7] = 40.0
    write_series(tmp / "ct", v)
    path = sorted((tmp / "ct").iterdir())[1]
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)
    return tmp / "ct"


# ---------------------------------------------------------------- the table


def _npz_labels(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = write_npz(t / "pathmnist.npz", train_images=medmnist(), train_labels=np.array([0, 1, 10**15, 2, 0, 1]))
    return c.train(p), [p.name, "train_labels"]


def _npz_bomb(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    import zipfile

    p = t / "bomb.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train_images.npy", npy_member((10**7, 28, 28), "|u1", bytes(784)))
    return c.train(p), [p.name, "declares"]


def _npz_object(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = t / "obj.npz"
    np.savez(p, train_images=np.array([{"a": 1}] * 4, dtype=object))
    return c.train(p), [p.name, "cannot be read"]


def _csv_labels(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    root = picture_folder(t / "xray", ["0", "1", "1000000000000", "1"])
    return c.train(root), ["labels.csv", "is not a class index"]


def _corrupt_png(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    root = picture_folder(t / "kvasir", ["0", "1", "0"])
    (root / "images" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return c.train(root), ["img1.png", "cannot be read"]


def _csv_unknown_stem(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    root = picture_folder(t / "isic", ["0", "1"])
    with (root / "labels.csv").open("a") as f:
        f.write("ghost,1\n")
    return c.train(root), ["labels.csv", "ghost"]


def _nifti_huge(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = patched_nifti(t / "ct.nii.gz", np.zeros((4, 4, 4), np.int16), dim=(30000, 30000, 30000))
    return c.train(p), [p.name, "declares"]


def _nifti_singular(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = patched_nifti(t / "ct.nii.gz", volume(), qform_code=0, sform_code=1, srow_y=[0, 0, 0, 0])
    return c.train(p), [p.name, "singular"]


def _nifti_nan_pixdim_3d(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = patched_nifti(t / "brain.nii.gz", volume(), qform_code=1, sform_code=0, pixdim=[1, np.nan, 1])
    return c.train3d(p), [p.name, "NaN"]


def _nifti_zero_pixdim_3d(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = patched_nifti(t / "brain.nii.gz", volume(), qform_code=0, sform_code=0, pixdim=[0, 0, 0])
    return c.train3d(p), [p.name, "voxel size"]


def _nifti_one_voxel_3d(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = patched_nifti(t / "dot.nii.gz", np.ones((1, 1, 1), np.float32))
    return c.train3d(p), [p.name, "(1, 1, 1)"]


def _nifti_not_nifti(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = t / "scan.nii.gz"
    p.write_bytes(b"not a nifti at all" * 10)
    return c.train(p), [p.name, "cannot be read"]


def _dicom_slope0(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    return c.train3d(_dicom(t, lambda ds: setattr(ds, "RescaleSlope", 0))), [".dcm", "RescaleSlope 0"]


def _dicom_no_pixels(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    return c.train3d(_dicom(t, lambda ds: delattr(ds, "PixelData"))), [".dcm", "no pixel data"]


def _dicom_truncated_info(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    def cut(ds: object) -> None:
        ds.PixelData = ds.PixelData[:7]

    return ["info", str(_dicom(t, cut))], [".dcm", "pixel data"]


def _info_nifti_singular(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = patched_nifti(t / "ct.nii.gz", volume(), qform_code=0, sform_code=1, srow_y=[0, 0, 0, 0])
    return ["info", str(p)], [p.name, "singular"]


def _info_npz_labels(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = write_npz(t / "organ.npz", train_images=medmnist(), train_labels=np.array([0, 1, 10**15, 2, 0, 1]))
    return ["info", str(p)], [p.name, "train_labels"]



def _eval_real_npz(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = write_npz(t / "test.npz", test_images=medmnist(), test_labels=np.array([0, 1, 10**15, 2, 0, 1]))
    return ["evaluate", str(c.real_h5("synth.h5", "synthetic")), "--real", str(p), "--no-utility",
            "--train-data", str(c.real_h5())], [p.name, "labels"]


def _export_train_data_csv(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    root = picture_folder(t / "xray", ["0", "1", "1000000000000", "1"])
    return ["export", str(c.real_h5("synth.h5", "synthetic")), "--to", str(t / "exported"), "--format", "png",
            "--max-corr", "0.9", "--train-data", str(root)], ["labels.csv", "is not a class index"]


def _eval_train_data_nifti(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = patched_nifti(t / "ct.nii.gz", volume(), qform_code=1, sform_code=0, pixdim=[1, np.nan, 1])
    return ["evaluate", str(c.real_h5("synth.h5", "synthetic")), "--real", str(c.real_h5()), "--no-utility",
            "--train-data", str(p)], [p.name, "NaN"]


def _study_create_nifti(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = patched_nifti(t / "ct.nii.gz", volume())
    return ["reader-study", "create", str(p), str(c.real_h5("synth.h5", "synthetic")), "--out", str(t / "study"),
            "--n-real", "2", "--n-synth", "2"], [p.name]


def _sample_from_npz(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = write_npz(t / "organ.npz", train_images=medmnist())
    return ["sample", str(p), "--n", "2", "--out", str(t / "s.h5")], [p.name]


def _info_dicom_slope0(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    return ["info", str(_dicom(t, lambda ds: setattr(ds, "RescaleSlope", 0)))], [".dcm", "RescaleSlope 0"]


def _info_corrupt_png(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    argv, words = _corrupt_png(t, c)
    return ["info", argv[1]], words


def _h5_strings(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = _h5_edit(c.real_h5(), lambda f: _replace(f, "images", np.array([b"x"] * 16)))
    return c.train(p), [p.name, "images"]


def _h5_labels_huge(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = _h5_edit(c.real_h5(), lambda f: f["labels"].__setitem__(3, 10**12))
    return c.train(p), [p.name, "label"]


def _h5_rows(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = t / "rows.h5"

    def declare(f: h5py.File) -> None:
        del f["images"]
        f.create_dataset("images", (10**8, 1, 16, 16), np.float32, chunks=(1, 1, 16, 16), compression="gzip")
        f.attrs["n_complete"] = 10**8
        f.attrs["n_planned"] = 10**8

    shutil.copy(c.real_h5(), p)
    _h5_edit(p, declare)
    return c.train(p), [p.name]


def _h5_n_complete_high(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = _h5_edit(c.real_h5("synth.h5", "synthetic"), lambda f: f.attrs.__setitem__("n_complete", 1000))
    return ["export", str(p), "--to", str(t / "exported"), "--format", "png"], [p.name, "n_complete"]


def _h5_n_complete_negative(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = _h5_edit(c.real_h5("synth.h5", "synthetic"), lambda f: f.attrs.__setitem__("n_complete", -5))
    return ["info", str(p)], [p.name, "n_complete"]


def _h5_bad_json(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = _h5_edit(c.real_h5("synth.h5", "synthetic"), lambda f: f.attrs.__setitem__("class_names", "[not json"))
    return ["info", str(p)], [p.name, "class_names"]


def _h5_bad_json_export(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = _h5_edit(c.real_h5("synth.h5", "synthetic"), lambda f: f.attrs.__setitem__("normalisation", "{oops"))
    return ["export", str(p), "--to", str(t / "exported"), "--format", "nifti"], [p.name, "normalisation"]


def _h5_masks_shape(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = _h5_edit(c.real_h5("synth.h5", "synthetic"),
                 lambda f: _replace(f, "masks", np.zeros((16, 8, 8), np.uint8)))
    return ["export", str(p), "--to", str(t / "exported"), "--format", "png"], [p.name, "mask"]


def _h5_junk(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = t / "samples.h5"
    p.write_bytes(b"\x00junk" * 100)
    return ["info", str(p)], [p.name]


def _h5_study_create(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = _h5_edit(c.real_h5("synth.h5", "synthetic"), lambda f: f.attrs.__setitem__("n_complete", 1000))
    return ["reader-study", "create", str(c.real_h5()), str(p), "--out", str(t / "study"), "--n-real", "2",
            "--n-synth", "2"], [p.name]


def _toml(train: str, words: list[str], model: str = TINY_MODEL) -> Callable[[Path, Ctx], tuple[list[str], list[str]]]:
    """A tiny model's TOML whose [train] table is `train` (a few steps unless it says otherwise)."""
    def make(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
        cfg = c.toml(f"{model}[train]\n{train}" + ("" if "steps" in train else "steps = 2\n"), "bad.toml")
        return ["train", str(c.real_h5()), "--out", str(t / "out"), "--config", str(cfg)], ["bad.toml", *words]

    return make


def _run_json(name: str, change: Callable[[dict], None], argv: Callable[[Path, Path], list[str]],
              ) -> Callable[[Path, Ctx], tuple[list[str], list[str]]]:
    """A copy of the tiny run whose `name` (config.json in the run, state.json in its last checkpoint) is changed."""
    def make(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
        run = c.run()
        files = sorted(run.rglob(name))
        path = files[-1]
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))
        return argv(t, run), [name]

    return make


def _resume(t: Path, run: Path) -> list[str]:
    return ["train", "--resume", "--out", str(run), "--steps", "4"]


def _sample(t: Path, run: Path) -> list[str]:
    return ["sample", str(run), "--n", "2", "--steps", "2", "--out", str(t / "s.h5")]


def _flag(sub: str, *flags: str) -> Callable[[Path, Ctx], tuple[list[str], list[str]]]:
    def make(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
        if sub == "train":
            argv = c.train(c.real_h5(), *flags)
        elif sub == "sample":
            argv = [*_sample(t, c.run()), *flags]
        else:
            argv = ["evaluate", str(c.real_h5("synth.h5", "synthetic")), "--real", str(c.real_h5()), "--no-utility",
                    "--train-data", str(c.real_h5("train.h5")), "--max-samples", "8", *flags]
        return argv, [flags[0]]

    return make


def _study_json(text: str) -> Callable[[Path, Ctx], tuple[list[str], list[str]]]:
    def make(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
        folder, key = c.study()
        (folder / "study.json").write_text(text)
        return ["reader-study", "summary", str(folder), "--key", str(key)], ["study.json"]

    return make


def _export_format(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    p = c.real_h5("synth.h5", "synthetic")
    return ["export", str(p), "--to", str(t / "exported"), "--format", "jpeg2000"], ["jpeg2000"]


def _pretrained(break_it: Callable[[Path], tuple[Path, list[str]]]) \
        -> Callable[[Path, Ctx], tuple[list[str], list[str]]]:
    """`train --from-pretrained` on a tiny Stable-Diffusion-format model that `break_it` breaks."""

    def make(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
        from tests.sd_tiny import make_tiny_sd

        path, words = break_it(make_tiny_sd(t / "sd"))
        return ["train", str(c.real_h5()), "--out", str(t / "out"), "--from-pretrained", str(path), "--steps", "1"], \
            words

    return make


def _sd_no_unet(folder: Path) -> tuple[Path, list[str]]:
    shutil.rmtree(folder / "unet")
    return folder, [folder.name, "lacks unet/"]


def _sd_untrusted_ckpt(folder: Path) -> tuple[Path, list[str]]:
    from tests.sd_tiny import write_ckpt

    return write_ckpt(folder, folder.parent / "model.ckpt"), ["model.ckpt", "pickle checkpoint"]


def _sd_single_file_alone(folder: Path) -> tuple[Path, list[str]]:
    from tests.sd_tiny import write_single_file

    alone = folder.parent / "alone"
    alone.mkdir()
    return write_single_file(folder, alone / "model.safetensors"), ["model.safetensors", "diffusers folder"]


def _sd_missing(folder: Path) -> tuple[Path, list[str]]:
    return folder.parent / "sd-v1-5", ["sd-v1-5", "does not exist"]


def _sample_prompts_csv(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    bad = t / "prompts.csv"
    bad.write_text("text,n\nchest x-ray,2\n")
    return ["sample", str(c.run()), "--prompts", str(bad), "--out", str(t / "s.h5")], ["prompts.csv", "prompt"]


def _sample_prompt_own_model(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    return [*_sample(t, c.run()), "--prompt", "a lesion"], ["run", "was not trained from text"]


CASES = [
    # a pretrained Stable Diffusion model, and prompts
    Case("train-pretrained-missing", "pretrained", _pretrained(_sd_missing)),
    Case("train-pretrained-no-unet", "pretrained", _pretrained(_sd_no_unet)),
    Case("train-pretrained-untrusted-ckpt", "pretrained", _pretrained(_sd_untrusted_ckpt)),
    Case("train-pretrained-single-file-alone", "pretrained", _pretrained(_sd_single_file_alone)),
    Case("sample-prompts-csv-no-prompt-column", "pretrained", _sample_prompts_csv),
    Case("sample-prompt-for-a-model-without-text", "pretrained", _sample_prompt_own_model),
    # npz (MedMNIST)
    Case("train-npz-labels-1e15", "npz", _npz_labels),
    Case("train-npz-declares-7.8GB", "npz", _npz_bomb),
    Case("train-npz-object-array", "npz", _npz_object),
    Case("info-npz-labels-1e15", "npz", _info_npz_labels),
    Case("evaluate-real-npz-labels-1e15", "npz", _eval_real_npz),
    # picture folders
    Case("train-labels-csv-1e12", "pictures", _csv_labels),
    Case("train-corrupt-png", "pictures", _corrupt_png),
    Case("train-labels-csv-unknown-stem", "pictures", _csv_unknown_stem),
    Case("export-train-data-labels-csv-1e12", "pictures", _export_train_data_csv),
    Case("info-corrupt-png", "pictures", _info_corrupt_png),
    # NIfTI
    Case("train-nifti-declares-54TB", "nifti", _nifti_huge),
    Case("train-nifti-singular-affine", "nifti", _nifti_singular),
    Case("train3d-nifti-nan-pixdim", "nifti", _nifti_nan_pixdim_3d),
    Case("train3d-nifti-zero-pixdim", "nifti", _nifti_zero_pixdim_3d),
    Case("train3d-nifti-one-voxel", "nifti", _nifti_one_voxel_3d),
    Case("train-nifti-not-nifti", "nifti", _nifti_not_nifti),
    Case("info-nifti-singular-affine", "nifti", _info_nifti_singular),
    Case("evaluate-train-data-nifti-nan-pixdim", "nifti", _eval_train_data_nifti),
    Case("reader-study-create-from-nifti", "nifti", _study_create_nifti),
    Case("sample-from-npz", "npz", _sample_from_npz),
    # DICOM
    Case("train3d-dicom-slope-0", "dicom", _dicom_slope0),
    Case("train3d-dicom-no-pixel-data", "dicom", _dicom_no_pixels),
    Case("info-dicom-truncated-pixels", "dicom", _dicom_truncated_info),
    Case("info-dicom-slope-0", "dicom", _info_dicom_slope0),
    # HDF5
    Case("train-h5-string-images", "hdf5", _h5_strings),
    Case("train-h5-label-1e12", "hdf5", _h5_labels_huge),
    Case("train-h5-declares-1e8-rows", "hdf5", _h5_rows),
    Case("export-h5-n-complete-above-rows", "hdf5", _h5_n_complete_high),
    Case("info-h5-n-complete-negative", "hdf5", _h5_n_complete_negative),
    Case("info-h5-bad-json-class-names", "hdf5", _h5_bad_json),
    Case("export-h5-bad-json-normalisation", "hdf5", _h5_bad_json_export),
    Case("export-h5-masks-wrong-shape", "hdf5", _h5_masks_shape),
    Case("info-h5-junk", "hdf5", _h5_junk),
    Case("reader-study-create-h5-n-complete-above-rows", "hdf5", _h5_study_create),
    # TOML
    Case("train-toml-steps-abc", "toml", _toml('steps = "abc"\n', ["steps"])),
    Case("train-toml-checkpoint-every-0", "toml", _toml("checkpoint_every = 0\n", ["checkpoint_every"])),
    Case("train-toml-lr-fast", "toml", _toml('lr = "fast"\n', ["lr"])),
    Case("train-toml-unknown-key", "toml", _toml("learning_rate = 0.1\n", ["learning_rate"])),
    Case("train-toml-block-out-channels-empty", "toml",
         _toml("", ["block_out_channels"], "[model]\nimage_size = 16\nblock_out_channels = []\n")),
    Case("train-toml-syntax", "toml", _toml("steps = = 2\n", [])),
    # config.json / state.json of a run
    Case("train-resume-config-json-wrong-type", "config.json",
         _run_json("config.json", lambda d: d["train"].update(lr="fast"), _resume)),
    Case("train-resume-config-json-unknown-key", "config.json",
         _run_json("config.json", lambda d: d["train"].update(learning_rate=1), _resume)),
    Case("sample-state-json-nonsense", "state.json",
         _run_json("state.json", lambda d: d.update(step="many", normalisation=[1, 2]), _sample)),
    Case("train-resume-state-json-nonsense", "state.json",
         _run_json("state.json", lambda d: d.update(step="many"), _resume)),
    # study.json
    Case("reader-study-summary-study-json-not-json", "study.json", _study_json("{not json")),
    Case("reader-study-summary-study-json-items-text", "study.json",
         _study_json(json.dumps({"format": "medsynth-reader-study", "items": "many"}))),
    # flags
    Case("train-batch-0", "flags", _flag("train", "--batch", "0")),
    Case("train-lr-negative", "flags", _flag("train", "--lr", "-1")),
    Case("train-size-7", "flags", _flag("train", "--size", "7")),
    Case("train-steps-0", "flags", _flag("train", "--steps", "0")),
    Case("train-memory-limit-negative", "flags", _flag("train", "--memory-limit", "-1")),
    Case("sample-steps-0", "flags", _flag("sample", "--steps", "0")),
    Case("sample-guidance-negative", "flags", _flag("sample", "--guidance", "-5")),
    Case("evaluate-threshold-5", "flags", _flag("evaluate", "--threshold", "5")),
    Case("export-format-unknown", "flags", _export_format),
]
KINDS = {"pretrained", "hdf5", "npz", "pictures", "nifti", "dicom", "toml", "config.json", "state.json", "study.json",
         "flags"}
SUBCOMMANDS = {"train", "sample", "evaluate", "export", "info", "reader-study"}


# A refusal comes before any work, in well under a second once the modules are imported (the `imported` fixture);
# a case that regresses into doing the work (evaluate --threshold 5 used to evaluate for half a minute) fails here
# instead of stalling the suite. Generous: shared CI machines run 2x slower at times.
CASE_SECONDS = 30


def _param(case: Case) -> object:
    marks = [pytest.mark.timeout(CASE_SECONDS, func_only=True)]
    return pytest.param(case, id=case.id, marks=marks)


# ---------------------------------------------------------------- running one case


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with a hash of its bytes, and every folder. Contents, not times: evaluate opens its
    FILE for writing before any work (to refuse a read-only one early), which touches the time and nothing else."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[str((Path(dirpath) / name).relative_to(root))] = "folder"
        for name in filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fault_lines(err: str) -> list[str]:
    """stderr's lines of text: without argparse's usage block (printed above its one error line) and without
    progress bars (a job may draw its bar before the stage that reads the bad input)."""
    lines, usage = [], False
    for line in err.replace("\r", "\n").splitlines():
        if "%|" in line:
            continue
        if line.startswith("usage: "):
            usage = True
            continue
        if usage and line.startswith(" "):
            continue
        usage = False
        if line.strip():
            lines.append(line)
    return lines


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    from medsynth.cli import main

    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # what a user would see: the interpreter's traceback and exit code 1
        return 1, capsys.readouterr().err + traceback.format_exc()
    return rc, capsys.readouterr().err


def check_refusal(rc: int, err: str, words: list[str], before: dict, after: dict) -> None:
    assert "Traceback" not in err, err
    lines = fault_lines(err)
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    created = sorted(set(after) - set(before))
    changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
    assert not created and not changed, (created, changed)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """A run of two training steps of the tiny model, trained on first use: only the run cases need one."""
    made: list[Path] = []

    def get() -> Path:
        if not made:
            from engine.io.load import load_images
            from engine.jobs import Requests
            from engine.training.train import TrainJob
            from tests.conftest import tiny_config

            folder = tmp_path_factory.mktemp("suite")
            # Trained from a file, as a user's run is: --resume reads its data again from the path recorded.
            data = load_images(write_image_set(folder / "data.h5", make_phantoms(16, size=16, seed=1)))
            cfg = tiny_config(steps=2, checkpoint_every=2, log_every=1, warmup_steps=1)
            TrainJob(cfg, folder / "run", data=data).run(lambda ev: None, Requests())
            made.append(folder / "run")
        return made[0]

    return get


@pytest.fixture(scope="module")
def imported() -> None:
    """The subcommands' modules (torch, diffusers, MONAI: seconds), imported once outside any case's time limit."""
    import engine.evaluation.evaluate  # noqa: F401
    import engine.export  # noqa: F401
    import engine.inference.sample  # noqa: F401
    import engine.io.volumes  # noqa: F401
    import engine.training.train  # noqa: F401
    import medsynth.cli  # noqa: F401


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(case: Case, tmp_path: Path,
                                                                 base_run: Callable[[], Path], imported: None,
                                                                 capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "w"
    work.mkdir()
    ctx = Ctx(work, base_run)
    argv, words = case.make(work, ctx)
    before = snapshot(tmp_path)
    rc, err = run_in_process(argv, capsys)
    check_refusal(rc, err, words, before, snapshot(tmp_path))


def test_the_table_covers_every_subcommand_and_every_input_kind() -> None:
    assert {c.kind for c in CASES} == KINDS
    subs = set()
    for c in CASES:
        subs.add(c.id.split("-")[0].removesuffix("3d") if not c.id.startswith("reader-study") else "reader-study")
    assert subs == SUBCOMMANDS, subs
    assert len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- end to end, as a process


def _info_csv_labels(t: Path, c: Ctx) -> tuple[list[str], list[str]]:
    argv, words = _csv_labels(t, c)
    return ["info", argv[1]], words


# `info`, which imports no torch: a process starts in a fraction of a second.
@pytest.mark.parametrize("make", [_info_npz_labels, _info_nifti_singular, _info_csv_labels],
                         ids=["npz", "nifti", "labels-csv"])
def test_a_process_prints_one_line_and_no_traceback(make, tmp_path: Path, base_run: Callable[[], Path]) -> None:
    work = tmp_path / "w"
    work.mkdir()
    argv, words = make(work, Ctx(work, base_run))
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "medsynth", *argv], capture_output=True, text=True, env=env,
                       timeout=120)
    check_refusal(r.returncode, r.stderr, words, before, snapshot(tmp_path))
    assert r.stdout == ""
