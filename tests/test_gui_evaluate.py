"""The Evaluate page runs the evaluation in the worker and shows answers, figures, plots and pairs."""

import logging
import re
from pathlib import Path

import h5py
import pyqtgraph as pg
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractButton, QLabel, QLineEdit, QTableWidget

from engine.jobs import Progress, Requests
from tests.conftest import make_evaluation_files

ARTIFACTS = Path(__file__).parent / "artifacts"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def figures_by_key(panel) -> dict[str, tuple[str, float, str, str]]:
    """/metrics key -> (name shown, value, real-vs-real shown, reading shown) from the figures table; the rows of
    figures that were not measured (no number, a reason) are left out."""
    t = panel.table
    return {t.item(r, 0).data(Qt.ItemDataRole.UserRole): (t.item(r, 0).text(), float(t.item(r, 1).text()),
                                                          t.item(r, 2).text(), t.item(r, 3).text())
            for r in range(t.rowCount()) if t.item(r, 1).text() != "not measured"}


def visible_texts(widget) -> list[str]:
    """Every string a user can read on the page: labels, buttons, fields, tooltips and table cells."""
    out = []
    for w in [widget, *widget.findChildren(QLabel), *widget.findChildren(QAbstractButton),
              *widget.findChildren(QLineEdit), *widget.findChildren(QTableWidget)]:
        out.append(w.toolTip())
        if isinstance(w, QLabel | QAbstractButton):
            out.append(w.text())
        if isinstance(w, QLineEdit):
            out.append(w.placeholderText())
        if isinstance(w, QTableWidget):
            out += [w.item(r, c).text() for r in range(w.rowCount()) for c in range(w.columnCount()) if w.item(r, c)]
            out += [w.item(r, c).toolTip() for r in range(w.rowCount()) for c in range(w.columnCount())
                    if w.item(r, c)]
    return [t for t in out if t]


def watch_status(panel) -> list[str]:
    """Every status and error line the panel shows while a job runs (connected after the panel's own slots)."""
    seen: list[str] = []
    panel.runner.event.connect(lambda _ev: seen.append(panel.status.text()))
    panel.runner.failed.connect(lambda _m: seen.extend([panel.status.text(), panel.error.text()]))
    panel.runner.done.connect(lambda _d: seen.append(panel.status.text()))
    return seen


@pytest.fixture()
def no_fid_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_evaluate_page_shows_the_answers_and_plots(tmp_path, qtbot, no_fid_weights):
    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    _, _, test_path, synth_path = make_evaluation_files(tmp_path)
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.resize(1400, 900)
    panel.show()
    panel.set_file(str(synth_path))
    panel.real_edit.setText(str(test_path))
    panel.threshold.setValue(0.99)
    panel.steps.setValue(120)  # at 30 the real-trained segmenter learns nothing: its figures are not measured
    with qtbot.waitSignal(panel.evaluated, timeout=120_000) as sig:
        panel.run_btn.click()
        assert panel.stop_btn.isEnabled() and not panel.run_btn.isEnabled()
    assert sig.args == [str(synth_path)]
    figures = figures_by_key(panel)
    assert {"frd", "nn_share_above", "dice_ratio_synth_real", "ms_ssim_synth"} <= set(figures)
    # Named figures with their real-vs-real reference beside them and a plain reading, not raw keys.
    with h5py.File(synth_path, "r") as f:
        stored = dict(f["metrics"].attrs)
    name, value, ref, reading = figures["frd"]
    assert name == "Fréchet radiomics distance" and value == pytest.approx(stored["frd"], rel=1e-3)
    assert float(ref) == pytest.approx(stored["frd_real_vs_real"], rel=1e-3)
    assert reading == "close to your data"  # a fresh phantom draw is as far from real as real is
    assert "frd_real_vs_real" not in figures and figures["nn_corr_max"][3].startswith("closer to a training image")
    assert all(not re.fullmatch(r"[a-z0-9_]+", n) for n, *_ in figures.values())
    answers = panel.answer_texts
    assert answers[2].startswith("3 of 48 samples") and "FID not computed" in answers[0]
    assert any(isinstance(i, pg.BarGraphItem) for i in panel.hist_plot.getPlotItem().items)
    assert any(isinstance(i, pg.BarGraphItem) for i in panel.dice_plot.getPlotItem().items)
    assert panel.pairs_layout.count() == 6
    assert "not found" in panel.fid_note.text() and panel.report_btn.isEnabled()
    # The report's path is shown and can be copied: a machine without a browser cannot open it.
    report = panel.result["report"]
    assert report in panel.report_path.text() and Path(report).exists()
    panel.copy_btn.click()
    from PySide6.QtGui import QGuiApplication

    assert QGuiApplication.clipboard().text() == report
    panel.report_btn.click()  # offscreen, as on a machine without a browser, nothing can open it: say so
    assert "No browser" in panel.status.text()
    qtbot.wait(100)  # widgets added to a visible page are shown on the next event-loop pass
    ARTIFACTS.mkdir(exist_ok=True)
    panel.grab().save(str(ARTIFACTS / "evaluate_panel.png"))


