"""The Train, Generate and Evaluate panels share one job-panel base: its buttons follow real, tiny jobs
through finishing, failing and stopping, and a failure is one line on the panel's error line."""

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.evaluation.evaluate import EvalSettings, EvaluateJob  # noqa: E402
from engine.evaluation.stages import Stage  # noqa: E402
from engine.io.medsynth_writer import write_image_set  # noqa: E402
from medsynth_gui.panels.evaluate_panel import EvaluatePanel  # noqa: E402
from medsynth_gui.panels.generate_panel import GeneratePanel  # noqa: E402
from medsynth_gui.panels.job_panel import JobPanel  # noqa: E402
from medsynth_gui.panels.train_panel import TrainPanel  # noqa: E402
from tests.conftest import make_evaluation_files  # noqa: E402

PANELS = (TrainPanel, GeneratePanel, EvaluatePanel)
# The evaluation stages that train networks or need downloaded weights: a job that runs the rest is tiny.
SLOW_STAGES = [Stage.FID, Stage.FEATURES, Stage.RADIOMICS, Stage.MEMORIZATION, Stage.LABELS, Stage.UTILITY]


@pytest.fixture(autouse=True)
def own_places(tmp_path, monkeypatch):
    """Settings, the log file and FID weights in the test's own folder, never the developer's."""
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def buttons(panel: JobPanel) -> tuple[bool, bool]:
    return panel.run_btn.isEnabled(), panel.stop_btn.isEnabled()


def train_panel(qtbot, tmp_path: Path, data: Path | None = None, steps: int = 2) -> TrainPanel:
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.data_edit.setText(str(data or write_image_set(tmp_path / "d.h5", make_phantoms(8, 16))))
    panel.run_edit.setText(str(tmp_path / "run"))
    panel.steps_spin.setValue(steps)
    panel.batch_spin.setValue(4)
    panel.size_spin.setValue(16)
    return panel


def generate_panel(qtbot, tmp_path: Path, checkpoint: Path) -> GeneratePanel:
    panel = GeneratePanel()
    qtbot.addWidget(panel)
    panel.set_checkpoint(str(checkpoint))
    panel.n_spin.setValue(2)
    panel.steps_spin.setValue(2)
    panel.out_edit.setText(str(tmp_path / "g.h5"))
    return panel


def evaluate_panel(qtbot, tmp_path: Path) -> tuple[EvaluatePanel, EvaluateJob]:
    """The panel and a job over planted phantom files, without the stages that train or download."""
    _, _, test_path, synth_path = make_evaluation_files(tmp_path)
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.set_file(str(synth_path))
    panel.real_edit.setText(str(test_path))
    return panel, EvaluateJob(synth_path, real=test_path, settings=EvalSettings(skip=SLOW_STAGES))


def run_to_the_end(qtbot, panel: JobPanel, start) -> list[tuple[bool, bool]]:
    """Start a job and wait for it to end; the (Run, Stop) enabling just after the start and at the end."""
    with qtbot.waitSignal(panel.runner.running_changed, timeout=180_000,
                          check_params_cb=lambda running: not running):
        start()
        during = buttons(panel)
    return [during, buttons(panel)]


@pytest.mark.parametrize("cls", PANELS)
def test_each_job_panel_is_a_job_panel_that_starts_idle(qtbot, cls):
    panel = cls()
    qtbot.addWidget(panel)
    assert isinstance(panel, JobPanel)
    assert buttons(panel) == (True, False) and panel.error.isHidden() and not panel.runner.running


def test_train_panel_buttons_follow_a_finished_and_a_stopped_run(qtbot, tmp_path):
    panel = train_panel(qtbot, tmp_path)
    assert not panel.save_btn.isEnabled() and panel.resume_btn.isEnabled() and panel.data_edit.isEnabled()
    done: list = []
    panel.runner.done.connect(done.append)
    assert run_to_the_end(qtbot, panel, panel.start) == [(False, True), (True, False)]
    assert not done[-1].cancelled and "Finished at step 2" in panel.status.text()
    # The run's other controls follow too: the settings and Resume only while idle, Save now only while running.
    assert panel.resume_btn.isEnabled() and panel.data_edit.isEnabled() and not panel.save_btn.isEnabled()

    panel.run_edit.setText(str(tmp_path / "run2"))
    panel.steps_spin.setValue(100_000)

    def start_and_stop() -> None:
        panel.start()
        assert panel.save_btn.isEnabled() and not panel.resume_btn.isEnabled() and not panel.data_edit.isEnabled()
        panel.stop_btn.click()

    assert run_to_the_end(qtbot, panel, start_and_stop) == [(False, True), (True, False)]
    assert done[-1].cancelled and panel.status.text().startswith("Stopped at step")
    assert panel.error.isHidden()


