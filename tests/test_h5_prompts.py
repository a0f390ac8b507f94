"""Each sample's prompt in the MedSynth file (/prompts, issue 17): written and read back in any language, absent
from older files, refused with one line when hostile, whole up to n_complete after a kill, and invisible to the
commands that read classes and pixels (evaluate, export, the reader study)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.evaluation import reader_study as rs
from engine.info import describe
from engine.io import destination
from engine.io.medsynth_h5 import (
    PROMPTS,
    n_complete,
    open_file,
    read_header,
    read_image_set,
    read_metrics,
    read_prompts,
    read_sample,
)
from engine.io.medsynth_writer import SampleWriter, write_image_set
from medsynth.cli import main
from tests.test_h5_hostile import hostile

ROOT = Path(__file__).resolve().parents[1]
# Two findings in other languages and scripts, an empty prompt, and text that looks like markup.
PROMPTS_8 = ["chest x-ray, pneumonia", "Pleuraerguss, rechts", "胸部X線", "chest x-ray, pneumonia", "",
             "épanchement pleural <b>gauche</b>", "chest x-ray, normal", "chest x-ray, pneumonia"]


def phantoms_with_prompts(n: int = 8, size: int = 16, seed: int = 3):
    s = make_phantoms(n, size, seed=seed)
    s.prompts = [PROMPTS_8[i % len(PROMPTS_8)] for i in range(n)]
    return s


@pytest.fixture(scope="module")
def prompted(tmp_path_factory) -> Path:
    return write_image_set(tmp_path_factory.mktemp("prompted") / "prompted.h5", phantoms_with_prompts())


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A file as every writer before issue 17 made it: no /prompts."""
    return write_image_set(tmp_path_factory.mktemp("plain") / "plain.h5", make_phantoms(8, 16, seed=3))


# -- round trip -----------------------------------------------------------------------------------------------------
def test_prompts_round_trip_in_any_language(prompted):
    s = read_image_set(prompted)
    assert s.prompts == PROMPTS_8
    with open_file(prompted) as f:
        read_header(f)
        assert read_prompts(f) == PROMPTS_8
        assert read_prompts(f, 5) == PROMPTS_8[5:]  # a poller reads only what is new
        assert [read_sample(f, i).prompt for i in range(8)] == PROMPTS_8
        d = f[PROMPTS]
        # Variable-length UTF-8 text, one row per sample, chunked like the other per-sample data.
        assert h5py.check_string_dtype(d.dtype).encoding == "utf-8" and h5py.check_string_dtype(d.dtype).length is None
        assert d.shape == (8,) and d.chunks is not None
        assert d[2].decode("utf-8") == "胸部X線"  # stored as the UTF-8 bytes, not escaped
    # Written again from what was read: the same prompts (an ImageSet's prompts go wherever it is written).
    again = write_image_set(prompted.parent / "again.h5", s)
    assert read_image_set(again).prompts == PROMPTS_8


def test_a_writer_with_prompts_writes_them_batch_by_batch(tmp_path):
    s = phantoms_with_prompts(8)
    path = tmp_path / "batches.h5"
    with SampleWriter(path, 8, s.images.shape[1:], masks=True, labels=True, prompts=True,
                      class_names=s.class_names) as w:
        for lo in (0, 3, 6):
            hi = min(lo + 3, 8)
            w.append(s.images[lo:hi], np.arange(lo, hi), s.masks[lo:hi], s.labels[lo:hi], prompts=s.prompts[lo:hi])
    back = read_image_set(path)
    assert back.prompts == PROMPTS_8
    np.testing.assert_array_equal(back.labels, s.labels)  # the classes beside the prompts, as before


@pytest.mark.parametrize(("given", "fault"), [
    (None, "3 expected, none given"),
    (["a", "b"], "3 expected, 2 given"),
    (["a", "b", 3], "each prompt must be text"),
])
def test_a_writer_with_prompts_refuses_a_batch_without_one_each(tmp_path, given, fault):
    path = tmp_path / "refused.h5"
    with pytest.raises(ValueError, match=fault), \
            SampleWriter(path, 6, (1, 8, 8), masks=False, labels=False, prompts=True) as w:
        w.append(np.ones((3, 1, 8, 8), np.float32), np.arange(3), prompts=["x", "y", "z"])
        w.append(np.ones((3, 1, 8, 8), np.float32), np.arange(3, 6), prompts=given)
    # The error left the block: nothing at the name, no temporary file beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_writer_without_prompts_refuses_to_drop_them(tmp_path):
    with pytest.raises(ValueError, match="created without /prompts"), \
            SampleWriter(tmp_path / "x.h5", 2, (1, 8, 8), masks=False, labels=False) as w:
        w.append(np.ones((2, 1, 8, 8), np.float32), np.arange(2), prompts=["lost", "lost"])
    assert list(tmp_path.iterdir()) == []


# -- older files ----------------------------------------------------------------------------------------------------
def test_files_without_prompts_read_as_none(plain):
    with open_file(plain) as f:
        read_header(f)
        assert PROMPTS not in f
        assert read_prompts(f) is None
        assert read_sample(f, 0).prompt is None
    assert read_image_set(plain).prompts is None
    assert "prompts" not in describe(plain)
    # Written again, it still has none: no /prompts of empty texts appears.
    again = write_image_set(plain.parent / "again.h5", read_image_set(plain))
    with open_file(again) as f:
        assert PROMPTS not in f


