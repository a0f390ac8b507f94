"""An evaluation checks that it can write its results before it starts the work: a file held read-only
in this process, a read-only file and a read-only folder each fail at once, with one line naming them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import pytest

from engine.errors import InputError
from engine.evaluation.evaluate import EvalSettings, EvaluateJob
from engine.jobs import Requests
from tests.conftest import make_evaluation_files

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_evaluation_files(tmp_path_factory.mktemp("writable"))


def test_a_file_held_read_only_fails_before_any_work(files, tmp_path):
    _, train_path, test_path, synth_path = files
    copy = tmp_path / "held.h5"
    shutil.copy(synth_path, copy)
    events: list = []
    with h5py.File(copy, "r", locking=False):  # a reader that keeps the file open, as the gallery once did
        t0 = time.perf_counter()
        with pytest.raises(InputError) as err:
            EvaluateJob(copy, real=test_path, train_data=train_path).run(events.append, Requests())
        took = time.perf_counter() - t0
    assert events == [] and took < 5
    assert str(err.value).startswith(str(copy)) and "read-only" in str(err.value) and "\n" not in str(err.value)
    # Once the reader lets go the same job runs.
    events.clear()
    result = EvaluateJob(copy, real=test_path, train_data=train_path,
                         settings=EvalSettings(skip=["fid", "labels", "utility", "report"])).run(events.append,
                                                                                                 Requests())
    assert result["complete"] and "frd" in result["figures"]
    with h5py.File(copy, "r") as f:
        assert "frd" in f["metrics"].attrs


def _as_nobody(args: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI as an unprivileged user, for whom file permissions hold (root ignores them)."""
    cmd = [sys.executable, "-m", "medsynth.cli", *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TORCH_HOME=str(Path(tempfile.gettempdir()) / "no-torch-home"))
    if os.geteuid() == 0:
        # A checkout inside a private folder (mktemp -d is 0700) is out of the unprivileged user's reach.
        probe = subprocess.run([*cmd[:4], sys.executable, "-c", "import medsynth.cli"], capture_output=True,
                               env=env, cwd="/", timeout=120)
        if probe.returncode != 0:
            pytest.skip(f"the unprivileged user cannot read this checkout ({ROOT}): permissions cannot be tested")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.fixture()
def shared_dir():
    """A folder an unprivileged user can read (pytest's own temporary folders are private to their owner)."""
    d = Path(tempfile.mkdtemp(prefix="medsynth-ro-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_read_only_file_fails_at_once_with_one_line(files, shared_dir):
    _, train_path, test_path, synth_path = files
    for src in (synth_path, train_path, test_path):
        shutil.copy(src, shared_dir / src.name)
        (shared_dir / src.name).chmod(0o444)
    shared_dir.chmod(0o777 if os.geteuid() == 0 else 0o755)  # the report could be written: only the file refuses
    target = shared_dir / synth_path.name
    r = _as_nobody(["evaluate", str(target), "--real", str(shared_dir / test_path.name),
                    "--train-data", str(shared_dir / train_path.name), "--no-utility"])
    lines = r.stderr.strip().splitlines()
    # One line, and no progress bar: the check came before the first stage.
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert str(target) in lines[0] and "read-only" in lines[0]
    assert not (shared_dir / "synth_report.html").exists()


def test_a_read_only_folder_fails_at_once_naming_it(files, shared_dir):
    synth_path = files[3]
    target = shared_dir / synth_path.name
    shutil.copy(synth_path, target)
    target.chmod(0o666)  # the file takes the figures, but its folder would refuse the report
    r = _as_nobody(["evaluate", str(target), "--no-utility"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert str(shared_dir) in lines[0] and "read-only folder" in lines[0]
