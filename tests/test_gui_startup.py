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

    # An installation check may run where nobody can press OK: it says so on stderr and exits, no dialog.
    assert app.main(["--check"]) == 1 and len(shown) == 1
    assert "could not start" in capfd.readouterr().err


def test_the_installation_check_opens_the_window_and_says_how_long_it_took(tmp_path):
    """`medsynth gui --check`: what bench/startup.py times, and a quick check for whoever installs the app."""
    import re
    import subprocess
    import sys

    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "medsynth", "gui", "--check"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    shown = re.search(r"medsynth: window shown \(([\d.]+) s after launch\)", r.stdout)
    assert shown and 0.1 < float(shown[1]) < 120, r.stdout
    assert "Traceback" not in r.stderr
