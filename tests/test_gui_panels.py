"""Train and generate panels driving real engine jobs through the QThread worker."""

import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PySide6.QtWidgets import QMessageBox

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from engine.config import load_preset, preset_description, preset_names  # noqa: E402
from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.io.medsynth_writer import write_image_set  # noqa: E402
from engine.jobs import Preview  # noqa: E402
from medsynth_gui.panels.generate_panel import GeneratePanel  # noqa: E402
from medsynth_gui.panels.train_panel import TrainPanel, format_eta  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"


def tiny(panel: TrainPanel, data: Path, run: Path, steps: int) -> None:
    panel.data_edit.setText(str(data))
    panel.run_edit.setText(str(run))
    panel.steps_spin.setValue(steps)
    panel.batch_spin.setValue(4)
    panel.size_spin.setValue(16)


@pytest.fixture(autouse=True)
def own_settings(tmp_path):
    """Panels remember their fields: here in the test's own folder, never the developer's settings."""
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))


@pytest.fixture
def data16(tmp_path):
    return write_image_set(tmp_path / "d.h5", make_phantoms(16, 16))


def test_training_runs_from_the_panel_and_plots_loss(qtbot, data16, tmp_path):
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.resize(520, 900)
    panel.show()
    tiny(panel, data16, tmp_path / "run", steps=30)
    panel.start()
    assert panel.runner.running and not panel.run_btn.isEnabled()
    qtbot.waitUntil(lambda: panel.progress.value() >= 10, timeout=120_000)
    ARTIFACTS.mkdir(exist_ok=True)
    panel.grab().save(str(ARTIFACTS / "train_panel_running.png"))
    with qtbot.waitSignal(panel.runner.running_changed, timeout=120_000):
        pass
    assert not panel.runner.running
    assert len(panel.steps) >= 3 and panel.steps[-1] == 30, panel.steps
    xs, ys = panel.plot.smooth_curve.getData()
    assert len(xs) == len(panel.steps)
    assert "Finished at step 30" in panel.status.text()
    assert (tmp_path / "run" / "checkpoints" / "step_0000030").exists()


def test_a_short_run_draws_a_curve_speaks_plainly_and_ends_on_a_preview(qtbot, data16, tmp_path):
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.resize(520, 900)
    panel.show()
    panel.preset.setCurrentText("pairs-64")  # logs every 50 steps: a 40-step run drew nothing
    tiny(panel, data16, tmp_path / "run", steps=40)
    panel._show_previews(Preview(700, np.random.default_rng(0).random((8, 1, 16, 16))))  # an earlier run's
    seen: list[tuple[str, str]] = []
    panel.runner.event.connect(lambda ev: seen.append((panel.status.text(), panel.preview_caption.text())))
    panel.start()
    assert panel.preview_caption.text() == "—" and all(lab.pixmap().isNull() for lab in panel.preview_labels)
    assert not panel.plot.getAxis("left").style["showValues"]  # no numbers on an empty axis
    with qtbot.waitSignal(panel.runner.done, timeout=240_000):
        pass
    assert len(panel.steps) >= 2 and panel.steps[-1] == 40 and panel.progress.value() == 40
    statuses = [st for st, _ in seen] + [panel.status.text()]
    assert not any("nan" in st.lower() for st in statuses), statuses
    assert not any(re.search(r"ETA \d+:\d\d", st) for st in statuses)
    assert any(re.search(r"about \d+ min left|less than a minute left|\d+ h \d\d min left", st) for st in statuses)
    assert any(re.match(r"Rendering a preview of step 40… \d+/25", cap) for _, cap in seen)
    assert any(re.match(r"Rendering a preview of step 40… \d+/25", st) for st, _ in seen)
    assert panel.preview_caption.text().startswith("previews at step 40")
    assert not panel.preview_labels[0].pixmap().isNull()
    axis = panel.plot.getAxis("left")
    assert axis.autoSIPrefixScale == 1.0 and "x0" not in axis.labelString() and axis.style["showValues"]
    ARTIFACTS.mkdir(exist_ok=True)
    panel.grab().save(str(ARTIFACTS / "train_panel_short_run.png"))


