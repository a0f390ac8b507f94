"""The Evaluate page runs the evaluation in the worker and shows answers, figures, plots and pairs."""

from pathlib import Path

import pyqtgraph as pg
import pytest

from tests.conftest import make_evaluation_files

ARTIFACTS = Path(__file__).parent / "artifacts"


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
    panel.steps.setValue(30)
    with qtbot.waitSignal(panel.evaluated, timeout=120_000) as sig:
        panel.go_btn.click()
        assert panel.stop_btn.isEnabled() and not panel.go_btn.isEnabled()
    assert sig.args == [str(synth_path)]
    figures = {panel.table.item(r, 0).text(): float(panel.table.item(r, 1).text())
               for r in range(panel.table.rowCount())}
    assert {"frd", "nn_share_above", "dice_ratio_synth_real", "ms_ssim_synth"} <= set(figures)
    answers = panel.answer_texts
    assert answers[2].startswith("3 of 48 samples") and "FID not computed" in answers[0]
    assert any(isinstance(i, pg.BarGraphItem) for i in panel.hist_plot.getPlotItem().items)
    assert any(isinstance(i, pg.BarGraphItem) for i in panel.dice_plot.getPlotItem().items)
    assert panel.pairs_layout.count() == 6
    assert "not found" in panel.fid_note.text() and panel.report_btn.isEnabled()
    qtbot.wait(100)  # widgets added to a visible page are shown on the next event-loop pass
    ARTIFACTS.mkdir(exist_ok=True)
    panel.grab().save(str(ARTIFACTS / "evaluate_panel.png"))


def test_evaluate_page_reports_bad_input_on_one_line(tmp_path, qtbot):
    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.set_file(str(tmp_path / "nothing.h5"))
    panel.go_btn.click()
    assert panel.error.isVisibleTo(panel) and "nothing.h5" in panel.error.text()
    assert not panel.runner.running


def test_copy_threshold_defaults_to_auto(qtbot):
    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    assert panel.threshold.text() == "auto" and panel.settings().nn_threshold is None
    panel.threshold.setValue(0.97)
    assert panel.settings().nn_threshold == pytest.approx(0.97)