def test_evaluate_page_reports_bad_input_on_one_line(tmp_path, qtbot):
    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.set_file(str(tmp_path / "nothing.h5"))
    panel.run_btn.click()
    assert panel.error.isVisibleTo(panel) and "nothing.h5" in panel.error.text()
    assert not panel.runner.running


def test_copy_threshold_defaults_to_auto(qtbot):
    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    assert panel.threshold.text() == "auto" and panel.settings().nn_threshold is None
    panel.threshold.setValue(0.97)
    assert panel.settings().nn_threshold == pytest.approx(0.97)


def test_evaluate_a_file_open_in_the_gallery(tmp_path, qtbot, no_fid_weights):
    """Right after Generate the file is open in the Gallery; evaluating it must still write its figures."""
    from medsynth_gui.gallery import Gallery
    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    _, train_path, test_path, synth_path = make_evaluation_files(tmp_path)
    gallery = Gallery()
    qtbot.addWidget(gallery)
    gallery.resize(700, 500)
    gallery.show()
    assert gallery.open_file(synth_path)
    qtbot.waitUntil(lambda: gallery.pending_thumbnails() == 0 and gallery.screen_loaded(), timeout=10_000)
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.set_file(str(synth_path))
    panel.real_edit.setText(str(test_path))
    panel.utility_check.setChecked(False)
    panel.steps.setValue(10)
    failures: list[str] = []
    panel.runner.failed.connect(failures.append)
    with qtbot.waitSignal(panel.runner.running_changed, timeout=120_000,
                          check_params_cb=lambda running: not running):
        panel.run_btn.click()
        gallery.view.verticalScrollBar().setValue(gallery.view.verticalScrollBar().maximum())  # reads go on
    assert failures == [] and panel.error.isHidden()
    with h5py.File(synth_path, "r") as f:
        assert "frd" in f["metrics"].attrs
    gallery.refresh()
    assert gallery.path() == str(synth_path) and gallery.count() == 48
    assert gallery.thumbnail(0).width() == gallery.model.size


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    """A few samples from the bundled demo model, as Generate writes them after "Open the demo"."""
    from engine.evaluation.inputs import BUNDLED_DEMO
    from engine.inference.sample import SampleJob

    out = tmp_path_factory.mktemp("demo-out") / "demo-synthetic.h5"
    SampleJob(BUNDLED_DEMO / "run", 8, out, sampler_name="dpm", steps=3, seed=0, guidance=2.0).run(
        lambda ev: None, Requests())
    return out


def test_evaluate_tab_on_a_demo_output_prefills_the_phantoms_and_speaks_no_flags(demo_output, tmp_path, qtbot,
                                                                                 monkeypatch, no_fid_weights):
    from engine.evaluation.inputs import BUNDLED_DEMO
    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    monkeypatch.chdir(tmp_path)  # where the app runs, the demo run's recorded relative data path means nothing
    synth = tmp_path / demo_output.name
    synth.write_bytes(demo_output.read_bytes())
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.set_file(str(synth))
    assert panel.train_edit.text() == str(BUNDLED_DEMO / "phantoms.h5") and panel.real_edit.text() == ""
    panel.max_samples.setValue(10)
    panel.steps.setValue(10)
    panel.utility_check.setChecked(False)  # both sets have masks: only the box stands between them and utility
    seen = watch_status(panel)
    with qtbot.waitSignal(panel.evaluated, timeout=180_000):
        panel.run_btn.click()
    answers = dict(zip(("like", "diverse", "copies", "helps"), panel.answer_texts))
    assert answers["helps"] == "not measured: switched off"
    assert "frd" in figures_by_key(panel) and "nn_corr_max" in figures_by_key(panel)
    notes = panel.result["summary"]["notes"]
    assert any("bundled demo phantoms" in n for n in notes)
    texts = seen + visible_texts(panel) + notes + [panel.result["summary"]["fid"]["note"]]

    # The one way Evaluate can still lack data in the app: a file that records none. Widgets, not flags.
    bare = tmp_path / "bare.h5"
    with h5py.File(synth, "r") as src, h5py.File(bare, "w") as dst:
        for key in ("images", "masks", "labels", "seeds"):
            src.copy(key, dst)
        dst.attrs.update({k: v for k, v in src.attrs.items() if k != "checkpoint_sha256"})
    panel.set_file(str(bare))
    assert panel.train_edit.text() == ""
    panel.run_btn.click()
    assert "Real (test) or Training data" in panel.error.text()
    texts += visible_texts(panel)
    flags = sorted({m for t in texts for m in FLAG.findall(t)})
    assert flags == [], flags


