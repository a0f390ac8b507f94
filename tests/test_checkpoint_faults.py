"""Checkpoints under faults (issue 15, fault 5): a checkpoint is never deleted before its replacement is whole,
nothing half-written is picked up, bit rot and NaN weights are refused in one line, a nonsense state.json is one
line, a torn loss log resumes, a crashed run is never mixed with a new one, and SIGTERM saves like Ctrl-C."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.errors import InputError
from engine.inference.sample import SampleJob
from engine.info import describe
from engine.io.load import load_images
from engine.jobs import Checkpoint, Message, Requests, execute
from engine.training import checkpoints
from engine.training.run_dir import RunDir, resolve_checkpoint
from engine.training.train import TrainJob
from medsynth.cli import main
from tests.conftest import tiny_cli_setup, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def train(job, requests=None):
    events: list = []
    events.append(execute(job, events.append, requests or Requests()))
    return events


def messages(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Message)]


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    """Phantoms in a MedSynth file, so a run's config names data that `train --resume` can read again."""
    return tiny_cli_setup(tmp_path_factory.mktemp("data"), 16, "")[0]


@pytest.fixture(scope="module")
def trained10(tmp_path_factory, data16):
    run = tmp_path_factory.mktemp("trained") / "run"
    train(TrainJob(tiny_config(steps=10), run, data=load_images(data16)))
    return run


@pytest.fixture
def run10(tmp_path, trained10):
    """A finished 10-step run with one checkpoint (step 10); its own copy for each test."""
    return Path(shutil.copytree(trained10, tmp_path / "run"))


# -- the final checkpoint, saved once; a replaced checkpoint never deleted first ------------------------------

def test_the_final_checkpoint_is_written_once(tmp_path, phantoms16):
    # checkpoint_every 10 and 20 steps: step 20 was saved twice (delete step_20, then rename step_20.tmp).
    events = train(TrainJob(tiny_config(steps=20), tmp_path / "run", data=phantoms16))
    assert [e.step for e in events if isinstance(e, Checkpoint)] == [10, 20]
    # A stop asked right after resuming saves nothing new: the checkpoint it resumed from is the one kept.
    stop = Requests()
    stop.stop()
    events = train(TrainJob(None, tmp_path / "run", resume=True, steps=25, data=phantoms16), stop)
    assert events[-1].cancelled and not [e for e in events if isinstance(e, Checkpoint)]
    assert events[-1].result["checkpoint"] == str(RunDir(tmp_path / "run").checkpoint_path(20))


def test_a_crash_while_a_checkpoint_is_replaced_never_loses_it(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    net = torch.nn.Linear(3, 2)
    run.save_checkpoint(5, net, None, None, {"config": {}, "normalisation": {"modality": "mri", "lo": 0, "hi": 1}})
    before = checkpoints.read_weights(run.checkpoint_path(5), "model")

    real_rename = Path.rename

    def crash_on_the_replacement(self, target):
        if self.name.endswith(".tmp"):
            raise KeyboardInterrupt("killed between the two renames")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_the_replacement)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint(5, net, None, None, {"config": {}, "normalisation": {"modality": "mri", "lo": 0,
                                                                                 "hi": 1}})
    monkeypatch.setattr(Path, "rename", real_rename)
    # The finished checkpoint was moved aside, not deleted; neither copy is listed until the run folder is tidied.
    assert run.checkpoints() == []
    said = run.recover()
    assert run.steps() == [5] and not list(run.checkpoints_dir.glob("*.tmp")) + list(run.checkpoints_dir.glob("*.old"))
    assert any("put back" in s for s in said) and any("step_0000005.tmp: removed" in s for s in said)
    after = checkpoints.read_weights(run.checkpoint_path(5), "model")
    torch.testing.assert_close(after["weight"], before["weight"])


