"""kill -9 of `medsynth sample --force` and `medsynth export` at chosen moments, and at moments it does not choose.

After every kill: the output's name holds the old file, untouched, or (once renamed) the whole new one; what the
run was filling (`NAME.partial`) opens with `n_complete` true: every sample it counts is whole, finite and drawn
from its own seed; no lock outlives its holder, so the next run goes ahead; a folder export is whole or absent.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.io import destination
from engine.io.medsynth_h5 import read_image_set
from engine.io.medsynth_writer import SampleWriter
from tests.forking import cli, in_child, kill_me

N, BATCH = 6, 2
OLD = b"the old file: precious"


def sample_args(run: Path, out: Path, n: int = N, *extra: str) -> list[str]:
    return ["sample", str(run), "--n", str(n), "--batch", str(BATCH), "--steps", "2", "--keep-mismatched",
            "--out", str(out), *extra]


def check_partial(partial: Path) -> int:
    """The invariants of what a killed writer left: readable, with `n_complete` whole samples; their count."""
    if not partial.exists():
        return 0
    try:
        f = h5py.File(partial, "r", locking=False)
    except OSError:
        return 0  # killed while HDF5 made the file, before its first sample: nothing counted, nothing to trust
    with f:
        if "n_complete" not in f.attrs:
            return 0  # killed before the header was flushed
        n = int(f.attrs["n_complete"])
        assert 0 <= n <= int(f.attrs["n_planned"]) == f["images"].shape[0]
        images = f["images"][:n]
        assert np.isfinite(images).all() and (n == 0 or (np.abs(images).reshape(n, -1).max(axis=1) > 0).all())
        assert list(f["seeds"][:n]) == list(range(n))
    if n:
        assert len(read_image_set(partial)) == n
    return n


def check_whole(out: Path, n: int = N) -> None:
    with h5py.File(out, "r") as f:
        assert int(f.attrs["n_complete"]) == int(f.attrs["n_planned"]) == n
        assert np.isfinite(f["images"][:]).all()


def _patch(obj: object, name: str, wrapper) -> None:
    setattr(obj, name, wrapper(getattr(obj, name)))


def _kill_at_call(k: int):
    """A wrapper that kills the process on the k-th call (1-based), after `before` and before the call."""
    def wrap(real):
        calls = [0]

        def inner(*a, **kw):
            calls[0] += 1
            if calls[0] == k:
                kill_me()
            return real(*a, **kw)
        return inner
    return wrap


def _kill_after_call(real):
    def inner(*a, **kw):
        out = real(*a, **kw)
        kill_me()
        return out
    return inner


# Each point: (what to patch, the wrapper) applied in the child before it runs `medsynth sample --force`.
POINTS = {
    "with the lock, before the file": lambda: _patch(SampleWriter, "_create", _kill_at_call(1)),
    "file made, no sample yet": lambda: _patch(SampleWriter, "append", _kill_at_call(1)),
    "a batch's data written, its count not": lambda: _patch(h5py.File, "flush", _kill_at_call(4)),
    "after two batches": lambda: _patch(SampleWriter, "append", _kill_at_call(3)),
    "every sample written, before the rename": lambda: _patch(destination, "commit", _kill_at_call(1)),
    "just after the rename": lambda: _patch(destination.os, "replace", _kill_after_call),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_sample_killed_at_a_chosen_moment(tiny_run, tmp_path, point):
    out = tmp_path / "s.h5"
    partial = destination.temp_beside(out)
    out.write_bytes(OLD)

    def work():
        POINTS[point]()
        return cli(sample_args(tiny_run, out, N, "--force"))

    end = in_child(work, timeout=60)
    assert end.killed, end
    if point == "just after the rename":
        check_whole(out)
        assert not partial.exists()
    else:
        assert out.read_bytes() == OLD  # --force removed nothing before the new file was whole
        n = check_partial(partial)
        expected = {"a batch's data written, its count not": BATCH, "after two batches": 2 * BATCH,
                    "every sample written, before the rename": N}
        assert n == expected.get(point, 0)
    # No lock outlives a kill: the next run goes ahead and replaces both.
    again = cli(sample_args(tiny_run, out, 4, "--force"))
    assert again["rc"] == 0, again
    check_whole(out, 4)
    assert not partial.exists() and not destination.lock_path(out).exists()


def test_a_killed_runs_samples_are_not_overwritten_unasked(tiny_run, tmp_path):
    out = tmp_path / "fresh.h5"
    end = in_child(lambda: (_patch(SampleWriter, "append", _kill_at_call(3)), cli(sample_args(tiny_run, out)))[1])
    assert end.killed and not out.exists()
    partial = destination.temp_beside(out)
    assert check_partial(partial) == 2 * BATCH
    refused = cli(sample_args(tiny_run, out))
    assert refused["rc"] == 2 and refused["stderr"].count("\n") == 1
    assert str(partial) in refused["stderr"] and "interrupted run" in refused["stderr"]
    assert check_partial(partial) == 2 * BATCH  # still there, still whole
    # A partial file killed before its first sample holds nothing to keep: a new run simply replaces it.
    partial.write_bytes(b"")
    assert cli(sample_args(tiny_run, out, 2))["rc"] == 0
    check_whole(out, 2)


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
def test_sample_killed_from_outside_at_unchosen_moments(tiny_run, tmp_path, delay):
    """The same invariants when the kill comes from outside, some time after the run has its first sample."""
    out = tmp_path / "k.h5"
    partial = destination.temp_beside(out)
    out.write_bytes(OLD)
    seen: list[float] = []

    def ready() -> bool:
        if not seen:
            try:
                with h5py.File(partial, "r", locking=False) as f:
                    started = int(f.attrs["n_complete"]) > 0
            except (OSError, KeyError):
                started = False  # not there yet, or caught between two of the writer's flushes
            if started:
                seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay

    end = in_child(lambda: cli(sample_args(tiny_run, out, 400, "--force")), timeout=60, kill_when=ready)
    assert end.killed, end
    assert out.read_bytes() == OLD
    assert 0 < check_partial(partial) < 400


def _export_points():
    from engine.io import export_nifti

    return {
        "after two files": lambda: _patch(export_nifti, "save_nifti", _kill_at_call(3)),
        "every file written, before the rename": lambda: _patch(destination, "commit", _kill_at_call(1)),
    }


@pytest.mark.parametrize("point", ["after two files", "every file written, before the rename"])
def test_export_killed_leaves_no_half_export(tiny_run, tmp_path, point):
    h5 = tmp_path / "s.h5"
    assert cli(sample_args(tiny_run, h5, 4))["rc"] == 0
    to = tmp_path / "nifti"
    end = in_child(lambda: (_export_points()[point](), cli(["export", str(h5), "--to", str(to),
                                                             "--format", "nifti"]))[1])
    assert end.killed, end
    assert not to.exists()  # the folder of that name is a whole export or none
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "s.h5")
    assert leftovers == [".nifti.lock", ".nifti.partial"], leftovers  # hidden, and named for what they are
    # The next export takes its place: the killed one's partial folder goes.
    done = cli(["export", str(h5), "--to", str(to), "--format", "nifti"])
    assert done["rc"] == 0, done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nifti", "s.h5"]
    assert len(list(to.glob("*_seg.nii.gz"))) == 4 and (to / "samples.csv").exists()
