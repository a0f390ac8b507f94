"""Writers and disks: a second writer, --force, full and read-only disks, NaN samples, exports of malformed files.

Every refusal is one line naming the destination (or the file at fault) with exit 2; the old output stays whole;
nothing half-written is left under a name something would pick up.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.io import destination
from engine.io.medsynth_h5 import read_image_set
from engine.io.medsynth_writer import SampleWriter, write_image_set
from tests.conftest import tiny_cli_setup
from tests.forking import cli, in_child, remount_read_only

OLD = b"the old file: precious"


def sample_args(run: Path, out: Path, n: int = 4, *extra: str) -> list[str]:
    return ["sample", str(run), "--n", str(n), "--batch", "2", "--steps", "2", "--keep-mismatched",
            "--out", str(out), *extra]


def one_line(r: dict, *words: str) -> str:
    assert r["rc"] == 2, r
    # What the run said before (its progress) may come first; the refusal itself is one line.
    lines = [line for line in r["stderr"].splitlines() if line.startswith("medsynth: error")]
    assert len(lines) == 1 and "Traceback" not in r["stderr"], r["stderr"]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- two writers, --force


def test_a_second_writer_of_the_same_file_is_refused_while_the_first_runs(tiny_run, tmp_path):
    out = tmp_path / "s.h5"
    s = make_phantoms(4, size=16, seed=3)
    with SampleWriter(out, 4, s.images.shape[1:], masks=True, labels=False) as first:
        first.append(s.images[:2], np.arange(2), s.masks[:2])
        line = one_line(cli(sample_args(tiny_run, out, 4, "--force")), str(out), "another MedSynth run")
        assert "--force" not in line
        with pytest.raises(InputError, match="being written by another MedSynth run"):
            write_image_set(out, s, overwrite=True)
        first.append(s.images[2:], np.arange(2, 4), s.masks[2:])
    # The first writer's file is whole: the second wrote nothing into it.
    back = read_image_set(out)
    np.testing.assert_array_equal(back.images, s.images)
    # Once the first is done the same command goes ahead.
    assert cli(sample_args(tiny_run, out, 2, "--force"))["rc"] == 0
    assert len(read_image_set(out)) == 2 and only(tmp_path) == ["s.h5"]


def test_force_keeps_the_old_file_until_the_new_one_holds_samples(tiny_run, tmp_path):
    from engine.inference.sample import SampleJob
    from engine.jobs import Cancelled
    from tests.conftest import StopAfter

    out = tmp_path / "s.h5"
    out.write_bytes(OLD)
    # Stopped before the first batch: no new sample, so the old file stays.
    with pytest.raises(Cancelled):
        SampleJob(tiny_run, 4, out, steps=2, batch=2, overwrite=True).run(lambda ev: None, StopAfter(0))
    assert out.read_bytes() == OLD and only(tmp_path) == ["s.h5"]
    # Stopped after a batch: the complete samples are the output (as a stop always kept them).
    with pytest.raises(Cancelled) as stopped:
        SampleJob(tiny_run, 6, out, steps=2, batch=2, overwrite=True,
                  redraw_mismatches=False).run(lambda ev: None, StopAfter(3))
    assert stopped.value.result["n"] == 2
    with h5py.File(out) as f:
        assert f.attrs["n_complete"] == 2 and f.attrs["n_planned"] == 6
    assert only(tmp_path) == ["s.h5"]


def test_the_file_being_filled_is_readable_and_announced(tiny_run, tmp_path):
    from engine.inference.sample import SampleJob
    from engine.jobs import Progress, Requests

    out = tmp_path / "s.h5"
    seen = []

    def emit(ev):
        if isinstance(ev, Progress) and ev.stage == "sample":
            live = Path(ev.info["file"])
            assert live == destination.temp_beside(out) and not out.exists()
            with h5py.File(live, "r", locking=False) as f:
                seen.append(int(f.attrs["n_complete"]))

    SampleJob(tiny_run, 4, out, steps=2, batch=2, redraw_mismatches=False).run(emit, Requests())
    assert seen == [2, 4] and only(tmp_path) == ["s.h5"]


# --------------------------------------------------------------------------- NaN


def test_nan_samples_are_refused_and_nothing_is_written(tiny_run, tmp_path, monkeypatch):
    from engine.inference import sample as sample_mod

    real = sample_mod.Generator.generate

    def broken(self, *a, **kw):
        images, masks = real(self, *a, **kw)
        images[-1, 0, 3, 3] = np.nan
        return images, masks

    monkeypatch.setattr(sample_mod.Generator, "generate", broken)
    out = tmp_path / "s.h5"
    out.write_bytes(OLD)
    line = one_line(cli(sample_args(tiny_run, out, 4, "--force")), "NaN or infinite", "sample 1")
    assert str(tiny_run) in line
    assert out.read_bytes() == OLD and only(tmp_path) == ["s.h5"]


# --------------------------------------------------------------------------- full disk, patched writer


def _enospc_on_write(monkeypatch, after: int) -> None:
    """Every HDF5 dataset write after the first `after` fails as a full disk does."""
    real = h5py.Dataset.__setitem__
    calls = [0]

    def full(self, key, value):
        calls[0] += 1
        if calls[0] > after:
            raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28, "
                                        "error message = 'No space left on device')")
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)


def test_a_full_disk_while_sampling_is_one_line_and_keeps_the_old_file(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "s.h5"
    out.write_bytes(OLD)
    _enospc_on_write(monkeypatch, after=3)  # the first batch's images, seeds and masks; then the disk is full
    one_line(cli(sample_args(tiny_run, out, 6, "--force")), str(out), "disk is full")
    assert out.read_bytes() == OLD and only(tmp_path) == ["s.h5"]


def test_a_destination_clearly_too_small_is_refused_before_any_work(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "s.h5"
    monkeypatch.setattr(destination, "free_bytes", lambda folder: 1000)
    one_line(cli(sample_args(tiny_run, out, 4)), str(out), "needs about", "is free there")
    assert only(tmp_path) == []


def test_a_full_disk_while_exporting_removes_the_partial_export(tiny_run, tmp_path, monkeypatch):
    from PIL import Image

    h5 = write_image_set(tmp_path / "d.h5", make_phantoms(6, size=16, seed=2))
    real = Image.Image.save
    calls = [0]

    def full(self, *a, **kw):
        calls[0] += 1
        if calls[0] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", full)
    to = tmp_path / "png"
    one_line(cli(["export", str(h5), "--to", str(to), "--format", "png"]), str(to), "disk is full")
    assert only(tmp_path) == ["d.h5"]


def test_an_unexpected_disk_error_anywhere_is_one_line(tmp_path, monkeypatch):
    """The CLI's last line of defence: an OSError of a full or read-only disk from any command."""
    import engine.export

    def full(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x"))

    monkeypatch.setattr(engine.export, "export", full)
    h5 = write_image_set(tmp_path / "d.h5", make_phantoms(2, size=16, seed=2))
    one_line(cli(["export", str(h5), "--to", str(tmp_path / "o"), "--format", "png"]), str(tmp_path / "x"),
             "read-only file system")


# --------------------------------------------------------------------------- export: check first, then write


def _file_with_masks(path: Path, mask_shape: tuple[int, ...], n_complete: int = 5) -> Path:
    with h5py.File(path, "w") as f:
        f["images"] = np.random.default_rng(0).random((5, 1, 16, 16)).astype(np.float32)
        f["masks"] = np.zeros(mask_shape, np.uint8)
        f["seeds"] = np.arange(5)
        f.attrs.update(format="medsynth", format_version=1, spatial_dims=2, n_planned=5, n_complete=n_complete)
    return path


@pytest.mark.parametrize("fmt", ["png", "nifti", "nnunet"])
def test_export_refuses_wrong_shape_masks_before_the_first_file(tmp_path, fmt):
    h5 = _file_with_masks(tmp_path / "bad.h5", (5, 12, 12))
    to = tmp_path / "out"
    one_line(cli(["export", str(h5), "--to", str(to), "--format", fmt]), str(h5), "/masks has shape (5, 12, 12)")
    assert only(tmp_path) == ["bad.h5"]


def test_export_refuses_fewer_masks_than_samples(tmp_path):
    h5 = _file_with_masks(tmp_path / "short.h5", (3, 16, 16))
    one_line(cli(["export", str(h5), "--to", str(tmp_path / "o"), "--format", "png"]), str(h5), "/masks")
    assert only(tmp_path) == ["short.h5"]


# --------------------------------------------------------------------------- evaluate: room checked first


def test_evaluate_checks_room_for_its_results_before_the_work(tmp_path, monkeypatch):
    from engine.evaluation.evaluate import EvalSettings, EvaluateJob
    from engine.jobs import Requests

    synth = write_image_set(tmp_path / "synth.h5", make_phantoms(8, size=16, seed=4))
    before = synth.read_bytes()
    monkeypatch.setattr(destination, "free_bytes", lambda folder: 1000)
    events: list = []
    with pytest.raises(InputError, match="synth.h5: cannot be written: it needs about"):
        EvaluateJob(synth, settings=EvalSettings(skip=["fid", "labels", "utility"])).run(events.append,
                                                                                          Requests())
    assert events == [] and synth.read_bytes() == before


# --------------------------------------------------------------------------- real disks: tmpfs, read-only


def _skip_if(end) -> None:
    if isinstance(end.result, dict) and "skip" in end.result:
        pytest.skip(end.result["skip"])


def test_a_full_tmpfs_while_sampling_never_crashes(tiny_run, tmp_path):
    """A real full disk, met mid-run (the up-front estimate passed): HDF5 used to crash the process (rc 139)."""
    disk = tmp_path / "disk"
    disk.mkdir()

    def work():
        out = disk / "s.h5"
        out.write_bytes(OLD)
        destination.check_room = lambda *a, **k: None  # the disk fills while the run goes, not before it
        r = cli(["sample", str(tiny_run), "--n", "2000", "--batch", "100", "--steps", "1", "--keep-mismatched",
                 "--force", "--out", str(out)])
        return {**r, "old": out.read_bytes() == OLD, "left": only(disk)}

    end = in_child(work, timeout=120, tmpfs=(disk, "600k"))
    _skip_if(end)
    assert end.signal is None and end.code == 0, end  # no segmentation fault, at exit either
    one_line(end.result, "s.h5", "disk is full")
    assert end.result["old"] and end.result["left"] == ["s.h5"]


def test_a_small_tmpfs_is_refused_up_front_for_sampling_and_export(tiny_run, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    src = write_image_set(tmp_path / "d.h5", make_phantoms(400, size=32, seed=5))

    def work():
        s = cli(["sample", str(tiny_run), "--n", "2000", "--steps", "1", "--out", str(disk / "s.h5")])
        e = cli(["export", str(src), "--to", str(disk / "n"), "--format", "nifti"])
        return {"sample": s, "export": e, "left": only(disk)}

    end = in_child(work, timeout=60, tmpfs=(disk, "200k"))
    _skip_if(end)
    one_line(end.result["sample"], "s.h5", "needs about", "is free there")
    one_line(end.result["export"], str(disk / "n"), "needs about")
    assert end.result["left"] == []


def test_a_full_tmpfs_while_exporting_leaves_no_partial_export(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    rng = np.random.default_rng(0)
    s = make_phantoms(200, size=64, seed=5)
    s.images = rng.random(s.images.shape).astype(np.float32)  # noise: does not compress, fills the disk
    src = write_image_set(tmp_path / "d.h5", s)  # 3.3 MB to write; a quarter of it (+ 1 MiB) asked for up front

    def work():
        e = cli(["export", str(src), "--to", str(disk / "n"), "--format", "nifti"])
        return {"export": e, "left": sorted(p.name for p in disk.iterdir())}

    end = in_child(work, timeout=60, tmpfs=(disk, "2500k"))
    _skip_if(end)
    assert end.signal is None, end
    one_line(end.result["export"], str(disk / "n"), "disk is full")
    assert end.result["left"] == []


def test_a_read_only_file_system_is_one_line_for_every_writer(tiny_run, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    src = write_image_set(tmp_path / "d.h5", make_phantoms(4, size=16, seed=5))

    def work():
        (disk / "s.h5").write_bytes(OLD)
        remount_read_only(disk)
        return {"sample": cli(sample_args(tiny_run, disk / "s.h5", 2, "--force")),
                "new": cli(sample_args(tiny_run, disk / "sub" / "t.h5", 2)),
                "export": cli(["export", str(src), "--to", str(disk / "png"), "--format", "png"]),
                "old": (disk / "s.h5").read_bytes() == OLD, "left": only(disk)}

    end = in_child(work, timeout=60, tmpfs=(disk, "4m"))
    _skip_if(end)
    for key, words in (("sample", ("s.h5", "read-only")), ("new", ("t.h5", "read-only")),
                       ("export", ("png", "read-only"))):
        one_line(end.result[key], *words)
    assert end.result["old"] and end.result["left"] == ["s.h5"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_read_only_folder_is_one_line(tiny_run, tmp_path):
    """chmod 0o555: as root (who writes anywhere) the child becomes nobody first, so the permission holds."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="medsynth-ro-"))  # pytest's own folders are private to their owner
    try:
        shared.chmod(0o755)
        run = shutil.copytree(tiny_run, shared / "run")
        src = write_image_set(shared / "d.h5", make_phantoms(4, size=16, seed=5))
        folder = shared / "ro"
        folder.mkdir()
        folder.chmod(0o555)

        def work():
            # Once as ourselves: every module the commands import lazily is loaded before we may not read it.
            cli(sample_args(run, shared / "warm.h5", 2))
            cli(["export", str(src), "--to", str(shared / "warm"), "--format", "png"])
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            return {"sample": cli(sample_args(run, folder / "s.h5")),
                    "export": cli(["export", str(src), "--to", str(folder / "png"), "--format", "png"]),
                    "left": only(folder)}

        end = in_child(work, timeout=60)
        if isinstance(end.result, dict) and "error" in end.result:
            pytest.skip(f"cannot act as an unprivileged user here: {end.result['error'].splitlines()[-1]}")
        one_line(end.result["sample"], "s.h5", "not writable")
        one_line(end.result["export"], "png", "not writable")
        assert end.result["left"] == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_read_only_file_system_is_one_line_for_training_evaluation_and_a_study(tiny_run, tmp_path):
    """The writers beyond sampling and export: a new run, a resumed run, an evaluation's /metrics and a reader
    study, each on a read-only mount, end in one line naming the destination, and what was there is unchanged."""
    import shutil

    disk = tmp_path / "disk"
    disk.mkdir()
    data, cfg = tiny_cli_setup(tmp_path, 8, "steps = 2")
    real = write_image_set(tmp_path / "real.h5", make_phantoms(8, size=16, seed=6))

    def work():
        run = shutil.copytree(tiny_run, disk / "run")
        synth = disk / "s.h5"
        shutil.copy(real, synth)
        before = {p: p.read_bytes() for p in disk.rglob("*") if p.is_file()}
        remount_read_only(disk)
        return {"train": cli(["train", str(data), "--config", str(cfg), "--out", str(disk / "new")]),
                "resume": cli(["train", "--resume", "--out", str(run), "--steps", "30"]),
                "evaluate": cli(["evaluate", str(synth), "--real", str(real), "--no-utility"]),
                "study": cli(["reader-study", "create", str(real), str(synth), "--out", str(disk / "study"),
                              "--n-real", "4", "--n-synth", "4"]),
                "same": all(p.read_bytes() == b for p, b in before.items()), "left": only(disk)}

    end = in_child(work, timeout=90, tmpfs=(disk, "16m"))
    _skip_if(end)
    for key, name in (("train", "new"), ("resume", "run"), ("evaluate", "s.h5"), ("study", "study")):
        one_line(end.result[key], name, "read-only")
    assert end.result["same"] and end.result["left"] == ["run", "s.h5"]


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    """The new file is renamed onto the old one: the old one's mode carries over (a private 0600 file stays so)."""
    import stat

    target = tmp_path / "private.h5"
    write_image_set(target, make_phantoms(2, size=16, seed=1))
    target.chmod(0o600)
    write_image_set(target, make_phantoms(3, size=16, seed=2), overwrite=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and len(read_image_set(target)) == 3