def test_info_counts_the_distinct_prompts(tmp_path):
    s = make_phantoms(6, 16, seed=1)
    s.prompts = ["chest x-ray, pneumonia"] * 4 + ["chest x-ray, normal"] * 2
    path = write_image_set(tmp_path / "two.h5", s)
    assert '  prompts: 2 distinct (e.g. "chest x-ray, pneumonia")' in describe(path).splitlines()
    assert main(["info", str(path)]) == 0


# -- hostile files --------------------------------------------------------------------------------------------------
def refused(capsys, argv: list[str], folder: Path, *words: str) -> None:
    """The CLI in-process: exit 2, one stderr line naming the file and the fault, nothing new in `folder`."""
    capsys.readouterr()
    before = set(folder.rglob("*"))
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not re.search(r"\d+%\|", line)]
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and argv[1] in err[0], err[0]
    for word in words:
        assert word in err[0], (word, err[0])
    assert set(folder.rglob("*")) == before


def _replace_prompts(**kwargs) -> Callable[[h5py.File], None]:
    def mutate(f: h5py.File) -> None:
        del f[PROMPTS]
        f.create_dataset(PROMPTS, **kwargs)
    return mutate


HOSTILE = {
    "numbers": (_replace_prompts(data=np.arange(8.0)), "/prompts holds float64 values of shape (8,)"),
    "table": (_replace_prompts(data=np.array([["a", "b"]] * 8, dtype=h5py.string_dtype())),
              "shape (8, 2); expected one text per sample"),
    "short": (_replace_prompts(data=["a", "b", "c"], dtype=h5py.string_dtype()),
              "/prompts has 3 rows but attribute 'n_complete' says 8 samples are complete"),
    "group": (lambda f: (f.__delitem__(PROMPTS), f.create_group(PROMPTS)), "/prompts holds a group"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_prompts_dataset_is_refused_with_one_line(prompted, tmp_path, capsys, kind):
    mutate, fault = HOSTILE[kind]
    path = hostile(prompted, tmp_path, kind, mutate)
    for read in (read_image_set, lambda p: read_header(open_file(p))):
        with pytest.raises(InputError, match=re.escape(fault)) as caught:
            read(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with open_file(path) as f, pytest.raises(InputError, match=re.escape(fault)):
        read_prompts(f)  # the gallery's poll reads prompts without the header's checks
    out = tmp_path / "out"
    out.mkdir()
    refused(capsys, ["info", str(path)], tmp_path, fault)
    refused(capsys, ["export", str(path), "--to", str(out / "exported"), "--format", "png"], tmp_path, fault)


def test_fixed_length_text_from_another_writer_is_read(prompted, tmp_path):
    ascii_only = [p.encode("utf-8") for p in PROMPTS_8]
    path = hostile(prompted, tmp_path, "fixed", _replace_prompts(data=np.array(ascii_only, dtype="S64")))
    assert read_image_set(path).prompts == PROMPTS_8


# -- a cut-short file -----------------------------------------------------------------------------------------------
def test_a_killed_writer_leaves_n_complete_whole_prompts(tmp_path):
    path = tmp_path / "killed.h5"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from engine.io.medsynth_writer import SampleWriter
        prompts = {PROMPTS_8!r}
        w = SampleWriter({str(path)!r}, 8, (1, 8, 8), masks=False, labels=False, prompts=True)
        w.append(np.ones((3, 1, 8, 8), np.float32), np.arange(3), prompts=prompts[:3])
        w.append(np.ones((2, 1, 8, 8), np.float32), np.arange(3, 5), prompts=prompts[3:5])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr
    partial = destination.temp_beside(path)
    assert not path.exists() and partial.exists()
    with open_file(partial) as f:
        assert n_complete(f) == 5 and read_header(f).n_planned == 8
        assert read_prompts(f) == PROMPTS_8[:5]
        assert len(f[PROMPTS]) == 8  # the planned rows are there; only the complete ones are read
    assert read_image_set(partial).prompts == PROMPTS_8[:5]


# -- readers of classes and pixels see no difference ------------------------------------------------------------------
def test_evaluate_export_and_the_reader_study_read_a_prompted_file_as_before(prompted, plain, tmp_path):
    real = write_image_set(tmp_path / "real.h5", make_phantoms(24, 16, seed=11))
    copies = {}
    for name, path in (("prompted", prompted), ("plain", plain)):
        copies[name] = tmp_path / f"{name}.h5"
        shutil.copy(path, copies[name])
        assert main(["evaluate", str(copies[name]), "--real", str(real), "--no-utility", "--max-samples", "8"]) == 0
        out = tmp_path / f"{name}-png"
        assert main(["export", str(copies[name]), "--to", str(out), "--format", "png"]) == 0
        rs.create_study(real, copies[name], tmp_path / f"{name}-study", 4, 4, seed=1)
    with open_file(copies["prompted"]) as a, open_file(copies["plain"]) as b:
        figures_a, _ = read_metrics(a)
        figures_b, _ = read_metrics(b)
    assert figures_a and figures_a.keys() == figures_b.keys()
    for key in figures_a:
        assert figures_a[key] == pytest.approx(figures_b[key], rel=1e-6, abs=1e-9, nan_ok=True), key
    assert sorted(p.name for p in (tmp_path / "prompted-png").rglob("*")) == \
        sorted(p.name for p in (tmp_path / "plain-png").rglob("*"))
    items = [tmp_path / f"{name}-study" / "items.h5" for name in ("prompted", "plain")]
    with h5py.File(items[0]) as a, h5py.File(items[1]) as b:
        assert sorted(a) == sorted(b)
        for key in a:
            if isinstance(a[key], h5py.Dataset):
                np.testing.assert_array_equal(a[key][()], b[key][()])
