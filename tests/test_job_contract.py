"""The job contract (engine/jobs.py): every job runs as run(emit, requests), ends early only by raising
Cancelled after keeping what it did, and is turned into one Done by execute(); the CLI's Ctrl-C and the
app's Stop reach a job through the same Requests; evaluation stages are one enum from the engine to the app."""

from __future__ import annotations

import inspect
import os
import re
import signal
from pathlib import Path

import h5py
import pytest

from engine.data.phantoms import make_phantoms
from engine.demo import DemoJob
from engine.evaluation.evaluate import EvalSettings, EvaluateJob
from engine.evaluation.stages import Stage
from engine.inference.sample import SampleJob
from engine.io.medsynth_writer import write_image_set
from engine.jobs import Cancelled, Checkpoint, Done, Event, Job, Preview, Progress, Requests, execute
from engine.runtime.launched_job import LaunchedJob
from engine.training.finetune import FinetuneJob
from engine.training.train import TrainJob
from tests.conftest import StopAfter, make_evaluation_files, tiny_config

ROOT = Path(__file__).resolve().parents[1]
JOBS = (TrainJob, FinetuneJob, SampleJob, EvaluateJob, DemoJob, LaunchedJob)


def test_every_job_class_is_known_here():
    """A new job class anywhere in the engine must be added to JOBS, so the contract tests reach it."""
    found = {m.group(1) for p in (ROOT / "engine").rglob("*.py")
             for m in re.finditer(r"^class (\w+Job)\b", p.read_text(), re.M)}
    assert found == {cls.__name__ for cls in JOBS}


@pytest.mark.parametrize("cls", JOBS, ids=lambda c: c.__name__)
def test_every_job_has_the_protocols_run_signature(cls):
    expected = inspect.signature(Job.run)
    actual = inspect.signature(cls.run)
    assert list(actual.parameters) == list(expected.parameters) == ["self", "emit", "requests"]
    for name in ("emit", "requests"):
        assert actual.parameters[name].annotation == expected.parameters[name].annotation
    assert actual.return_annotation == expected.return_annotation


def test_job_instances_satisfy_the_runtime_protocol(tiny_run, tmp_path):
    assert isinstance(SampleJob(tiny_run, 2, tmp_path / "s.h5"), Job)
    assert isinstance(DemoJob(tmp_path / "demo"), Job)
    assert not isinstance(object(), Job)


def test_done_is_an_outcome_not_an_event():
    assert Done not in Event.__args__


def test_requests_are_typed_one_shots():
    req = Requests()
    assert not req.stop_asked() and not req.take_save_now() and not req.take_preview_now()
    req.save_now()
    req.preview_now()
    assert req.take_save_now() and not req.take_save_now()  # honoured once
    assert req.take_preview_now() and not req.take_preview_now()
    req.check()  # no stop asked: nothing happens
    req.stop()
    assert req.stop_asked()
    with pytest.raises(Cancelled, match="after 3 of 9"):
        req.check("after 3 of 9")


# --------------------------------------------------------------------------- a stop keeps what was done

def test_a_stopped_training_raises_cancelled_after_saving_its_checkpoint(tmp_path, phantoms16):
    events: list = []
    with pytest.raises(Cancelled) as stopped:
        TrainJob(tiny_config(steps=20), tmp_path / "run", data=phantoms16).run(events.append, StopAfter(4))
    result = stopped.value.result
    assert result["step"] == 4 and Path(result["checkpoint"]).name == "step_0000004"
    assert (Path(result["checkpoint"]) / "ema.safetensors").exists()
    assert not [e for e in events if isinstance(e, Done)]  # the end is raised or returned, never emitted


def test_a_stopped_sampling_run_keeps_its_complete_samples(tiny_run, tmp_path):
    out = tmp_path / "s.h5"
    done = execute(SampleJob(tiny_run, 6, out, steps=3, batch=2, redraw_mismatches=False), lambda ev: None,
                   StopAfter(5))  # batch 1: 1 + 3 polls; batch 2 stops at its first denoising step
    assert done.cancelled and done.result["n"] == 2
    with h5py.File(out) as f:
        assert f.attrs["n_complete"] == 2 and f.attrs["n_planned"] == 6


def test_a_stopped_evaluation_writes_its_partial_figures(tmp_path):
    _, _, test_path, synth_path = make_evaluation_files(tmp_path)
    settings = EvalSettings(skip=[Stage.FID, Stage.FEATURES, Stage.RADIOMICS, Stage.LABELS, Stage.UTILITY],
                            report=False)
    events: list = []
    done = execute(EvaluateJob(synth_path, real=test_path, settings=settings), events.append,
                   StopAfter(3))  # load (1), diversity (2: start and between its halves), then memorization
    assert done.cancelled and not done.result["complete"]
    assert "ms_ssim_synth" in done.result["figures"] and "nn_corr_max" not in done.result["figures"]
    with h5py.File(synth_path) as f:
        assert "ms_ssim_synth" in f["metrics"].attrs
    assert not [e for e in events if isinstance(e, Done)]