def test_a_full_disk_mid_checkpoint_leaves_no_half_checkpoint(tmp_path, phantoms16, monkeypatch):
    import errno

    import safetensors.torch

    run = RunDir(tmp_path / "run")
    train(TrainJob(tiny_config(steps=2, checkpoint_every=2), run.path, data=phantoms16))
    save_file, calls = safetensors.torch.save_file, []

    def filling_up(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", filling_up)
    with pytest.raises(OSError, match="No space left"):
        TrainJob(None, run.path, resume=True, steps=4, data=phantoms16).run(lambda ev: None, Requests())
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step_0000002"]  # no step_4.tmp left
    checkpoints.verify(run.latest())


def test_nothing_half_written_is_resumed_sampled_or_described(run10, tmp_path, phantoms16, capsys):
    run = RunDir(run10)
    # What a crash leaves: a whole-looking step_30.tmp (state.json written, never renamed), an old copy beside
    # a checkpoint that was saved again.
    shutil.copytree(run.checkpoint_path(10), run.checkpoints_dir / "step_0000030.tmp")
    shutil.copytree(run.checkpoint_path(10), run.checkpoints_dir / "step_0000010.old")
    assert run.steps() == [10] and resolve_checkpoint(run10) == run.checkpoint_path(10)
    assert "checkpoints at steps: 10\n" in describe(run10) + "\n"
    with pytest.raises(InputError, match=r"step_0000030.tmp: is a checkpoint a crash cut short"):
        resolve_checkpoint(run.checkpoints_dir / "step_0000030.tmp")
    assert main(["info", str(run.checkpoints_dir / "step_0000030.tmp")]) == 2
    assert "cut short" in one_error_line(capsys)
    # Resuming tidies the folder first, and says what it removed.
    events = train(TrainJob(None, run10, resume=True, steps=12, data=phantoms16))
    said = messages(events)
    assert any("step_0000030.tmp: removed" in s for s in said)
    assert any("step_0000010.old: removed" in s for s in said)
    assert events[-1].result["step"] == 12 and run.steps() == [10, 12]
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step_0000010", "step_0000012"]


# -- sha256 checked, NaN refused ------------------------------------------------------------------------------

def _poke_nan(path: Path) -> None:
    """Bit rot: the last float32 of the file's data (the tensor data ends the file) becomes a NaN."""
    raw = bytearray(path.read_bytes())
    raw[-4:] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(raw))


def test_every_checkpoint_records_its_weight_files_sha256(run10):
    ckpt = RunDir(run10).latest()
    state = checkpoints.read_state(ckpt)
    assert set(state["sha256"]) == {"model.safetensors", "ema.safetensors", "optimizer.safetensors"}
    for name, digest in state["sha256"].items():
        assert checkpoints.sha256(ckpt / name) == digest
    checkpoints.verify(ckpt)