def test_generate_panel_buttons_follow_a_finished_and_a_stopped_job(qtbot, tmp_path, tiny_run):
    panel = generate_panel(qtbot, tmp_path, tiny_run)
    done: list = []
    panel.runner.done.connect(done.append)
    assert run_to_the_end(qtbot, panel, panel.start) == [(False, True), (True, False)]
    assert not done[-1].cancelled and panel.status.text().startswith("Done: 2 samples in g.h5")

    panel.out_edit.setText(str(tmp_path / "g2.h5"))
    panel.n_spin.setValue(10_000)

    def start_and_stop() -> None:
        panel.start()
        panel.stop_btn.click()

    assert run_to_the_end(qtbot, panel, start_and_stop) == [(False, True), (True, False)]
    assert done[-1].cancelled and panel.status.text().startswith("Stopped:")
    assert panel.error.isHidden()


def test_evaluate_panel_buttons_follow_a_finished_and_a_stopped_job(qtbot, tmp_path):
    panel, job = evaluate_panel(qtbot, tmp_path)
    done: list = []
    panel.runner.done.connect(done.append)
    assert run_to_the_end(qtbot, panel, lambda: panel.launch(job, "Starting…")) == [(False, True), (True, False)]
    assert not done[-1].cancelled and panel.status.text().startswith("Done in")

    def start_and_stop() -> None:
        panel.start()  # the panel's own job this time, with every stage: Stop ends it before the slow ones
        panel.stop_btn.click()

    assert run_to_the_end(qtbot, panel, start_and_stop) == [(False, True), (True, False)]
    assert done[-1].cancelled and panel.status.text().startswith("Stopped: partial figures kept")
    assert panel.error.isHidden()


def failing(cls, qtbot, tmp_path: Path, tiny_run: Path) -> tuple[JobPanel, str]:
    """A panel whose own job fails once it runs, and the file that the failure's line must name."""
    if cls is TrainPanel:
        bad = tmp_path / "empty"
        bad.mkdir()
        return train_panel(qtbot, tmp_path, data=bad), "empty"
    if cls is GeneratePanel:
        return generate_panel(qtbot, tmp_path, tmp_path / "no such run"), "no such run"
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    synth = tmp_path / "broken.h5"
    synth.write_text("not an HDF5 file")
    panel.synth_edit.setText(str(synth))
    panel.real_edit.setText(str(write_image_set(tmp_path / "real.h5", make_phantoms(8, 16))))
    return panel, "broken.h5"


@pytest.mark.parametrize("cls", PANELS)
def test_a_failing_job_is_one_line_on_the_error_line_and_gives_the_buttons_back(cls, qtbot, tmp_path, tiny_run):
    panel, named = failing(cls, qtbot, tmp_path, tiny_run)
    failures: list[str] = []
    panel.runner.failed.connect(failures.append)
    assert run_to_the_end(qtbot, panel, panel.start) == [(False, True), (True, False)]
    assert len(failures) == 1
    line = panel.error.text()
    assert line == failures[0] and named in line
    assert "\n" not in line and "Traceback" not in line
    assert panel.error.isVisibleTo(panel) and panel.status.text() == "Failed"
    # The next start clears the line before the job is launched, and the job's failure shows it again.
    hidden_at_launch: list[bool] = []
    panel.runner.running_changed.connect(lambda running: running and hidden_at_launch.append(panel.error.isHidden()))
    assert run_to_the_end(qtbot, panel, panel.start)[-1] == (True, False)
    assert hidden_at_launch == [True] and panel.error.text() == line and panel.error.isVisibleTo(panel)