def test_a_stopped_demo_keeps_its_training_and_writes_no_samples(tmp_path):
    job = DemoJob(tmp_path / "demo", steps=50, n=4)
    done = execute(job, lambda ev: None, StopAfter(2))
    assert done.cancelled and done.result["step"] == 2
    assert (job.run_dir / "checkpoints" / "step_0000002").is_dir() and not job.synth.exists()


# --------------------------------------------------------------------------- the front ends' stop

class RecordingSampleJob(SampleJob):
    """A real sampling job that remembers the requests it was run with."""

    def run(self, emit, requests):
        self.requests = requests
        return super().run(emit, requests)


def test_ctrl_c_in_the_cli_stops_a_job_through_its_requests(tiny_run, tmp_path):
    from medsynth.cli import EXIT_CANCELLED, TqdmView, exit_code, run_job

    class CtrlCAfterFirstBatch(TqdmView):
        def __call__(self, ev):
            super().__call__(ev)
            if isinstance(ev, Progress) and ev.stage == "sample" and ev.done == 2:
                os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    job = RecordingSampleJob(tiny_run, 6, tmp_path / "s.h5", steps=2, batch=2, redraw_mismatches=False)
    done = run_job(job, CtrlCAfterFirstBatch(quiet=True))
    assert isinstance(job.requests, Requests) and job.requests.stop_asked()
    assert done.cancelled and done.result["n"] == 2 and exit_code(done) == EXIT_CANCELLED
    assert signal.getsignal(signal.SIGINT) is before  # the handler is the CLI's only while the job runs


def test_stop_in_the_app_stops_a_job_through_the_same_requests(tiny_run, tmp_path, qtbot):
    from medsynth_gui.worker import JobRunner

    runner = JobRunner()
    job = RecordingSampleJob(tiny_run, 6, tmp_path / "s.h5", steps=2, batch=2, redraw_mismatches=False)
    with qtbot.waitSignal(runner.done, timeout=60_000) as finished:
        runner.start(job)
        runner.stop()  # the button's slot; honoured at the job's first poll
    done = finished.args[0]
    assert job.requests is runner.requests and job.requests.stop_asked()
    assert isinstance(done, Done) and done.cancelled and done.result["n"] == 0
    # Stopped before its first sample: no file (an old one at that name would have stayed as it was).
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_train_panels_save_and_preview_buttons_reach_the_running_job(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from medsynth_gui.panels.train_panel import TrainPanel

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.data_edit.setText(str(write_image_set(tmp_path / "d.h5", make_phantoms(16, 16))))
    panel.run_edit.setText(str(tmp_path / "run"))
    panel.steps_spin.setValue(100_000)
    panel.batch_spin.setValue(4)
    panel.size_spin.setValue(16)
    seen: list = []
    panel.runner.event.connect(seen.append)
    panel.start()
    qtbot.waitUntil(lambda: panel.progress.value() >= 2, timeout=120_000)
    panel.save_btn.click()
    panel.sample_btn.click()
    qtbot.waitUntil(lambda: {Checkpoint, Preview} <= {type(e) for e in seen}, timeout=120_000)
    with qtbot.waitSignal(panel.runner.done, timeout=60_000) as finished:
        panel.stop()
    assert finished.args[0].cancelled
    # The demo preset saves every 200 steps and previews every 100: these came from the buttons.
    assert next(e for e in seen if isinstance(e, Checkpoint)).step < 100
    assert next(e for e in seen if isinstance(e, Preview)).step < 100


# --------------------------------------------------------------------------- evaluation stages

def test_stage_names_round_trip():
    for stage in Stage:
        assert Stage(stage.value) is stage and str(stage) == stage.value


def test_the_evaluate_panel_names_every_stage_the_engine_runs(tmp_path, qtbot):
    from medsynth_gui.panels.evaluate_panel import STAGE_TEXT, EvaluatePanel

    assert set(STAGE_TEXT) == set(Stage)
    _, _, test_path, synth_path = make_evaluation_files(tmp_path)
    skip = [Stage.FID, Stage.FEATURES, Stage.RADIOMICS, Stage.MEMORIZATION, Stage.LABELS, Stage.UTILITY]
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    shown: list[str] = []
    stages: list = []

    def emit(ev):
        if isinstance(ev, Progress) and ev.stage == "evaluate":
            stages.append(ev.info["stage"])
            panel._on_event(ev)
            shown.append(panel.status.text())

    execute(EvaluateJob(synth_path, real=test_path, settings=EvalSettings(skip=skip)), emit, Requests())
    ran = [s for s in Stage if s not in skip]
    assert stages == [*ran, None]
    assert shown == [f"{i + 1}/{len(ran)}: {STAGE_TEXT[s]}" for i, s in enumerate(ran)] + \
        [f"{len(ran)}/{len(ran)}: done"]


def test_the_cli_shows_a_training_stage_as_a_stepped_bar():
    from medsynth.cli import TqdmView

    view = TqdmView()
    view(Progress(Stage.UTILITY, 3, 30))
    bar = view.bars[Stage.UTILITY]
    assert str(bar).startswith("utility:") and bar.unit == "step" and bar.n == 3
    view.close()
