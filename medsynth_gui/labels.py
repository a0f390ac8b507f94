"""Labels for text of any length: they shorten or wrap, and never make the window wider.

A plain QLabel asks for the width of its text (a wrapping one, for its longest word),
and a user's folder path is one long word: one status line could push the main window
and its docks past the screen.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget

MIN_WIDTH = 60  # px: enough for a few characters and the ellipsis
HINT_WIDTH = 360  # px: what a label asks for at most when there is room
HINT_STYLE = "color: #9a9a9a;"  # secondary text: hints, key help, conventions


class ElidedLabel(QLabel):
    """One line that ends in … when it does not fit; the whole text is its tooltip.

    Paths are cut in the middle so that the file name stays in view.
    """

    def __init__(self, text: str = "", parent: QWidget | None = None,
                 mode: Qt.TextElideMode = Qt.TextElideMode.ElideMiddle) -> None:
        super().__init__(parent)
        self._full = ""
        self._mode = mode
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 — Qt's name
        self._full = text
        self._elide()
        self.updateGeometry()

    def text(self) -> str:
        return self._full

    def _elide(self) -> None:
        shown = self.fontMetrics().elidedText(self._full, self._mode, max(self.contentsRect().width(), MIN_WIDTH))
        super().setText(shown)
        self.setToolTip(self._full if shown != self._full else "")

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._elide()

    def sizeHint(self) -> QSize:
        full = self.fontMetrics().horizontalAdvance(self._full) + 2 * self.margin() + 4
        return QSize(min(full, HINT_WIDTH), super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:
        return QSize(MIN_WIDTH, super().minimumSizeHint().height())


class WrapLabel(QLabel):
    """Wraps at spaces; a word wider than the label (a path) is cut at its edge instead of widening it."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)

    def _height(self) -> int:
        # The height of the text at the width the label has, not at QLabel's own guess of a width
        # (which left blank lines around a two-line text in a form).
        if not self.text():
            return 0
        return self.heightForWidth(self.width() if self.width() > MIN_WIDTH else HINT_WIDTH)

    def sizeHint(self) -> QSize:
        return QSize(min(super().sizeHint().width(), HINT_WIDTH), self._height())

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            self.updateGeometry()  # a new width, perhaps a new number of lines

    def minimumSizeHint(self) -> QSize:
        # One line at least; a long message gets its lines where there is room, not by growing the window.
        return QSize(MIN_WIDTH, min(self._height(), self.fontMetrics().lineSpacing() + 2 * self.margin()))
