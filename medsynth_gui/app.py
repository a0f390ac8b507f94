"""Starts the desktop app: `medsynth`, `medsynth gui [FILE]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PySide6.QtGui import QIcon


def dark_palette(app: object) -> None:
    """A dark theme: radiology reading rooms are dim, and images read better on dark grey."""
    from PySide6.QtGui import QColor, QPalette

    p = QPalette()
    base, text = QColor(37, 37, 40), QColor(225, 225, 225)
    for role, color in ((QPalette.ColorRole.Window, QColor(45, 45, 48)), (QPalette.ColorRole.WindowText, text),
                        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, QColor(50, 50, 54)),
                        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, QColor(58, 58, 62)),
                        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.Highlight, QColor(42, 130, 218)),
                        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)),
                        (QPalette.ColorRole.ToolTipBase, base), (QPalette.ColorRole.ToolTipText, text),
                        (QPalette.ColorRole.PlaceholderText, QColor(130, 130, 130))):
        p.setColor(role, color)
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor(120, 120, 120))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor(120, 120, 120))
    app.setPalette(p)  # type: ignore[attr-defined]


def app_icon() -> QIcon:
    """The window icon (needs the QApplication), read through the package so that an installed and a frozen
    app find it alike; the 48 px drawing is what panels and title bars pick, crisper than a scaled 256."""
    from importlib.resources import files

    from PySide6.QtGui import QIcon, QPixmap

    icon = QIcon()
    for name in ("medsynth.png", "medsynth-48.png"):
        pixmap = QPixmap()
        pixmap.loadFromData((files("medsynth_gui") / "icons" / name).read_bytes(), "PNG")
        icon.addPixmap(pixmap)
    return icon


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsynth gui", description="Open the MedSynth desktop app.")
    parser.add_argument("file", nargs="?", help="a file or folder to open")
    parser.add_argument("--check", action="store_true",
                        help="installation check: open the window, print the seconds it took, close it again")
    args = parser.parse_args(list(argv or []))

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("MedSynth")
    app.setApplicationName("MedSynth")
    app.setStyle("Fusion")
    dark_palette(app)
    app.setWindowIcon(app_icon())
    app.setDesktopFileName("medsynth")  # Wayland/X11 shells match the window to medsynth.desktop by this name

    from medsynth_gui import logfile

    logfile.install()  # needs the application's name: the log folder is named after it

    try:
        from medsynth_gui.main_window import MainWindow

        win = MainWindow()
    except Exception as exc:  # noqa: BLE001 — a double-clicked app has no console: say it in a window
        return _could_not_start(exc, dialog=not args.check)
    logfile.install_excepthook(win.show_error)
    win.show()
    if args.file:
        win.open_path(args.file)
    _close_on_signals(app, win)
    if args.check:
        _check_and_close(app, win)
    return app.exec()


def _could_not_start(exc: BaseException, dialog: bool = True) -> int:
    """The window could not be made: the reason and where the log with its traceback is, in a dialog (not for an
    installation check, which may run where nobody can press OK)."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QMessageBox

    from medsynth_gui import logfile

    path = logfile.record_failure(exc, "the main window could not be created")
    sys.stderr.write(f"medsynth: could not start: {type(exc).__name__}: {exc} (details in {path})\n")
    if dialog:
        box = QMessageBox(QMessageBox.Icon.Critical, "MedSynth could not start",
                          f"MedSynth could not start: {exc}\n\nThe details are in the log file:\n{path}")
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.exec()
    return 1


def _close_on_signals(app: object, win: object) -> None:
    """SIGTERM (a logout, systemd, a session manager) and Ctrl-C close the window as its Quit does, saving
    the settings and stopping a running job, instead of killing the process mid-write."""
    import signal

    from PySide6.QtCore import QTimer

    def close(signum: int, frame: object) -> None:
        QTimer.singleShot(0, win.close)  # type: ignore[attr-defined]

    signal.signal(signal.SIGTERM, close)
    signal.signal(signal.SIGINT, close)
    # Python runs signal handlers only between bytecodes; a timer lets the interpreter in while Qt waits.
    tick = QTimer(app)
    tick.timeout.connect(lambda: None)
    tick.start(200)


def _check_and_close(app: object, win: object) -> None:
    """The window is up once the event loop runs: say how long that took from launch, then quit."""
    from PySide6.QtCore import QTimer

    def report() -> None:
        took = _seconds_since_launch()
        print(f"medsynth: window shown ({took:.2f} s after launch)" if took is not None else "medsynth: window shown",
              flush=True)
        win.close()  # type: ignore[attr-defined]

    QTimer.singleShot(0, report)


def _seconds_since_launch() -> float | None:
    """From the process's start (Linux /proc, 10 ms ticks), so the launcher's unpacking and the imports count too."""
    import os

    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            return float(uptime.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None
