"""A job the app runs as several processes (engine/runtime/launched_job.py): the main process's events come back
once, save-now and preview-now reach it, Stop reaches every process and keeps a checkpoint, and a fault in the
processes is one line. Real two-process launches (gloo on the CPU, the code path of two GPUs), ~20-40 s each."""

import functools
import json
import os
from pathlib import Path

import pytest

from engine.config import resolve
from engine.errors import InputError
from engine.jobs import Checkpoint, Loss, Message, Preview, Progress, Requests, execute
from engine.runtime.launched_job import LaunchedJob, LaunchFailed
from engine.settings import overrides
from engine.training import checkpoints
from engine.training.jobs import train_job
from engine.training.run_dir import RunDir
from tests.conftest import tiny_cli_setup


@pytest.fixture(autouse=True)
def _one_thread_each(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores


def _recipe(tmp_path, steps: int, train: str = "checkpoint_every = 4\npreview_every = 3\nlog_every = 1"):
    data, cfg_file = tiny_cli_setup(tmp_path, 32, train)
    cfg = resolve(None, cfg_file, overrides(data=str(data), steps=steps, device="cpu"))
    return functools.partial(train_job, cfg, tmp_path / "run", preview_at_end=True)


def _logged(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "loss.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_report_once_and_take_save_and_preview_now(tmp_path):
    events, requests = [], Requests()

    def emit(ev):
        events.append(ev)
        if isinstance(ev, Loss) and ev.step == 1:
            requests.save_now()  # what the app's Save now and Preview now buttons do, mid-run
            requests.preview_now()

    done = execute(LaunchedJob(_recipe(tmp_path, 8), 2, cpu=True), emit, requests)
    assert not done.cancelled
    run = tmp_path / "run"
    assert done.result["step"] == 8 and done.result["main_process"]
    assert [ev.step for ev in events if isinstance(ev, Loss)] == list(range(1, 9))  # each step once
    assert _logged(run) == list(range(1, 9))
    saved = [ev.step for ev in events if isinstance(ev, Checkpoint)]
    assert saved[-1] == 8 and 4 in saved and min(saved) < 4  # the asked-for checkpoint, before the regular one
    assert sorted(RunDir(run).steps()) == sorted(set(saved))
    for step in saved:
        checkpoints.verify(RunDir(run).checkpoint_path(step))
    previews = [ev for ev in events if isinstance(ev, Preview)]
    assert min(p.step for p in previews) < 3 and {3, 6, 8} <= {p.step for p in previews}
    assert previews[0].images.shape[1:] == (1, 16, 16)
    train = [ev for ev in events if isinstance(ev, Progress) and ev.stage == "train"]
    assert train[-1].done == 8 and train[-1].total == 8
    said = " ".join(ev.text for ev in events if isinstance(ev, Message))
    assert said.startswith("Starting 2 processes on the CPU")
    assert said.count("global batch 8 = 2 processes × 4") == 1


@pytest.mark.slow
def test_stop_reaches_every_process_and_keeps_a_checkpoint(tmp_path):
    events, requests = [], Requests()

    def emit(ev):
        events.append(ev)
        if isinstance(ev, Loss) and ev.step == 3:
            requests.stop()

    done = execute(LaunchedJob(_recipe(tmp_path, 100_000), 2, cpu=True), emit, requests)
    assert done.cancelled
    stopped = done.result["step"]
    assert 3 <= stopped < 100 and done.result["checkpoint"]
    run = RunDir(tmp_path / "run")
    assert run.latest().name == run.checkpoint_path(stopped).name
    checkpoints.verify(run.latest())
    assert json.loads((run.latest() / checkpoints.STATE).read_text())["processes"] == 2
    assert _logged(tmp_path / "run") == list(range(1, stopped + 1))


@pytest.mark.slow
def test_bad_input_found_by_the_processes_is_one_line(tmp_path):
    recipe = _recipe(tmp_path, 4)
    (tmp_path / "d.h5").write_bytes(b"not an HDF5 file")  # replaced after the config was checked
    with pytest.raises(InputError) as raised:
        execute(LaunchedJob(recipe, 2, cpu=True), lambda ev: None, Requests())
    assert str(raised.value).startswith(str(tmp_path / "d.h5"))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "run").exists() or not RunDir(tmp_path / "run").steps()
    assert not [p for p in os.listdir("/tmp") if p.startswith("medsynth-launch-") and
                (tmp_path.stat().st_mtime <= os.stat(f"/tmp/{p}").st_mtime)]


@pytest.mark.parametrize("error, expected", [
    (ValueError("rank 1 broke"), "process 1: ValueError: rank 1 broke (one of 2 processes)"),
    (InputError("scan_017.nii.gz", "label 7 is not in dataset.json"),
     "scan_017.nii.gz: label 7 is not in dataset.json"),
], ids=["bug", "bad-input"])
def test_another_process_failing_is_its_failure_not_a_stop(tmp_path, monkeypatch, error, expected):
    """The launcher stops the main process when another fails; the run ends as that failure, in its one line."""
    from tests.launched_jobs import FailsOnOneProcess

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # where each process finds `tests.launched_jobs`
    job = LaunchedJob(functools.partial(FailsOnOneProcess, 1, error), 2, cpu=True)
    kind = InputError if isinstance(error, InputError) else LaunchFailed
    with pytest.raises(kind) as raised:
        execute(job, lambda ev: None, Requests())
    assert str(raised.value) == expected
    if kind is LaunchFailed:
        assert "Traceback" in "".join(raised.value.__notes__)  # the details, for the log file


FRONT_END = """
import functools, sys
from engine.config import resolve
from engine.jobs import Requests, execute
from engine.runtime.launched_job import LaunchedJob
from engine.settings import overrides
from engine.training.jobs import train_job

data, cfg_file, run = sys.argv[1:4]
cfg = resolve(None, cfg_file, overrides(data=data, steps=100_000, device="cpu"))
execute(LaunchedJob(functools.partial(train_job, cfg, run), 2, cpu=True), lambda ev: None, Requests())
"""


@pytest.mark.slow
def test_a_front_end_that_dies_stops_the_processes_which_keep_a_checkpoint(tmp_path):
    """The app killed mid-run (a crash, `kill -9`): its processes must not train on for ever holding the GPUs."""
    import signal
    import subprocess
    import sys
    import time

    data, cfg_file = tiny_cli_setup(tmp_path, 32, "checkpoint_every = 1000\nlog_every = 1")
    run = tmp_path / "run"
    front = subprocess.Popen([sys.executable, "-c", FRONT_END, str(data), str(cfg_file), str(run)],
                             cwd=Path(__file__).resolve().parents[1])
    log = run / "loss.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert front.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    def children(pid: int) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        return [int(p) for p in found]

    launcher = children(front.pid)
    workers = [w for pid in launcher for w in children(pid)]
    assert len(launcher) == 1 and len(workers) == 2, (launcher, workers)
    front.send_signal(signal.SIGKILL)
    front.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended

    deadline = time.monotonic() + 90
    while any(alive(pid) for pid in launcher + workers):
        assert time.monotonic() < deadline, "the processes trained on without their front end"
        time.sleep(0.5)
    stopped = RunDir(run).steps()[-1]
    assert stopped >= 3
    checkpoints.verify(RunDir(run).checkpoint_path(stopped))
