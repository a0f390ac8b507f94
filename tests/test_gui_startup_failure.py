"""A double-clicked app has no console: when the main window cannot be made, the reason and the log's place are
shown in a dialog, and the traceback is in the log file, not on a terminal nobody reads."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QMessageBox


def test_a_failure_while_starting_is_shown_in_a_dialog_and_logged(tmp_path, qtbot, capfd, monkeypatch):
    from medsynth_gui import app, main_window

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(main_window.MainWindow, "__init__", broken)
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(QMessageBox, "exec", lambda box: shown.append((box.windowTitle(), box.text())) or 0)
    capfd.readouterr()
    assert app.main([]) == 1
    (title, text), = shown
    assert title == "MedSynth could not start" and "No space left on device" in text
    log_file = Path(text.rsplit("\n", 1)[1])
    assert log_file.is_relative_to(tmp_path / "data") and log_file.is_file()
    logged = log_file.read_text()
    assert "Traceback" in logged and "the main window could not be created" in logged and "broken" in logged
    err = capfd.readouterr().err
    assert "Traceback" not in err and "could not start" in err and str(log_file) in err
