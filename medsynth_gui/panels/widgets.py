"""Small widgets the panels share."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QWidget


def path_row(edit: QLineEdit, *buttons: QPushButton) -> QWidget:
    """A path field with its Browse buttons on one line, as a form row."""
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    for b in buttons:
        lay.addWidget(b)
    return row
