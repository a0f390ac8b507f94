"""Small widgets the panels share."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget


def path_row(edit: QLineEdit, *buttons: QPushButton) -> QWidget:
    """A path field with its Browse buttons on one line, as a form row."""
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    for b in buttons:
        lay.addWidget(b)
    return row


def status_labels() -> tuple[QLabel, QLabel]:
    """A panel's status line and its error line: red, bold and hidden until something fails."""
    status = QLabel("Idle")
    status.setWordWrap(True)
    error = QLabel()
    error.setWordWrap(True)
    error.setStyleSheet("color: #ff6b6b; font-weight: bold;")
    error.hide()
    return status, error