def test_bit_rotted_ema_weights_are_refused_not_sampled(run10, tmp_path, capsys):
    ema = RunDir(run10).latest() / "ema.safetensors"
    _poke_nan(ema)
    out = tmp_path / "s.h5"
    with pytest.raises(InputError) as err:
        SampleJob(run10, 2, out, steps=2).run(lambda ev: None, Requests())
    assert str(ema) in str(err.value) and "damaged" in str(err.value) and "sha256" in str(err.value)
    assert main(["sample", str(run10), "--n", "2", "--steps", "2", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "ema.safetensors: is damaged" in line
    assert not out.exists()
    # info says so too: what it describes must be true of the files.
    assert main(["info", str(run10)]) == 2
    assert "ema.safetensors: is damaged" in one_error_line(capsys)


def test_nan_weights_are_refused_even_with_a_matching_sha256(run10, tmp_path, phantoms16, capsys):
    # A run that diverged (or a file rewritten with its hash) holds NaN the hash cannot catch: the values can.
    ckpt = RunDir(run10).latest()
    _poke_nan(ckpt / "model.safetensors")
    state = json.loads((ckpt / "state.json").read_text())
    state["sha256"]["model.safetensors"] = checkpoints.sha256(ckpt / "model.safetensors")
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match=r"model.safetensors: is damaged \(1 of its tensors hold NaN"):
        TrainJob(None, run10, resume=True, steps=12, data=phantoms16).run(lambda ev: None, Requests())
    assert main(["train", "--resume", "--out", str(run10), "--steps", "12"]) == 2
    err = capsys.readouterr().err  # values are checked as the weights load, after set-up has said its lines
    assert "model.safetensors: is damaged" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert RunDir(run10).steps() == [10]  # nothing trained, nothing saved


def test_a_diverged_run_saves_no_nan_checkpoint_and_keeps_the_good_ones(tmp_path, phantoms16, monkeypatch):
    # A run whose weights turn NaN (a learning rate far too high): saving on would replace the good checkpoints.
    run = RunDir(tmp_path / "run")
    train(TrainJob(tiny_config(steps=4, checkpoint_every=2), run.path, data=phantoms16))
    step_once = TrainJob._train_step

    def diverging(self, state, step):
        out = step_once(self, state, step)
        if step >= 4:
            with torch.no_grad():
                next(state.net.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(TrainJob, "_train_step", diverging)
    with pytest.raises(InputError, match=r"step_0000006: not saved: the weights hold NaN .* at step 6 \(training "
                                         r"diverged"):
        TrainJob(None, run.path, resume=True, steps=30, data=phantoms16).run(lambda ev: None, Requests())
    assert run.steps() == [2, 4] and not list(run.checkpoints_dir.glob("*.tmp"))
    for ckpt in run.checkpoints():
        checkpoints.verify(ckpt)
        assert checkpoints.read_weights(ckpt, "ema")


def test_a_checkpoint_from_before_hashes_still_loads(tmp_path):
    from tests.data.make_old_run import OLD_RUN

    old = resolve_checkpoint(OLD_RUN)
    assert "sha256" not in checkpoints.read_state(old)
    checkpoints.verify(old)
    assert checkpoints.read_weights(old, "ema")


# -- nonsense state.json ---------------------------------------------------------------------------------------

NONSENSE_STATES = {
    "a list": "[1, 2]",
    "step as text": {"step": "abc"},
    "a negative step": {"step": -3},
    "config as text": {"config": "fast"},
    "no normalisation": {"normalisation": None},
    "lo as text": {"normalisation": {"modality": "mri", "lo": "low", "hi": 1}},
    "optimizer groups as a number": {"optimizer_param_groups": 5},
    "hashes as a list": {"sha256": ["x"]},
    "unknown config section": {"config": {"engine": {"x": 1}}},
    "class names as a number": {"class_names": 4},
}


@pytest.mark.parametrize("case", sorted(NONSENSE_STATES))
def test_a_nonsense_state_json_is_one_line_naming_it(case, tmp_path, run10, capsys):
    state_path = RunDir(run10).latest() / "state.json"
    change = NONSENSE_STATES[case]
    if isinstance(change, str):
        state_path.write_text(change)
    else:
        state = json.loads(state_path.read_text())
        state.update(change)
        state_path.write_text(json.dumps(state))
    out = tmp_path / "s.h5"
    for argv in (["sample", str(run10), "--n", "1", "--steps", "1", "--out", str(out)],
                 ["info", str(run10)], ["train", "--resume", "--out", str(run10), "--steps", "11"]):
        assert main(argv) == 2, argv
        line = one_error_line(capsys)
        assert str(state_path) in line, line
    assert not out.exists() and RunDir(run10).steps() == [10]


def test_a_state_json_that_is_not_text_is_one_line(run10, capsys):
    state_path = RunDir(run10).latest() / "state.json"
    state_path.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["info", str(run10)]) == 2
    assert f"{state_path}: is unreadable" in one_error_line(capsys)


# -- the loss log ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("torn", [b'{"step": 11, "lo', b"\x00" * 64, b'{"step": 11, "loss": 0.5\xe2\x82'])
def test_resume_reads_past_a_torn_last_line_and_says_so(torn, run10, phantoms16):
    log = run10 / "loss.jsonl"
    with open(log, "ab") as fh:  # what a full disk or a crash mid-write leaves at the end
        fh.write(torn)
    events = train(TrainJob(None, run10, resume=True, steps=20, data=phantoms16))
    assert events[-1].result["step"] == 20
    assert any("loss.jsonl: dropped 1 line cut short" in s for s in messages(events))
    assert logged_steps(run10) == list(range(1, 21))  # strictly increasing, no torn line left
    assert "lines cut short" not in describe(run10)


# -- a crashed run and a new one are never mixed ----------------------------------------------------------------

class _Crash(Exception):
    pass


def _crash_at(step: int):
    def emit(ev):
        if getattr(ev, "stage", None) == "train" and ev.done >= step:
            raise _Crash  # a crash mid-run: nothing is saved, as after kill -9
    return emit


def test_a_new_run_into_a_folder_of_a_run_that_crashed_before_its_first_checkpoint_is_refused(tmp_path, phantoms16,
                                                                                                 data16, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(steps=100, checkpoint_every=1000, log_every=1)
    with pytest.raises(_Crash):
        TrainJob(cfg, run, data=phantoms16).run(_crash_at(7), Requests())
    assert not RunDir(run).has_checkpoint() and logged_steps(run)[-1] >= 6
    before = (run / "loss.jsonl").read_bytes()
    with pytest.raises(InputError, match=r"run: holds a training run that stopped before its first checkpoint, "
                                         r"logged to step \d+; resume it"):
        TrainJob(tiny_config(steps=5), run, data=phantoms16)
    assert main(["train", str(data16), "--out", str(run), "--steps", "3"]) == 2
    assert "stopped before its first checkpoint" in one_error_line(capsys)
    assert (run / "loss.jsonl").read_bytes() == before  # nothing written
    # Resuming trains it again from step 0 with its own settings: one run's steps, each once.
    events = train(TrainJob(None, run, resume=True, steps=12, data=phantoms16))
    assert any("no checkpoint was saved before the run stopped" in s for s in messages(events))
    assert events[-1].result["step"] == 12 and RunDir(run).steps() == [12]
    assert logged_steps(run) == list(range(1, 13))


# -- SIGTERM -----------------------------------------------------------------------------------------------------

def test_sigterm_saves_a_checkpoint_and_exits_as_cancelled(tmp_path):
    data, cfg = tiny_cli_setup(tmp_path, 16, "checkpoint_every = 100000\nlog_every = 1")
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "medsynth", "train", str(data), "--out", str(run),
                             "--config", str(cfg), "--steps", "100000"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "loss.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)  # what SLURM and systemd send before they kill
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "medsynth train --resume" in out
    steps = RunDir(run).steps()
    assert len(steps) == 1 and steps[0] >= 3
    checkpoints.verify(RunDir(run).latest())
    assert logged_steps(run) == list(range(1, steps[0] + 1))


def test_a_second_run_into_a_folder_being_trained_is_refused(tmp_path, phantoms16):
    """Two trainings into one folder would interleave loss.jsonl and prune each other's checkpoints: while one
    holds the folder, a second (new or resumed) is refused in one line before it touches anything."""
    from engine.io import destination

    run = tmp_path / "run"
    train(TrainJob(tiny_config(steps=2, checkpoint_every=2), run, data=phantoms16))
    before = sorted(p.name for p in run.rglob("*"))
    with destination.writer_lock(run):
        with pytest.raises(InputError, match="another MedSynth run"):
            TrainJob(None, run, resume=True, data=phantoms16)
        with pytest.raises(InputError, match="another MedSynth run"):
            TrainJob(tiny_config(steps=2), tmp_path / "run", data=phantoms16)
    assert sorted(p.name for p in run.rglob("*")) == before
    train(TrainJob(None, run, resume=True, steps=4, data=phantoms16))  # the lock let go, the run goes on
    assert RunDir(run).steps()[-1] == 4


def test_a_disk_too_small_for_the_checkpoints_is_refused_before_the_first_step(tmp_path, phantoms16, monkeypatch):
    """The checkpoints' room is checked when the model's size is known, not found missing at the first save."""
    from engine.io import destination

    monkeypatch.setattr(destination, "free_bytes", lambda folder: 2 << 20)
    with pytest.raises(InputError, match="needs about") as err:
        train(TrainJob(tiny_config(steps=4, checkpoint_every=2), tmp_path / "run", data=phantoms16))
    assert str(err.value).startswith(str(tmp_path / "run"))
    assert not (tmp_path / "run" / "loss.jsonl").exists() and not list(tmp_path.rglob("step_*"))