def test_train_fields_come_back_after_a_restart(qtbot, tmp_path):
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.preset.setCurrentText("pairs-64")
    tiny(panel, tmp_path / "my data", tmp_path / "my run", steps=123)
    panel.lr_spin.setValue(0.0005)
    panel.loss_combo.set_value("huber")
    panel.mask_combo.set_value("condition")
    panel.classes_check.setChecked(True)
    panel.device_combo.set_value("cpu")
    panel.save_settings()
    again = TrainPanel()  # the next start of the app
    qtbot.addWidget(again)
    assert again.preset.currentText() == "pairs-64"
    assert again.data_edit.text() == str(tmp_path / "my data") and again.run_edit.text() == str(tmp_path / "my run")
    assert (again.steps_spin.value(), again.batch_spin.value(), again.size_spin.value()) == (123, 4, 16)
    assert again.lr_spin.value() == pytest.approx(0.0005) and again.loss_combo.value() == "huber"
    assert again.mask_combo.value() == "condition" and again.classes_check.isChecked()
    assert again.device_combo.value() == "cpu"


def test_each_preset_says_what_it_is_for(qtbot):
    panel = TrainPanel()
    qtbot.addWidget(panel)
    for i, name in enumerate(preset_names()):
        note = preset_description(name)
        assert len(note) > 20, name
        assert load_preset(name).preset == name  # the description is for people, not a setting
        panel.preset.setCurrentText(name)
        assert panel.preset_note.text() == note and panel.preset.toolTip() == note
        assert panel.preset.itemData(i, Qt.ItemDataRole.ToolTipRole) == note


def test_time_left_reads_as_a_duration():
    assert format_eta(float("nan")) == "estimating time left…"
    assert format_eta(20) == "less than a minute left"
    assert format_eta(3 * 60 + 10) == "about 3 min left"
    assert format_eta(3600 + 5 * 60) == "1 h 05 min left"
    assert not math.isnan(len(format_eta(-1)))


def test_stop_ends_training_within_a_step_and_resume_continues(qtbot, data16, tmp_path):
    panel = TrainPanel()
    qtbot.addWidget(panel)
    tiny(panel, data16, tmp_path / "run", steps=100_000)
    panel.start()
    qtbot.waitUntil(lambda: panel.progress.value() >= 3, timeout=120_000)
    with qtbot.waitSignal(panel.runner.done, timeout=30_000) as blocker:
        panel.stop()
    done = blocker.args[0]
    assert done.cancelled and done.result["step"] >= 3
    stopped_at = done.result["step"]
    assert "Stopped at step" in panel.status.text()
    panel.steps_spin.setValue(stopped_at + 5)
    with qtbot.waitSignal(panel.runner.done, timeout=120_000) as blocker:
        panel.resume()
    assert blocker.args[0].result["step"] == stopped_at + 5


def test_resume_redraws_an_old_run_folders_curve_and_refuses_a_folder_that_is_not_a_run(qtbot, tmp_path):
    import json
    import shutil

    from tests.data.make_old_run import OLD_RUN, OLD_RUN_IMAGES, OLD_RUN_SEED, OLD_RUN_STEPS

    panel = TrainPanel()
    qtbot.addWidget(panel)
    (tmp_path / "empty").mkdir()
    panel.run_edit.setText(str(tmp_path / "empty"))
    panel.resume()
    assert "is not a training run" in panel.error.text() and not panel.runner.running
    # A run folder written by MedSynth 0.1.0, its data where its config.json says.
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    data = write_image_set(tmp_path / "d.h5", make_phantoms(OLD_RUN_IMAGES, 16, seed=OLD_RUN_SEED))
    config = json.loads((run / "config.json").read_text())
    config["data"]["path"] = str(data)
    (run / "config.json").write_text(json.dumps(config))
    panel.run_edit.setText(str(run))
    panel.steps_spin.setValue(OLD_RUN_STEPS + 2)
    with qtbot.waitSignal(panel.runner.done, timeout=120_000) as blocker:
        panel.resume()
        assert panel.steps[:OLD_RUN_STEPS] == list(range(1, OLD_RUN_STEPS + 1))  # the old curve, redrawn
    assert blocker.args[0].result["step"] == OLD_RUN_STEPS + 2
    assert panel.error.isHidden()


