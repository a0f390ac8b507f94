"""Training across processes: `--num-processes` launches Accelerate on this machine, a stop sent to the launch saves
one checkpoint, and a run resumes on another number of processes with its global batch, step count and weights.

Real two-process runs (gloo on the CPU), the code path of several GPUs; each launch takes ~20-40 s on 2 cores."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import InputError
from engine.runtime import launch
from engine.training import checkpoints
from engine.training.run_dir import RunDir
from engine.training.train import format_lr, share_of_batch
from medsynth.cli import _without_processes, main
from tests.conftest import tiny_cli_setup

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _logged_steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "loss.jsonl").read_text().splitlines()]


def _state(ckpt: Path) -> dict:
    return json.loads((ckpt / checkpoints.STATE).read_text())


def _wait_for_rows(run: Path, rows: int, proc: subprocess.Popen, seconds: float = 150) -> None:
    log = run / "loss.jsonl"
    deadline = time.time() + seconds
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= rows):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        time.sleep(0.2)


# -- the rules, without processes ---------------------------------------------------------------------------------

def test_a_global_batch_is_shared_or_the_change_said():
    assert share_of_batch(64, 2) == (32, None)
    assert share_of_batch(64, 1) == (64, None)
    per, change = share_of_batch(8, 3)
    assert per == 3 and change == "the global batch 8 does not split evenly over 3 processes: it becomes 9 (3 × 3)"
    assert share_of_batch(2, 4)[0] == 1  # never an empty batch
    assert format_lr(2e-4) == "2e-4" and format_lr(1.5e-4) == "1.5e-4" and format_lr(1e-3) == "1e-3"


def test_the_launch_command_is_accelerates_on_this_machines_devices(monkeypatch):
    monkeypatch.delenv(launch.WORLD_ENV, raising=False)
    cmd = launch.launch_command(2, ["train", "d.h5", "--out", "run"], cpu=True, port=12345)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[-6:] == ["-m", "medsynth", "train", "d.h5", "--out", "run"]
    assert launch.launch_environment(cpu=True)["CUDA_VISIBLE_DEVICES"] == ""
    assert "SIGUSR1" in launch.launch_environment(cpu=False)["TORCHELASTIC_SIGNALS_TO_HANDLE"]
    assert _without_processes(["train", "d", "--num-processes", "2", "--out", "r"]) == ["train", "d", "--out", "r"]
    assert _without_processes(["sample", "r", "--num-processes=2", "--n", "4"]) == ["sample", "r", "--n", "4"]
    assert _without_processes(["train", "--num-proc", "3", "--resume"]) == ["train", "--resume"]
    # One process per GPU; any count on the CPU.
    launch.check_processes(4, "cpu", 2)
    launch.check_processes(2, "auto", 2)
    with pytest.raises(InputError, match="3 processes asked for, but this machine has 2 GPUs"):
        launch.check_processes(3, "auto", 2)
    with pytest.raises(InputError, match="has 0 GPUs"):
        launch.check_processes(2, "cuda", 0)
    assert launch.on_cpu("auto", 0) and launch.on_cpu("cpu", 4) and not launch.on_cpu("auto", 1)


def test_too_many_processes_or_a_launch_inside_a_launch_is_one_line(tmp_path, capsys, monkeypatch):
    data, cfg = tiny_cli_setup(tmp_path, 8, "log_every = 1")
    monkeypatch.setattr(launch, "local_gpus", lambda: 1)
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--config", str(cfg), "--steps", "2"]
    assert main([*args, "--num-processes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medsynth: error: 2 processes asked for, but this machine has 1 GPU (one process per GPU: give at "
                   "most 1, or --device cpu)"]
    monkeypatch.setenv(launch.WORLD_ENV, "2")
    assert main([*args, "--num-processes", "2", "--device", "cpu"]) == 2
    assert "already one of 2 launched processes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written


def test_bad_input_is_refused_before_the_processes_start(tmp_path, capsys, monkeypatch):
    """A missing file, a bad setting or a folder that is no run is one line at once, not after N start-ups."""
    def no_launch(*a, **k):
        raise AssertionError("the launcher was started")

    monkeypatch.setattr(launch, "launch_command", no_launch)
    data, _ = tiny_cli_setup(tmp_path, 8, "log_every = 1")
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nlr = "fast"\n')
    cases = [
        (["train", str(tmp_path / "nothere.h5"), "--out", str(tmp_path / "run")], "nothere.h5: does not exist"),
        (["train", str(data), "--out", str(tmp_path / "run"), "--config", str(bad)], "bad.toml: train.lr"),
        (["train", "--resume", "--out", str(tmp_path)], "is not a training run to resume"),
        (["sample", str(tmp_path / "norun"), "--n", "2", "--out", str(tmp_path / "s.h5")], "norun: does not exist"),
    ]
    for argv, words in cases:
        assert main([*argv, "--num-processes", "2", "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.h5").exists()


# What `accelerate launch` printed here when both processes refused a missing file (exit code 2).
LAUNCHER_AFTER_BAD_INPUT = """medsynth: error: nothere.h5: does not exist
medsynth: error: nothere.h5: does not exist
W1203 23:44:21.851000 19589 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 19602 closing \
signal SIGTERM
E1203 23:44:22.027000 19589 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2) local_rank: \
0 (pid: 19601) of binary: /work/main/.venv/bin/python
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
medsynth FAILED
------------------------------------------------------------
Failures:
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : -15 (pid: 19602)  (SIGTERM)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 2 (pid: 19601)
============================================================
"""


def test_the_launchers_output_is_what_the_processes_said_once():
    shown = launch.LauncherOutput()
    text = "".join(shown.feed(LAUNCHER_AFTER_BAD_INPUT[i:i + 50]) for i in range(0, len(LAUNCHER_AFTER_BAD_INPUT), 50))
    rest, code = shown.finish(1)
    assert text + rest == "medsynth: error: nothere.h5: does not exist\n" and code == 2  # one line, exit code 2
    # A progress bar passes as it is drawn; a process's own traceback (a fault, not bad input) is shown whole.
    shown = launch.LauncherOutput()
    assert shown.feed("train:  50%|##   | 2/4\r") == "train:  50%|##   | 2/4\r"
    assert shown.feed("train: 100%|#####| 4/4\n") == "train: 100%|#####| 4/4\n"
    fault = "Traceback (most recent call last):\n  File \"x.py\", line 1\nZeroDivisionError: division by zero\n"
    assert shown.feed(fault) == ""
    assert shown.finish(1) == (fault, 1)


# -- real launches ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_stopped_two_process_run_resumes_on_two_and_on_one(tmp_path, capsys):
    """SIGTERM to `medsynth train --num-processes 2` (what SLURM sends) saves one checkpoint and exits as stopped.
    Resumed on 2 processes from an earlier checkpoint it trains the weights the uninterrupted run trained; resumed on
    1 process it keeps the global batch (one process takes all of it) and its step count and optimizer go on."""
    data, cfg = tiny_cli_setup(tmp_path, 32, "checkpoint_every = 2\nlog_every = 1")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "medsynth", "train", str(data), "--out", str(run),
                             "--config", str(cfg), "--steps", "100000", "--device", "cpu", "--num-processes", "2"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(run, 5, proc)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 130, err[-4000:]
    assert "Traceback" not in err
    assert err.startswith("starting 2 processes on the CPU (accelerate launch)\n")
    assert err.count("global batch 8 = 2 processes × 4; lr 1e-3") == 1, err[-4000:]  # one process speaks
    assert err.count("terminated: stopping after this step") == 1
    assert out.count("medsynth train --resume") == 1
    steps = RunDir(run).steps()
    stopped = steps[-1]
    assert stopped >= 5 and len(steps) == 3  # the regular checkpoints, and the one the stop saved
    for step in steps:
        checkpoints.verify(RunDir(run).checkpoint_path(step))
    state = _state(RunDir(run).latest())
    assert state["processes"] == 2 and state["global_batch"] == 8
    assert _logged_steps(run) == list(range(1, stopped + 1))

    # On 2 again, from the older of two regular checkpoints: the same weights as the run that went on.
    earlier, later = steps[0], steps[1]
    assert later == earlier + 2
    again = tmp_path / "again"
    shutil.copytree(run, again)
    for step in steps[1:]:
        shutil.rmtree(RunDir(again).checkpoint_path(step))
    r = subprocess.run([sys.executable, "-m", "medsynth", "train", "--resume", "--out", str(again),
                        "--steps", str(later), "--num-processes", "2"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"steps {earlier}->{later}; global batch 8 = 2 processes × 4" in r.stderr
    assert "resumed on" not in r.stderr  # the same processes: nothing changed to say
    resumed = load_file(str(RunDir(again).checkpoint_path(later) / "model.safetensors"))
    uninterrupted = load_file(str(RunDir(run).checkpoint_path(later) / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert _logged_steps(again) == list(range(1, later + 1))

    # On 1, from where the stop left it: the global batch is kept, the step count and AdamW's go on.
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", str(stopped + 2)]) == 0
    said = capsys.readouterr()
    assert "resumed on 1 process (trained on 2): global batch 8 kept, 8 per process" in said.err
    assert f"steps {stopped}->{stopped + 2}; global batch 8; lr 1e-3" in said.err
    assert f"trained to step {stopped + 2}" in said.out
    final = RunDir(run).latest()
    assert final.name == RunDir(run).checkpoint_path(stopped + 2).name
    state = _state(final)
    assert state["processes"] == 1 and state["global_batch"] == 8 and state["config"]["train"]["batch"] == 8
    adam = load_file(str(final / "optimizer.safetensors"))
    assert {float(v) for k, v in adam.items() if k.endswith(".step")} == {stopped + 2.0}  # AdamW went on, not anew
    assert _logged_steps(run) == list(range(1, stopped + 3))


@pytest.mark.slow
def test_sigusr1_saves_a_checkpoint_like_sigterm(tmp_path):
    """`#SBATCH --signal=USR1@120` warns a job this way before a pre-emption: it saves and exits as stopped."""
    data, cfg = tiny_cli_setup(tmp_path, 16, "checkpoint_every = 100000\nlog_every = 1")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "medsynth", "train", str(data), "--out", str(run),
                             "--config", str(cfg), "--steps", "100000", "--device", "cpu"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(run, 3, proc)
    os.kill(proc.pid, signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-4000:]
    assert "Traceback" not in err and "medsynth train --resume" in out
    steps = RunDir(run).steps()
    assert len(steps) == 1 and steps[0] >= 3
    checkpoints.verify(RunDir(run).latest())


def test_each_process_batch_comes_from_the_checkpoint_not_config_json(tmp_path, phantoms16):
    """A resume on another number of processes rewrites config.json with its share of the batch; stopped before its
    first checkpoint, the run resumed on the checkpoint's own number of processes trains that checkpoint's batch."""
    from engine.jobs import Requests, execute
    from engine.training.train import TrainJob
    from tests.conftest import tiny_config

    run = tmp_path / "run"
    execute(TrainJob(tiny_config(steps=2, checkpoint_every=2), run, data=phantoms16), lambda ev: None, Requests())
    config = json.loads((run / "config.json").read_text())
    assert _state(RunDir(run).latest())["global_batch"] == 8 and config["train"]["batch"] == 8
    config["train"]["batch"] = 4  # what a resume on 2 processes left before its first checkpoint
    (run / "config.json").write_text(json.dumps(config))
    said: list = []
    execute(TrainJob(None, run, resume=True, steps=4, data=phantoms16), said.append, Requests())
    state = _state(RunDir(run).latest())
    assert state["step"] == 4 and state["global_batch"] == 8 and state["config"]["train"]["batch"] == 8
    assert any("global batch 8; lr" in getattr(ev, "text", "") for ev in said)


def test_a_launch_that_shards_the_model_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, phantoms16):
    """`accelerate launch` with a user's FSDP or DeepSpeed config sets these in each process; MedSynth trains with
    DDP, and the main process saving alone would wait forever for the others' shards."""
    data, cfg = tiny_cli_setup(tmp_path, 8, "log_every = 1")
    for name in launch.SHARDING_ENV:
        monkeypatch.setenv(name, "true")
        assert main(["train", str(data), "--out", str(tmp_path / "run"), "--config", str(cfg), "--steps", "2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "MedSynth does not train with" in err and "--multi_gpu" in err
        assert launch.SHARDING_ENV[name] in err
        assert not (tmp_path / "run").exists()
        monkeypatch.setenv(name, "false")
    launch.check_replicated()  # "false", as accelerate writes it for a DDP config: nothing to refuse