def test_not_measured_reasons():
    from engine.evaluation.figures import answers

    def helps(summary: dict) -> str:
        return dict(answers({}, summary))["Does it help segmentation?"]

    assert helps({"settings": {"utility": False}, "utility": {"not_measured": "switched off"}}) == \
        "not measured: switched off"
    assert helps({"settings": {"utility": True, "skip": ["utility"]}}) == "not measured: switched off"
    assert helps({"settings": {"utility": True}, "complete": False}) == \
        "not measured: the evaluation was stopped before this step"
    assert "held-out real data have none" in helps(
        {"settings": {"utility": True}, "utility": {"not_measured": "needs masks in every set; the held-out real "
                                                                    "data have none"}})


def test_bad_input_in_a_worker_is_one_line_without_a_traceback(tmp_path, qtbot, capfd, caplog):
    """A file held open read-only fails the evaluation at once: one line in the panel, nothing on stderr."""
    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    _, train_path, test_path, synth_path = make_evaluation_files(tmp_path)
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.set_file(str(synth_path))
    panel.real_edit.setText(str(test_path))
    progress: list = []
    panel.runner.event.connect(lambda ev: progress.append(ev) if isinstance(ev, Progress) else None)
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG), h5py.File(synth_path, "r", locking=False):
        with qtbot.waitSignal(panel.runner.failed, timeout=30_000) as sig:
            panel.run_btn.click()
    assert progress == []  # failed before the first stage
    line = sig.args[0]
    assert line.startswith(str(synth_path)) and "read-only" in line and "\n" not in line
    assert panel.error.text() == line and panel.error.isVisibleTo(panel)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "InputError" not in err
    assert not any(r.exc_info or "Traceback" in r.getMessage() for r in caplog.records)


class _Broken:
    """A job with a bug in it."""

    def run(self, emit, requests):
        emit(Progress("broken", 0, 1))
        return {"half": 1 / 0}


def test_a_bug_in_a_worker_goes_to_the_log_file(tmp_path, qtbot, capfd, monkeypatch):
    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    capfd.readouterr()
    with qtbot.waitSignal(panel.runner.failed, timeout=30_000) as sig:
        panel.runner.start(_Broken())
    line = sig.args[0]
    assert line.startswith("ZeroDivisionError: division by zero (details in ") and panel.error.text() == line
    log_file = Path(line.split("(details in ", 1)[1].rstrip(")"))
    assert log_file.is_relative_to(tmp_path / "data") and log_file.name == "medsynth.log"
    text = log_file.read_text()
    assert "Traceback" in text and "1 / 0" in text and "_Broken failed" in text
    assert "Traceback" not in capfd.readouterr().err


def test_an_exception_escaping_a_slot_is_shown_and_logged_not_printed(tmp_path, qtbot, capfd, monkeypatch):
    import sys

    from engine.errors import InputError
    from medsynth_gui import logfile

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    shown: list[str] = []
    logfile.install_excepthook(shown.append)
    capfd.readouterr()
    try:
        raise InputError(tmp_path / "scan.nii", "is 4D; the viewer shows 2D images and 3D volumes")
    except InputError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert shown == [f"{tmp_path / 'scan.nii'}: is 4D; the viewer shows 2D images and 3D volumes"]
    assert capfd.readouterr().err == ""
    try:
        {}["missing"]
    except KeyError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert shown[1].startswith("Unexpected error KeyError: 'missing' (details in ")
    log_file = Path(shown[1].split("(details in ", 1)[1].rstrip(")"))
    assert "Traceback" in log_file.read_text() and "Traceback" not in capfd.readouterr().err
