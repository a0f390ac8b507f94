"""A 1-5 rating as five toggle buttons, for the reader study's optional ratings."""

from __future__ import annotations

from PySide6.QtWidgets import QButtonGroup, QHBoxLayout, QToolButton, QWidget

# The Fusion look barely marks a checked tool button on a dark palette; a chosen rating must be unmistakable.
RATING_STYLE = ("QToolButton { border: 1px solid #666; border-radius: 3px; background: #3a3a3e; }"
                "QToolButton:hover { border-color: #2a82da; }"
                "QToolButton:checked { background: #2a82da; border-color: #5aa2ea; color: white; font-weight: bold; }")


class RatingRow(QWidget):
    """Five toggle buttons 1-5; none chosen means "not rated" (ratings are optional)."""

    def __init__(self, help_text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(3)
        # Not exclusive: an exclusive group cannot return to "none", and a reader may take a rating back.
        self.group = QButtonGroup(self)
        self.group.setExclusive(False)
        self.setStyleSheet(RATING_STYLE)
        for v in range(1, 6):
            b = QToolButton()
            b.setText(str(v))
            b.setCheckable(True)
            b.setFixedSize(30, 26)
            b.setToolTip(help_text)
            self.group.addButton(b, v)
            lay.addWidget(b)
        lay.addStretch(1)
        self.group.idToggled.connect(self._toggled)

    def _toggled(self, chosen: int, on: bool) -> None:
        if on:
            for b in self.group.buttons():
                if self.group.id(b) != chosen and b.isChecked():
                    b.setChecked(False)

    @property
    def value(self) -> int | None:
        checked = self.group.checkedId()
        return None if checked < 1 else checked

    @value.setter
    def value(self, v: int | None) -> None:
        for b in self.group.buttons():
            b.setChecked(self.group.id(b) == v)
