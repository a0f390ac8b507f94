"""Small widgets the panels share."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget

from medsynth_gui.labels import ElidedLabel, WrapLabel


def fresh_name(path: Path) -> Path:
    """path, or path-2, path-3, ... (before .h5): the first name nothing is written under yet."""
    if not path.exists():
        return path
    stem, suffix = (path.stem, path.suffix) if path.suffix == ".h5" else (path.name, "")
    i = 2
    while path.with_name(f"{stem}-{i}{suffix}").exists():
        i += 1
    return path.with_name(f"{stem}-{i}{suffix}")


def path_row(edit: QLineEdit, *buttons: QPushButton) -> QWidget:
    """A path field with its Browse buttons on one line, as a form row."""
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    for b in buttons:
        lay.addWidget(b)
    return row


def status_labels(one_line: bool = False) -> tuple[QLabel, QLabel]:
    """A panel's status line and its error line: red, bold and hidden until something fails.

    one_line: a status that changes many times a second stays one line (cut with …) instead of
    re-wrapping and moving everything below it.
    """
    status = ElidedLabel("Idle", mode=Qt.TextElideMode.ElideRight) if one_line else WrapLabel("Idle")
    error = WrapLabel()
    error.setStyleSheet("color: #ff6b6b; font-weight: bold;")
    error.hide()
    return status, error
