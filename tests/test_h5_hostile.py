"""Hostile MedSynth HDF5 files (issue 15, faults 2 and 8): each is made here with h5py, and every command that
reads one (info, export, train, evaluate) refuses it with one line naming the file and the fault, exit code 2,
nothing written: no traceback, no allocation sized by a lie, no export of samples that are not there."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.data.dataset import MAX_CLASSES, ImageSet, check_labels, data_warnings, validate
from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.io.medsynth_h5 import open_file, read_header, read_image_set, read_sample
from engine.io.medsynth_writer import write_image_set
from medsynth.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_TOML = ("[model]\nimage_size = 16\nblock_out_channels = [16, 32]\nattention_levels = [false, true]\n"
             "[train]\nsteps = 1\nbatch = 4\ncheckpoint_every = 1\nlog_every = 1\nwarmup_steps = 1\n")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A proper MedSynth file of 8 labelled phantoms with masks, the base every hostile file is cut from."""
    return write_image_set(tmp_path_factory.mktemp("good") / "good.h5", make_phantoms(8, 16, seed=3))


def hostile(good: Path, folder: Path, name: str, mutate: Callable[[h5py.File], None]) -> Path:
    path = folder / f"{name}.h5"
    shutil.copy(good, path)
    with h5py.File(path, "r+") as f:
        mutate(f)
    return path


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def commands(path: Path, out: Path, good: Path) -> dict[str, list[str]]:
    toml = out / "tiny.toml"
    if not toml.exists():
        toml.write_text(TINY_TOML)
    return {"info": ["info", str(path)],
            "export": ["export", str(path), "--to", str(out / "exported"), "--format", "png"],
            "train": ["train", str(path), "--out", str(out / "run"), "--config", str(toml), "--device", "cpu"],
            "evaluate": ["evaluate", str(path), "--real", str(good), "--no-utility", "--max-samples", "8"]}


def refused(capsys, argv: list[str], folder: Path, *words: str) -> str:
    """Run the CLI in-process: exit 2, one stderr line naming the file and every word of the fault, nothing
    new in `folder`."""
    capsys.readouterr()
    before = tree(folder)
    assert main(argv) == 2
    # A progress bar drawn before the refusal (evaluate's stages) is not an error line.
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not re.search(r"\d+%\|", line)]
    assert len(err) == 1, err
    line = err[0]
    assert "Traceback" not in line and argv[1] in line, line
    for word in words:
        assert word in line, (word, line)
    assert tree(folder) == before
    return line


# -- fault 2: a file that declares far more than it holds --------------------------------------------------------

def _hundred_million_rows(f: h5py.File) -> None:
    for key in list(f):
        del f[key]
    f.create_dataset("images", (10 ** 8, 1, 32, 32), np.float32, chunks=(1, 1, 32, 32), compression="gzip")
    del f.attrs["n_complete"], f.attrs["n_planned"]


@pytest.mark.parametrize("command", ["info", "export", "train", "evaluate"])
def test_a_few_kilobytes_declaring_ten_to_the_eight_rows_is_refused_before_any_read(good, tmp_path, capsys, command):
    path = hostile(good, tmp_path, "rows", _hundred_million_rows)
    assert path.stat().st_size < 32 * 1024
    t0 = time.perf_counter()
    line = refused(capsys, commands(path, tmp_path, good)[command], tmp_path, "100000000", "381.5 GiB",
                   "stores data for none")
    # Refused from the header alone: no 381 GiB allocation, no 10^8 PNGs of zeros.
    assert time.perf_counter() - t0 < 20, line


def test_rows_stored_only_in_part_are_counted(good, tmp_path):
    def one_row_written(f: h5py.File) -> None:
        del f["images"]
        d = f.create_dataset("images", (1000, 1, 16, 16), np.float32, chunks=(1, 1, 16, 16), compression="gzip")
        d[0] = 1.0
        for key in {"masks", "labels", "seeds", "names"} & set(f):
            del f[key]
        f.attrs["n_complete"] = f.attrs["n_planned"] = 1000

    path = hostile(good, tmp_path, "part", one_row_written)
    with open_file(path) as f, pytest.raises(InputError, match=r"declares 1000 complete samples .* at most 1 of"):
        read_header(f)


def test_a_contiguous_dataset_never_written_is_refused(good, tmp_path):
    def unwritten(f: h5py.File) -> None:
        del f["masks"]
        f.create_dataset("masks", (8, 16, 16), np.uint8)  # contiguous: allocated only when written

    path = hostile(good, tmp_path, "unwritten", unwritten)
    with open_file(path) as f, pytest.raises(InputError, match=r"/masks\) but stores data for none"):
        read_header(f)


def test_data_in_another_file_is_refused(good, tmp_path):
    outside = tmp_path / "outside.raw"
    np.zeros((8, 1, 16, 16), np.float32).tofile(outside)

    def external(f: h5py.File) -> None:
        del f["images"]
        f.create_dataset("images", (8, 1, 16, 16), np.float32, external=[(str(outside), 0, h5py.h5f.UNLIMITED)])

    path = hostile(good, tmp_path, "external", external)
    with open_file(path) as f, pytest.raises(InputError, match="keeps its data in other files"):
        read_header(f)


