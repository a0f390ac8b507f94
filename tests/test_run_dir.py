"""The run folder (engine.training.run_dir): its layout, which checkpoint resumes, the stage-1 folder, the loss
log; and a run folder written by MedSynth 0.1.0 (tests/data/run_v0.1.0) still resumes, samples and describes."""

import json
import shutil

import h5py
import pytest
import torch

from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.inference.sample import SampleJob
from engine.info import describe
from engine.jobs import Checkpoint, Progress, Requests
from engine.training.run_dir import RunDir, is_run_or_checkpoint, resolve_checkpoint
from engine.training.train import TrainJob
from medsynth.cli import main
from tests.data.make_old_run import OLD_RUN, OLD_RUN_IMAGES, OLD_RUN_SEED, OLD_RUN_STEPS


def fake_checkpoint(run: RunDir, name: str, step: int, complete: bool = True):
    """A checkpoint folder as far as the run folder's layout goes: its state file marks it complete."""
    path = run.checkpoints_dir / name
    path.mkdir(parents=True)
    if complete:
        (path / "state.json").write_text(json.dumps({"step": step, "config": {},  # read_state checks its shape
                                                     "normalisation": {"modality": "mri", "lo": 0, "hi": 1}}))
    return path


def test_each_file_of_the_run_folder_has_its_fixed_name(tmp_path):
    # The names are the on-disk format: run folders written by older versions must still be found.
    run = RunDir(tmp_path / "run")
    assert run.config_path == tmp_path / "run" / "config.json"
    assert run.facts_path == tmp_path / "run" / "run.json"
    assert run.loss_log_path == tmp_path / "run" / "loss.jsonl"
    assert run.checkpoints_dir == tmp_path / "run" / "checkpoints"
    assert run.checkpoint_path(30) == tmp_path / "run" / "checkpoints" / "step_0000030"
    assert run.autoencoder.path == tmp_path / "run" / "autoencoder"
    assert run.autoencoder.checkpoints_dir == tmp_path / "run" / "autoencoder" / "checkpoints"
    assert RunDir.of_checkpoint(run.checkpoint_path(30)).path == run.path
    assert RunDir.of_checkpoint(tmp_path / "loose_checkpoint") is None


def test_config_and_facts_round_trip(tmp_path):
    from tests.conftest import tiny_config

    run = RunDir(tmp_path / "new" / "run")
    cfg = tiny_config(steps=7)
    run.write_config(cfg)
    run.write_facts({"class_names": ["a", "b"], "spacing": None})
    assert run.read_config().train.steps == 7
    assert run.read_facts() == {"class_names": ["a", "b"], "spacing": None}
    run.facts_path.write_text("{not json")
    with pytest.raises(InputError, match="run.json: is unreadable"):
        run.read_facts()


def test_latest_checkpoint_is_the_highest_complete_step(tmp_path):
    run = RunDir(tmp_path)
    for step in (2, 10, 9):
        fake_checkpoint(run, f"step_{step:07d}", step)
    fake_checkpoint(run, "step_0000012", 12, complete=False)  # a crash before its state was written
    fake_checkpoint(run, "step_0000011.tmp", 11)  # one still being written
    assert [p.name for p in run.checkpoints()] == ["step_0000002", "step_0000009", "step_0000010"]
    assert run.steps() == [2, 9, 10]
    assert run.latest() == run.checkpoint_path(10)
    assert run.checkpoint(9) == run.checkpoint_path(9)
    with pytest.raises(InputError, match="no checkpoint at step 12 .*steps: 2, 9, 10"):
        run.checkpoint(12)
    assert resolve_checkpoint(tmp_path) == run.checkpoint_path(10)
    assert resolve_checkpoint(run.checkpoint_path(2)) == run.checkpoint_path(2)  # a checkpoint folder is itself
    assert is_run_or_checkpoint(tmp_path) and is_run_or_checkpoint(run.checkpoint_path(2))
    assert RunDir(tmp_path / "empty").latest() is None


def test_saving_keeps_the_newest_three_checkpoints(tmp_path):
    run = RunDir(tmp_path / "run")
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    for step in (1, 2, 3, 4, 5):
        path = run.save_checkpoint(step, net, {k: v.clone() for k, v in net.state_dict().items()}, opt,
                                   {"note": "x"})
        assert path == run.checkpoint_path(step)
    assert run.steps() == [3, 4, 5]
    assert json.loads((run.latest() / "state.json").read_text())["step"] == 5
    assert {p.name for p in run.latest().iterdir()} == {"model.safetensors", "ema.safetensors",
                                                       "optimizer.safetensors", "state.json"}