def test_a_bad_data_folder_shows_its_message_and_the_panel_stays_usable(qtbot, tmp_path):
    panel = TrainPanel()
    qtbot.addWidget(panel)
    bad = tmp_path / "empty"
    bad.mkdir()
    tiny(panel, bad, tmp_path / "run", steps=5)
    with qtbot.waitSignal(panel.runner.failed, timeout=60_000):
        panel.start()
    assert "empty" in panel.error.text() and not panel.error.isHidden()
    assert panel.run_btn.isEnabled() and not panel.runner.running


def test_generate_panel_fills_a_file(qtbot, tiny_run, tmp_path):
    panel = GeneratePanel()
    qtbot.addWidget(panel)
    panel.set_checkpoint(str(tiny_run))
    assert panel.class_combo.count() == 5 and "4 classes" in panel.model_info.text()
    panel.n_spin.setValue(20)
    panel.steps_spin.setValue(3)
    panel.class_combo.setCurrentIndex(2)  # class 1
    out = tmp_path / "g.h5"
    panel.out_edit.setText(str(out))
    started = []
    panel.file_started.connect(started.append)
    with qtbot.waitSignal(panel.file_done, timeout=120_000):
        panel.start()
    assert started == [str(out) + ".partial"]  # filled beside its name, renamed onto it when done
    with h5py.File(out) as f:
        assert f.attrs["n_complete"] == 20 and set(f["labels"][:]) == {1}
    # Generate again: the next free name, not the same file written over.
    assert panel.out_edit.text() == str(tmp_path / "g-2.h5")
    panel.out_edit.setText(str(out))
    asked = []

    def answer(button: str):
        def exec_(box):
            asked.append(box.text())
            box.clickedButton = lambda: next(b for b in box.buttons() if b.text() == button)
            return 0
        return exec_

    before = out.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(QMessageBox, "exec", answer("Cancel"))
        panel.start()  # the file exists: asked first; Cancel writes nothing
    assert "g.h5 already exists" in asked[0] and "already exists" in panel.error.text()
    assert out.stat().st_mtime_ns == before and not panel.runner.running
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(QMessageBox, "exec", answer("Replace"))
        panel.n_spin.setValue(4)
        with qtbot.waitSignal(panel.file_done, timeout=120_000):
            panel.start()  # Replace: written over with the new samples
    with h5py.File(out) as f:
        assert f.attrs["n_complete"] == 4
    # A killed run's samples wait beside the name: the app asks before they go, as for the file itself.
    out.unlink()
    partial = tmp_path / "g.h5.partial"
    with h5py.File(partial, "w") as f:
        f.attrs["n_complete"] = 3
    panel.out_edit.setText(str(out))  # after a run the panel offers the next free name
    asked.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(QMessageBox, "exec", answer("Cancel"))
        panel.start()
    assert "g.h5.partial" in asked[0] and "interrupted" in asked[0] and not panel.runner.running
    assert partial.exists() and not out.exists()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(QMessageBox, "exec", answer("Replace"))
        with qtbot.waitSignal(panel.file_done, timeout=120_000):
            panel.start()
    with h5py.File(out) as f:
        assert f.attrs["n_complete"] == 4
    assert not partial.exists()
