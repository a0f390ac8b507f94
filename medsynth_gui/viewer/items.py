"""The graphics items a pane is built from, each tuned for repainting often.

An image item that hands Qt a 32-bit picture and a cheap text label pinned to the
pane's edge. The pane's ViewBox lives with the pane (slice_view.py): its gestures
drive the pane.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QGraphicsRectItem, QGraphicsSimpleTextItem

TEXT_FILL = (0, 0, 0, 200)  # dark enough that a crosshair running under a letter never garbles it


def row_order(a: np.ndarray) -> np.ndarray:
    """[h, v(, c)] laid out so that its [v, h(, c)] transpose, what QImage reads, is contiguous."""
    return np.ascontiguousarray(a.swapaxes(0, 1)).swapaxes(0, 1)


class FastImageItem(pg.ImageItem):
    """An ImageItem that hands QPainter a 32-bit image.

    pyqtgraph renders grey slices as 8-bit grey and label maps as indexed colour; Qt's
    raster engine converts those on every scaled draw, which made painting cost 4-5x
    more than the one conversion done here per new slice.
    """

    clip: QRectF | None = None  # in image pixels: paint only this part (the rest is known to be clear)

    def paint(self, painter: QPainter, *args: Any) -> None:
        # Clipping the full-size draw, rather than drawing a smaller image, keeps Qt's pixel
        # rounding identical to the image below: no seam between overlay and anatomy.
        if self.clip is not None:
            painter.setClipRect(self.clip, Qt.ClipOperation.IntersectClip)
        super().paint(painter, *args)

    def render(self) -> None:
        super().render()
        q = self.qimage
        if q is not None and q.format() not in _FAST_FORMATS:
            fmt = QImage.Format.Format_ARGB32_Premultiplied if q.hasAlphaChannel() else QImage.Format.Format_RGB32
            self.qimage = q.convertToFormat(fmt)


_FAST_FORMATS = (QImage.Format.Format_RGB32, QImage.Format.Format_ARGB32_Premultiplied)


class Label(QGraphicsRectItem):
    """Text on a dark box, pinned by an anchor to a point of the pane's edge.

    Built from two plain C++ items rather than pyqtgraph's TextItem (a QTextDocument per
    label): relaying out rich text on every slice change cost more than the image itself.
    """

    def __init__(self, anchor: tuple[float, float], color: tuple[int, ...], size: int, bold: bool) -> None:
        super().__init__()
        self.setPen(QPen(Qt.PenStyle.NoPen))
        self.setBrush(QColor(*TEXT_FILL))
        self.setZValue(100)
        self._text = QGraphicsSimpleTextItem(self)
        font = QFont()
        font.setPointSize(size)
        font.setBold(bold)
        self._text.setFont(font)
        self._text.setBrush(QColor(*color))
        self._anchor = anchor
        self._at = QPointF(0.0, 0.0)

    def text(self) -> str:
        return self._text.text()

    def setText(self, text: str) -> None:
        # Setting the same text again would still relayout it and repaint its area.
        if text != self._text.text():
            self._text.setText(text)
            self._relayout()

    def place(self, x: float, y: float) -> None:
        self._at = QPointF(x, y)
        self._relayout()

    def _relayout(self) -> None:
        r = self._text.boundingRect()
        pad = 4.0 if self._text.text() else 0.0
        w, h = r.width() + 2 * pad, r.height() + pad if pad else 0.0
        self.setRect(0.0, 0.0, w, h)
        self._text.setPos(pad, pad / 2)
        self.setPos(self._at.x() - self._anchor[0] * w, self._at.y() - self._anchor[1] * h)
