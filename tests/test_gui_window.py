"""The main window: fits a laptop screen with any text, names outputs after the model, quits without freezing."""

import time
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QRect, QSettings, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QPushButton, QWidget  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.io.medsynth_writer import write_image_set  # noqa: E402
from tests.conftest import open_main_window  # noqa: E402

SCREENS = Path(__file__).resolve().parent / "artifacts" / "window"
LONG_PATH = "/data/" + "/".join(f"a-very-long-folder-name-{i:02d}" for i in range(15)) + "/case_0000.nii.gz"


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    return open_main_window(qtbot, tmp_path, monkeypatch)


def fill_with_long_texts(win) -> None:
    """Every line that shows a path, a status or a caption, as long as a user's folders make it."""
    sentence = f"Could not read {LONG_PATH}: the file is not valid (a long message with words and a path)"
    for panel in (win.train, win.generate, win.evaluate):
        panel.status.setText(sentence)
        panel.error.setText(sentence)
        panel.error.show()
    win.train.preview_caption.setText(f"previews at step 40 of {LONG_PATH}")
    win.generate.model_info.setText(sentence)
    for edit in (win.train.data_edit, win.train.run_edit, win.generate.ckpt_edit, win.generate.out_edit):
        edit.setText(LONG_PATH)
    win.gallery.header.setText(f"{LONG_PATH} — 64 samples (64 complete)")
    win.gallery.details.setText(sentence)
    win.reader_study.message.setText(sentence)
    win.reader_study.previous_note.setText(f"NOT SAVED: {sentence}")
    win.statusBar().showMessage(sentence)


def inside(win, widget: QWidget) -> bool:
    top_left = widget.mapTo(win, widget.rect().topLeft())
    return win.rect().contains(QRect(top_left, widget.size()))


@pytest.mark.parametrize("size", [(1366, 768), (1600, 1000)])
def test_the_window_fits_the_screen_with_long_texts_and_a_comparison(window, tmp_path, qtbot, size):
    width, height = size
    window.resize(width, height)
    window.show()
    phantoms = make_phantoms(8, 64)
    phantoms.class_names = [f"{name} — as named by a long ontology, with its code, synonyms " + "and more " * 20
                            for name in phantoms.class_names]
    data = write_image_set(tmp_path / (LONG_PATH.replace("/", "_")[:200] + ".h5"), phantoms)
    assert window.open_path(data)
    window.open_sample(str(data), 2)
    window._to_compare("left")
    window.open_sample(str(data), 5)
    window._to_compare("right")
    window.generate.class_combo.addItems(phantoms.class_names)  # as a model with these classes fills it
    fill_with_long_texts(window)
    for tab in range(window.tabs.count()):
        window.tabs.setCurrentIndex(tab)
        for dock in (window.train_dock, window.generate_dock):
            dock.raise_()
            QApplication.processEvents()
            hint = window.minimumSizeHint()
            assert hint.width() <= width and hint.height() <= height, (window.tabs.tabText(tab), hint)
            assert window.width() <= width and window.height() <= height, window.tabs.tabText(tab)
            # The raised dock and every button on screen (in it or in the current tab) lie inside the window.
            shown = [w for w in window.findChildren(QPushButton) if w.isVisible()
                     and (dock.isAncestorOf(w) or window.centralWidget().isAncestorOf(w))]
            for w in [dock, *shown]:
                assert inside(window, w), (window.tabs.tabText(tab), w.objectName(), w.geometry(),
                                           w.text() if isinstance(w, QPushButton) else "")
    SCREENS.mkdir(parents=True, exist_ok=True)
    for tab, name in enumerate(("viewer", "gallery", "compare", "evaluate", "reader")):
        window.tabs.setCurrentIndex(tab)
        window.train_dock.raise_()
        QApplication.processEvents()
        window.grab().save(str(SCREENS / f"window_{width}x{height}_{name}.png"))



def test_a_new_image_clears_the_last_readout(window, tmp_path):
    window.show()
    first = write_image_set(tmp_path / "first.h5", make_phantoms(4, 32))
    second = write_image_set(tmp_path / "second.h5", make_phantoms(4, 32, seed=3))
    assert window.open_path(first)
    window.viewer.readout.emit("x 12  y 3  value 412.0")  # the mouse over the first image
    assert "412.0" in window.statusBar().currentMessage()
    assert window.open_path(second)
    assert "412.0" not in window.statusBar().currentMessage()


def test_the_output_follows_the_model_the_user_opens(window, tiny_run, tmp_path):
    from medsynth_gui.main_window import user_dir

    window.open_demo()
    assert Path(window.generate.out_edit.text()).name.startswith("demo-synthetic")
    window.generate.set_checkpoint(str(tiny_run))
    assert window.generate.out_edit.text() == str(user_dir() / f"{tiny_run.name}-synthetic.h5")
    (user_dir() / f"{tiny_run.name}-synthetic.h5").touch()  # made by an earlier generation
    window.generate.set_checkpoint(str(tiny_run / "checkpoints" / "step_0000020"))
    assert window.generate.out_edit.text() == str(user_dir() / f"{tiny_run.name}-synthetic-2.h5")
    own = str(tmp_path / "mine.h5")
    window.generate.out_edit.setText(own)  # the user's own name stays
    window.generate.set_checkpoint(str(tiny_run))
    assert window.generate.out_edit.text() == own


def test_quitting_mid_training_says_so_and_keeps_the_window_alive(window, tmp_path, qtbot):
    window.show()
    data = write_image_set(tmp_path / "d.h5", make_phantoms(16, 16))
    panel = window.train
    panel.data_edit.setText(str(data))
    panel.run_edit.setText(str(tmp_path / "run"))
    panel.steps_spin.setValue(100_000)
    panel.batch_spin.setValue(4)
    panel.size_spin.setValue(16)
    panel.start()
    qtbot.waitUntil(lambda: panel.progress.value() >= 2, timeout=120_000)
    window.confirm = lambda title, text: True
    t0 = time.monotonic()
    window.close()
    assert time.monotonic() - t0 < 1.0  # no wait on the worker thread inside the close
    assert window.stopping.isVisible() and "Saving a checkpoint" in window.stopping.labelText()
    assert window.stopping.maximum() == 0  # a busy bar
    ticks: list[int] = []
    timer = QTimer(interval=10)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=60_000)
    timer.stop()
    assert ticks and not panel.runner.running and not window.stopping.isVisible()
    assert list((tmp_path / "run" / "checkpoints").glob("step_*"))
    settings = QSettings()
    assert settings.value("train/run") == str(tmp_path / "run")  # remembered for the next start


def test_the_first_window_is_no_larger_than_the_screen(window):
    room = window.screen().availableGeometry()
    hint = window.minimumSizeHint()
    assert window.width() <= max(room.width(), hint.width()) and window.height() <= max(room.height(), hint.height())