READ_UNDER_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
from engine.errors import InputError
from engine.io.medsynth_h5 import read_image_set
try:
    read_image_set(sys.argv[1])
except InputError as exc:
    print(exc)
    sys.exit(2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit via RLIMIT_AS")
def test_a_file_that_truly_stores_more_than_memory_holds_is_refused_with_the_need(tmp_path):
    # 1500 stored (compressed) images of 4 MiB each: 5.9 GiB as float32, read under a 3 GiB address space.
    path = tmp_path / "big.h5"
    chunk = np.zeros((1, 1, 1024, 256), np.float32)
    with h5py.File(path, "w") as f:
        f.attrs.update(format="medsynth", n_complete=1500, n_planned=1500, spatial_dims=2)
        d = f.create_dataset("images", (1500, 1, 1024, 1024), np.float32, chunks=chunk.shape, compression="gzip")
        d[0, :, :, :256] = chunk[0]  # compress one chunk with h5py, then store its bytes everywhere
        _, raw = d.id.read_direct_chunk((0, 0, 0, 0))
        for i in range(1500):
            for j in range(4):
                d.id.write_direct_chunk((i, 0, 0, 256 * j), raw)
    assert path.stat().st_size < 64 * 1024 ** 2
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", READ_UNDER_LIMIT, str(path), str(3 * 1024 ** 3)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    assert str(path) in r.stdout and "needs about 5.9 GiB of memory" in r.stdout, r.stdout
    assert resource.getrlimit(resource.RLIMIT_AS)  # the limit was the child's alone


# -- fault 2: class labels that would make one class per index ---------------------------------------------------

@pytest.mark.parametrize("label", [-1, 10 ** 12])
@pytest.mark.parametrize("command", ["info", "export", "train"])
def test_a_label_outside_the_classes_is_refused(good, tmp_path, capsys, label, command):
    def bad_label(f: h5py.File) -> None:
        f["labels"][5] = label

    path = hostile(good, tmp_path, "labels", bad_label)
    line = refused(capsys, commands(path, tmp_path, good)[command], tmp_path, f"class label {label} of image 5",
                   "0..3")
    assert "GiB" not in line  # not a memory estimate for 10^12 classes


def test_without_class_names_the_labels_are_bounded(good, tmp_path):
    def nameless(f: h5py.File) -> None:
        f.attrs["class_names"] = "[]"
        f["labels"][2] = 10 ** 12

    path = hostile(good, tmp_path, "nameless", nameless)
    with pytest.raises(InputError, match=rf"class label 1000000000000 of image 2 .*at most {MAX_CLASSES} classes"):
        read_image_set(path)


def test_validate_is_the_one_label_check_every_reader_shares():
    images = np.zeros((3, 1, 4, 4), np.float32)
    images[:, :, 0, 0] = 1.0
    for labels, names, fault in ((np.array([0, -1, 1]), ["a", "b"], "class label -1 of image 1"),
                                 (np.array([0, 2, 1]), ["a", "b"], "class label 2 of image 1"),
                                 (np.array([0, 10 ** 12, 1]), [], "class label 1000000000000 of image 1"),
                                 (np.array([0.0, 1.5, 1.0]), [], "class label 1.5 of image 1 is not a whole"),
                                 (np.array([0.0, np.nan, 1.0]), [], "class label nan of image 1"),
                                 (np.array(["0", "1", "1"]), [], "stored as text")):
        with pytest.raises(InputError, match=fault) as err:
            validate(ImageSet(images=images, labels=labels, class_names=names, source="x.npz"))
        assert str(err.value).startswith("x.npz: ")
    # The raw labels of a reader, (N, 1) as MedMNIST keeps them, before anything is built per class.
    with pytest.raises(InputError, match="class label 99999 of image 2"):
        check_labels("y.npz", np.array([[0], [1], [99999]]))
    check_labels("y.npz", np.array([[0], [1], [MAX_CLASSES - 1]]))
    assert validate(ImageSet(images=images, labels=np.array([0, 1, 1]), class_names=["a", "b"])).num_classes == 2


# -- fault 8: malformed files ------------------------------------------------------------------------------------

def _string_images(f: h5py.File) -> None:
    del f["images"]
    f.create_dataset("images", data=np.full((8, 1, 16, 16), b"1.5", dtype="S3"))  # numpy would read these as 1.5


@pytest.mark.parametrize("command", ["info", "export", "train"])
def test_text_images_are_refused(good, tmp_path, capsys, command):
    path = hostile(good, tmp_path, "strings", _string_images)
    refused(capsys, commands(path, tmp_path, good)[command], tmp_path, "/images values are stored as text")


@pytest.mark.parametrize(("n", "fault"), [(1000, "says 1000 samples are complete, but /images has room for only 8"),
                                          (-5, "'n_complete' is -5; a count of samples cannot be negative"),
                                          ("many", "'n_complete' is 'many', not a whole number")])
@pytest.mark.parametrize("command", ["info", "export", "train"])
def test_n_complete_beyond_the_rows_or_negative_is_refused(good, tmp_path, capsys, n, fault, command):
    def count(f: h5py.File) -> None:
        f.attrs["n_complete"] = n
        if n == 1000:
            f.attrs["n_planned"] = 1000

    path = hostile(good, tmp_path, "count", count)
    refused(capsys, commands(path, tmp_path, good)[command], tmp_path, fault)


def test_n_complete_is_checked_where_the_viewer_polls_it(good, tmp_path):
    path = hostile(good, tmp_path, "poll", lambda f: f.attrs.__setitem__("n_complete", 1000))
    with open_file(path) as f, pytest.raises(InputError, match="has room for only 8"):
        read_sample(f, 9)


def test_a_per_sample_dataset_shorter_than_n_complete_is_refused(good, tmp_path, capsys):
    def short_masks(f: h5py.File) -> None:
        masks = f["masks"][:5]
        del f["masks"]
        f.create_dataset("masks", data=masks)

    path = hostile(good, tmp_path, "short", short_masks)
    refused(capsys, commands(path, tmp_path, good)["export"], tmp_path, "/masks has 5 rows", "8 samples")


@pytest.mark.parametrize(("attribute", "text", "fault"), [
    ("class_names", "[not json", "attribute 'class_names' is not valid JSON"),
    ("normalisation", "{'modality': 'MR'", "attribute 'normalisation' is not valid JSON"),
    ("class_names", '{"a": 1}', "attribute 'class_names' holds a JSON dict, not a list"),
    ("normalisation", "[1, 2]", "attribute 'normalisation' holds a JSON list, not a mapping"),
    ("label_names", '{"one": "lesion"}', "attribute 'label_names' cannot be read"),
])
@pytest.mark.parametrize("command", ["info", "export", "train"])
def test_bad_json_in_an_attribute_names_the_file_and_the_attribute(good, tmp_path, capsys, attribute, text, fault,
                                                                   command):
    path = hostile(good, tmp_path, "json", lambda f: f.attrs.__setitem__(attribute, text))
    refused(capsys, commands(path, tmp_path, good)[command], tmp_path, fault)


@pytest.mark.parametrize(("attribute", "value", "fault"), [
    ("spatial_dims", 3, "attribute 'spatial_dims' is 3, but /images holds 2D samples"),
    ("spacing", "wide", "attribute 'spacing' cannot be read"),
    ("affine", "north", "attribute 'affine' cannot be read"),
    ("n_planned", 2.5, "attribute 'n_planned' is 2.5, not a whole number"),
])
def test_attributes_of_the_wrong_kind_are_named(good, tmp_path, capsys, attribute, value, fault):
    path = hostile(good, tmp_path, "attrs", lambda f: f.attrs.__setitem__(attribute, value))
    refused(capsys, ["info", str(path)], tmp_path, fault)


def test_bad_json_in_the_metrics_summary_names_the_attribute(good, tmp_path, capsys):
    path = hostile(good, tmp_path, "metrics", lambda f: f["metrics"].attrs.__setitem__("summary", "{oops"))
    refused(capsys, ["info", str(path)], tmp_path, "attribute 'summary' of /metrics is not valid JSON")


def test_constant_images_are_accepted_with_a_warning(good, tmp_path, capsys):
    def constant(f: h5py.File) -> None:
        f["images"][:] = 3.0

    path = hostile(good, tmp_path, "constant", constant)
    assert main(commands(path, tmp_path, good)["train"]) == 0
    err = capsys.readouterr().err
    assert f"{path}: every image holds a single value (3 everywhere)" in err
    # `info` says it too, for any input it reads whole (a MedMNIST-shaped npz here).
    npz = tmp_path / "blank.npz"
    np.savez(npz, train_images=np.zeros((5, 8, 8), np.uint8), train_labels=np.zeros((5, 1), np.uint8))
    assert main(["info", str(npz)]) == 0
    assert "warning: " in capsys.readouterr().out
    # One blank image among real ones is named; a set with none says nothing.
    s = make_phantoms(6, 16, seed=1)
    assert data_warnings(s) == []
    s.images[4] = 0.0
    s.source = "cases.npz"
    assert data_warnings(s) == ["cases.npz: 1 of 6 images hold a single value each (blank?), the first is image 4"]


def test_proper_files_still_read_and_the_checks_cost_little(tmp_path):
    s = make_phantoms(64, 16, seed=2)
    path = write_image_set(tmp_path / "ok.h5", s)
    with open_file(path) as f:
        t0 = time.perf_counter()
        h = read_header(f)
        took = time.perf_counter() - t0
    assert h.n_complete == 64 and took < 0.5
    back = read_image_set(path)
    np.testing.assert_array_equal(back.labels, s.labels)
    assert json.loads(json.dumps(back.class_names)) == s.class_names
    for old in sorted((ROOT / "tests" / "data").glob("medsynth_v1_*.h5")):
        assert len(read_image_set(old)) >= 2
