"""kill -9 during training, at chosen moments: before, during and after each checkpoint, mid-row of the loss log,
while old checkpoints are removed, while a resumed run rewrites its files (issue 15, "a fault-injection suite").

Each case runs `medsynth train` (medsynth.cli.main) in a child process forked from this one, so the child starts
in milliseconds instead of importing torch again; a hook installed in the child only sends it SIGKILL at the
moment named, the way the kernel's OOM killer or a power cut would end it. After each kill the invariants hold:
every checkpoint the run folder lists loads and verifies, nothing half-written is listed, and `--resume` continues
the same run: its loss log ends with each step once, in order, and its losses are those of an uninterrupted run.
"""

import json
import os
import pathlib
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from engine.io.load import load_images
from engine.jobs import Requests
from engine.training import checkpoints
from engine.training.run_dir import RunDir, resolve_checkpoint
from engine.training.train import TrainJob
from medsynth.cli import main
from tests.conftest import tiny_cli_setup

STEPS = 12  # every case's run; checkpoints every 4 steps (4, 8, 12), one loss row per step
CHILD_LIMIT_S = 60


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(hook: tuple) -> None:
    """In the child only: arrange for SIGKILL at the moment `hook` names."""
    kind, step = hook[0], hook[1]
    name = f"step_{step:07d}"
    if kind in ("row", "torn row"):
        from engine.training import run_dir

        write = run_dir.LossLog.write

        def log_write(self, row):
            if row["step"] == step and self._fh.name.endswith("loss.jsonl"):
                if kind == "torn row":  # what a full disk or a crash mid-write leaves
                    self._fh.write(json.dumps(row)[:17])
                    self._fh.flush()
                    _die()
                write(self, row)
                _die()
            write(self, row)

        run_dir.LossLog.write = log_write
    elif kind == "weights written":
        import safetensors.torch

        save_file, count = safetensors.torch.save_file, [0]

        def save(tensors, path, *args, **kwargs):
            save_file(tensors, path, *args, **kwargs)
            if Path(path).parent.name == name + ".tmp":
                count[0] += 1
                if count[0] == hook[2]:
                    _die()

        safetensors.torch.save_file = save
    elif kind in ("before rename", "after rename"):
        rename, count = pathlib.Path.rename, [0]

        def renamed(self, target):
            if self.name == name + ".tmp":
                count[0] += 1
                if count[0] == hook[2]:
                    if kind == "before rename":
                        _die()
                    out = rename(self, target)
                    _die()
                    return out
            return rename(self, target)

        pathlib.Path.rename = renamed
    elif kind == "removing old":
        rmtree = shutil.rmtree

        def removing(path, *args, **kwargs):
            if Path(path).name == name:
                (Path(path) / "model.safetensors").unlink()  # the first file gone, then the power cut
                _die()
            return rmtree(path, *args, **kwargs)

        shutil.rmtree = removing
    elif kind == "rewriting":  # a file a resumed run writes anew: loss.jsonl (trimmed) or config.json
        write_text = pathlib.Path.write_text

        def half_written(self, text, *args, **kwargs):
            if self.name.startswith(hook[2]):
                write_text(self, text[:len(text) // 2], *args, **kwargs)
                _die()
            return write_text(self, text, *args, **kwargs)

        pathlib.Path.write_text = half_written
    else:
        raise ValueError(kind)


def run_child(argv: list[str], hook: tuple | None) -> int:
    """`medsynth ARGV` in a forked child with `hook` installed; its exit status (-9: killed)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            import threading

            import torch
            import tqdm

            torch.set_num_threads(1)  # as DataLoader workers do after a fork
            tqdm.tqdm.set_lock(threading.RLock())  # a lock another thread of this process held at the fork stays held
            if hook is not None:
                _install(hook)
            code = main(argv)
        finally:
            os._exit(code)
    deadline = time.monotonic() + CHILD_LIMIT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the child {argv} ran past {CHILD_LIMIT_S} s")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fi")
    data, cfg = tiny_cli_setup(folder, 16, "checkpoint_every = 4\nlog_every = 1")
    return data, cfg, folder


@pytest.fixture(scope="module")
def straight(setup):
    """The losses of an uninterrupted run, which every killed-then-resumed run must repeat."""
    data, cfg, folder = setup
    run = folder / "straight"
    assert run_child(["train", str(data), "--out", str(run), "--config", str(cfg), "--steps", str(STEPS)],
                     None) == 0
    return [json.loads(x) for x in (run / "loss.jsonl").read_text().splitlines()]


def train_argv(setup, run: Path, steps: int = STEPS) -> list[str]:
    data, cfg, _ = setup
    return ["train", str(data), "--out", str(run), "--config", str(cfg), "--steps", str(steps)]


def assert_every_listed_checkpoint_verifies(run: RunDir) -> None:
    for folder in (run, run.autoencoder):
        for ckpt in folder.checkpoints():
            assert not ckpt.name.endswith((".tmp", ".old")), ckpt
            checkpoints.verify(ckpt)
            for weights in ckpt.glob("*.safetensors"):
                checkpoints.read_weights(ckpt, weights.stem)
    if run.has_checkpoint() and run.latest() is not None:
        assert resolve_checkpoint(run.path) == run.latest()


def assert_resume_continues_the_same_run(setup, run: RunDir, straight: list[dict]) -> None:
    data, _, _ = setup
    result = TrainJob(None, run.path, resume=True, data=load_images(data)).run(lambda ev: None, Requests())
    assert result["step"] == STEPS and run.steps()[-1] == STEPS
    assert_every_listed_checkpoint_verifies(run)
    assert not [p.name for p in run.checkpoints_dir.iterdir() if not p.name[5:].isdigit()]  # tidied
    rows = [json.loads(x) for x in run.loss_log_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step once, in order
    for mine, theirs in zip(rows, straight):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-3, abs=1e-4), mine["step"]


# (name, hook, what is on disk after the kill: the checkpoints listed)
CASES = [
    ("before the first checkpoint", ("row", 2), []),
    ("mid-row of the loss log", ("torn row", 6), [4]),
    ("mid-checkpoint, after its first weight file", ("weights written", 8, 1), [4]),
    ("mid-checkpoint, every weight file written", ("weights written", 8, 3), [4]),
    ("checkpoint whole, before its rename", ("before rename", 8, 1), [4]),
    ("right after a checkpoint", ("after rename", 8, 1), [4, 8]),
    ("while the oldest checkpoint is removed", ("removing old", 4, 0), [8, 12, 16]),
]


@pytest.mark.parametrize("name,hook,listed", CASES, ids=[c[0] for c in CASES])
def test_kill_9_during_training_keeps_every_invariant(name, hook, listed, setup, straight, tmp_path):
    run = RunDir(tmp_path / "run")
    steps = 16 if hook[0] == "removing old" else STEPS  # a fourth checkpoint removes the first
    assert run_child(train_argv(setup, run.path, steps), hook) == -signal.SIGKILL
    assert run.steps() == listed
    assert_every_listed_checkpoint_verifies(run)
    if hook[0] == "removing old":
        return  # past STEPS already: the removed checkpoint's neighbours verify, nothing more to resume
    assert_resume_continues_the_same_run(setup, run, straight)


def test_the_final_checkpoint_is_never_deleted_to_be_saved_again(setup, straight, tmp_path):
    # Step 12 is both a checkpoint_every step and the last: it was saved twice, deleting the first copy before
    # renaming the second; a kill between the two lost the finished checkpoint. A second save is now a kill.
    run = RunDir(tmp_path / "run")
    assert run_child(train_argv(setup, run.path), ("before rename", STEPS, 2)) == 0
    assert run.steps() == [4, 8, 12]
    assert_every_listed_checkpoint_verifies(run)


@pytest.mark.parametrize("file", ["loss.jsonl", "config.json"])
def test_kill_9_while_a_resumed_run_rewrites_its_files(file, setup, straight, tmp_path):
    run = RunDir(tmp_path / "run")
    assert run_child(train_argv(setup, run.path), ("row", 10)) == -signal.SIGKILL  # rows 9, 10 after step 8
    assert run.steps() == [4, 8]
    assert run_child(["train", "--resume", "--out", str(run.path)], ("rewriting", 0, file)) == -signal.SIGKILL
    assert [r["step"] for r in run.loss_rows()][:8] == list(range(1, 9))  # what the checkpoint covers is kept
    run.read_config()
    assert_resume_continues_the_same_run(setup, run, straight)
