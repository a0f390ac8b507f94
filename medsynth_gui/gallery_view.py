"""The gallery's grid: a list view with Enter as activation, and how each cell is painted (tile, caption, flag)."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QKeyEvent, QPainter, QPen, QPixmap, QPolygon
from PySide6.QtWidgets import QListView, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from medsynth_gui.thumbnails import ThumbnailModel


class ThumbnailDelegate(QStyledItemDelegate):
    """Draws the thumbnail on a dark tile (as radiology viewers do) with '#index  class' below, or where
    the image came from ('case_003 · z 41') when the file records it."""

    PAD = 4

    def __init__(self, model: ThumbnailModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.names: list[str] | None = None  # each sample's provenance, from the file's /names

    def cell_size(self, font: QFont) -> QSize:
        line = QFontMetrics(font).height()
        return QSize(self.model.size + 2 * self.PAD, self.model.size + 2 * self.PAD + line + 2)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        return self.cell_size(option.font)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        r: QRect = option.rect
        size, pad = self.model.size, self.PAD
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        hover = bool(option.state & QStyle.StateFlag.State_MouseOver)
        painter.save()
        if selected:
            painter.fillRect(r.adjusted(1, 1, -1, -1), QColor(40, 90, 140))
        elif hover:
            painter.fillRect(r.adjusted(1, 1, -1, -1), QColor(50, 50, 50))
        tile = QRect(r.x() + (r.width() - size) // 2, r.y() + pad, size, size)
        pix = index.data(Qt.ItemDataRole.DecorationRole)
        painter.fillRect(tile, QColor(0, 0, 0))
        if isinstance(pix, QPixmap) and not pix.isNull():
            x = tile.x() + (size - pix.width()) // 2
            y = tile.y() + (size - pix.height()) // 2
            painter.drawPixmap(x, y, pix)
        else:
            painter.fillRect(tile.adjusted(1, 1, -1, -1), QColor(38, 38, 38))
        if index.data(ThumbnailModel.MismatchRole):
            _warning_marker(painter, tile)
        sample = index.data(ThumbnailModel.SampleRole)
        text = index.data(Qt.ItemDataRole.DisplayRole) or ""
        caption = f"#{text}" if sample is not None else text
        if self.names is not None and sample is not None and 0 <= sample < len(self.names):
            caption = self.names[sample]
        text_rect = QRect(r.x() + pad, tile.bottom() + 2, r.width() - 2 * pad, r.bottom() - tile.bottom() - 2)
        painter.setPen(QColor(255, 255, 255) if selected else QColor(200, 200, 200))
        painter.setFont(option.font)
        elided = option.fontMetrics.elidedText(caption, Qt.TextElideMode.ElideRight, text_rect.width())
        head, sep, tail = caption.rpartition(" · ")
        if elided != caption and self.names is not None and sep:
            # Of "case_003 · z 41" the slice stays whole; the case name gives way in its middle, where
            # datasets repeat themselves ("hippocampus_…003").
            kept = sep + tail
            room = text_rect.width() - option.fontMetrics.horizontalAdvance(kept)
            elided = option.fontMetrics.elidedText(head, Qt.TextElideMode.ElideMiddle, max(room, 0)) + kept
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, elided)
        if option.state & QStyle.StateFlag.State_HasFocus and selected:
            painter.setPen(QPen(QColor(90, 170, 255), 2))
            painter.drawRect(r.adjusted(1, 1, -2, -2))
        painter.restore()


def _warning_marker(painter: QPainter, tile: QRect) -> None:
    """An amber triangle with "!" in the tile's top-right corner: the mask disagrees with the class."""
    side = max(12, tile.width() // 6)
    x, y = tile.right() - side - 2, tile.top() + 2
    painter.setPen(QPen(QColor(0, 0, 0), 1))
    painter.setBrush(QColor(255, 176, 0))
    painter.drawPolygon(QPolygon([QPoint(x + side // 2, y), QPoint(x + side, y + side), QPoint(x, y + side)]))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    font = painter.font()
    font.setBold(True)
    font.setPixelSize(max(8, side * 2 // 3))
    painter.setFont(font)
    painter.drawText(QRect(x, y + side // 4, side, side * 3 // 4), Qt.AlignmentFlag.AlignCenter, "!")


class GridView(QListView):
    """A QListView that turns Enter on the current item into an activation of its own."""

    enter_pressed = Signal(QModelIndex)
    resized = Signal()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.resized.emit()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentIndex().isValid():
            self.enter_pressed.emit(self.currentIndex())
            event.accept()
            return
        super().keyPressEvent(event)