def test_a_folder_that_is_not_a_run_is_refused_in_one_line(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError) as err:
        TrainJob(None, folder, resume=True)
    text = str(err.value)
    assert "\n" not in text and str(folder) in text and "is not a training run" in text
    with pytest.raises(InputError, match="does not exist"):
        TrainJob(None, tmp_path / "nowhere", resume=True)
    # The console says the same, in one line, with the exit code of bad input.
    assert main(["train", "--resume", "--out", str(folder)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "photos: is not a training run" in err_lines[0]
    assert not list(folder.glob("*.json")) and not (folder / "checkpoints").exists()  # nothing written


def test_resume_without_the_config_names_the_missing_file(tmp_path):
    run = RunDir(tmp_path / "run")
    fake_checkpoint(run, "step_0000004", 4)
    with pytest.raises(InputError, match="config.json: is missing"):
        run.resume_checkpoint()


def test_the_autoencoder_stage_folder_makes_a_run_resumable_from_stage_1(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.holds_run()
    run.refuse_new_run()  # an empty folder takes a new run
    fake_checkpoint(run.autoencoder, "step_0000003", 3)
    run.config_path.write_text("{}")
    assert run.holds_run() and run.latest() is None
    assert run.resume_checkpoint() is None and run.resume_step() == 0  # stage 2 has not begun
    with pytest.raises(InputError, match="already holds a training run; resume it"):
        run.refuse_new_run()
    fake_checkpoint(run, "step_0000005", 5)
    assert run.resume_checkpoint() == run.checkpoint_path(5) and run.resume_step() == 5


def test_the_loss_log_is_trimmed_to_the_step_training_continues_from(tmp_path):
    run = RunDir(tmp_path / "run")
    log = run.open_loss_log(0)
    for step in range(1, 8):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    before = run.loss_log_path.read_text().splitlines()
    assert [r["step"] for r in run.loss_rows()] == list(range(1, 8))
    assert [r["step"] for r in run.loss_rows(upto=3)] == [1, 2, 3]
    # A run resumed from step 4 trains steps 5..7 again: their old rows go, the kept rows stay as written.
    log = run.open_loss_log(4)
    log.write({"step": 5, "loss": 0.5})
    log.close()
    after = run.loss_log_path.read_text().splitlines()
    assert after[:4] == before[:4] and [json.loads(x)["step"] for x in after] == [1, 2, 3, 4, 5]
    run.trim_loss_log(2)
    assert [r["step"] for r in run.loss_rows()] == [1, 2]
    # A row cut short by a crash mid-write is read past, and dropped when the run resumes.
    with open(run.loss_log_path, "a") as fh:
        fh.write('{"step": 3, "lo')
    assert [r["step"] for r in run.loss_rows()] == [1, 2]
    run.open_loss_log(2).close()
    assert [json.loads(x)["step"] for x in run.loss_log_path.read_text().splitlines()] == [1, 2]
    assert RunDir(tmp_path / "none").loss_rows() == []


@pytest.fixture
def old_run(tmp_path):
    """A copy of the run folder MedSynth 0.1.0 wrote, so resuming does not touch the kept one."""
    run = tmp_path / "run_v0.1.0"
    shutil.copytree(OLD_RUN, run)
    return run


def test_a_run_folder_written_before_the_reshape_resumes(old_run):
    old_log = (old_run / "loss.jsonl").read_text().splitlines()
    assert RunDir(old_run).steps() == [OLD_RUN_STEPS]
    data = make_phantoms(OLD_RUN_IMAGES, size=16, seed=OLD_RUN_SEED)
    events: list = []
    result = TrainJob(None, old_run, resume=True, steps=OLD_RUN_STEPS + 4, data=data).run(events.append,
                                                                                          Requests())
    trained = [e.done for e in events if isinstance(e, Progress) and e.stage == "train"]
    assert trained == list(range(OLD_RUN_STEPS + 1, OLD_RUN_STEPS + 5))  # steps go on from the saved step
    assert result["step"] == OLD_RUN_STEPS + 4
    assert [e.step for e in events if isinstance(e, Checkpoint)] == [OLD_RUN_STEPS + 4]
    run = RunDir(old_run)
    assert run.steps() == [OLD_RUN_STEPS, OLD_RUN_STEPS + 4]
    state = json.loads((run.latest() / "state.json").read_text())
    assert state["step"] == OLD_RUN_STEPS + 4 and state["class_names"] == data.class_names
    log = run.loss_log_path.read_text().splitlines()
    assert log[:len(old_log)] == old_log  # appended to, not rewritten
    assert [json.loads(x)["step"] for x in log] == list(range(1, OLD_RUN_STEPS + 5))


def test_a_run_folder_written_before_the_reshape_describes_and_samples(old_run, tmp_path, capsys):
    assert main(["info", str(old_run)]) == 0
    text = capsys.readouterr().out.strip()
    assert text == describe(old_run)
    assert f"training run, preset demo, step {OLD_RUN_STEPS} of {OLD_RUN_STEPS}" in text
    assert f"checkpoints at steps: {OLD_RUN_STEPS}" in text and "4 classes" in text
    assert f"at step {OLD_RUN_STEPS}" in text.splitlines()[-1]  # the loss line reads the old log
    out = tmp_path / "old.h5"
    SampleJob(old_run, 3, out, steps=3, seed=0).run(lambda ev: None, Requests())
    with h5py.File(out) as f:
        assert f["images"].shape == (3, 1, 16, 16) and f["masks"].shape == (3, 16, 16)
        assert int(f.attrs["n_complete"]) == 3
