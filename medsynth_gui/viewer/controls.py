"""The bar above the panes: window/level presets, overlay switches and the label legend.

Every control is bound to one ViewState field both ways: the control writes the
field, and a subscription moves the control when anything else (a drag in a pane,
a linked viewer, a key) changes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPainter, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QLabel,
    QSlider,
    QToolButton,
    QWidget,
)

from medsynth_gui.flow_layout import FlowLayout
from medsynth_gui.labels import ElidedLabel

from .colors import PRESET_NAMES, matching_preset
from .state import ViewState

CUSTOM = "Custom"
MAX_LEGEND = 8  # more labels than this go into the legend's tooltip


def _swatch(rgb: tuple[int, int, int], size: int = 12) -> QPixmap:
    pix = QPixmap(size, size)
    pix.fill(QColor(*rgb))
    painter = QPainter(pix)
    painter.setPen(QColor(30, 30, 30))
    painter.drawRect(0, 0, size - 1, size - 1)
    painter.end()
    return pix


class ControlBar(QWidget):
    def __init__(self, state: ViewState, on_reset: Callable[[], None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        # Controls wrap onto a second row in a narrow viewer (each half of Compare) instead of widening it.
        lay = FlowLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        lay.setSpacing(8)

        # The end of a sample's title says what it is ("#3 · 3 lesions · seed 30000060"): cut the file name first.
        self.title = ElidedLabel("", mode=Qt.TextElideMode.ElideLeft)
        self.title.setStyleSheet("font-weight: bold;")
        lay.addWidget(self.title)

        self.wl_label = QLabel("W/L")
        lay.addWidget(self.wl_label)
        self.preset = QComboBox()
        self.preset.addItems([*PRESET_NAMES, CUSTOM])
        self._preset_help = ("Window/level presets (CT ones are in Hounsfield units).\n"
                             "Right-drag in a pane: left/right = window, up/down = level.")
        self.preset.activated.connect(self._preset_chosen)
        lay.addWidget(self.preset)

        self.wl_button = QToolButton()
        self.wl_button.setText("W/L drag")
        self.wl_button.setCheckable(True)
        self.wl_button.setToolTip("Left-drag adjusts window/level instead of moving the crosshair (W)")
        self.wl_button.toggled.connect(lambda on: setattr(state, "wl_mode", on))
        lay.addWidget(self.wl_button)

        self.reset_button = QToolButton()
        self.reset_button.setText("Reset")
        self.reset_button.setToolTip("Fit every pane to its slice again (R)")
        self.reset_button.clicked.connect(on_reset)
        lay.addWidget(self.reset_button)

        self.zoom_button = QToolButton()
        self.zoom_button.setText("Link zoom")
        self.zoom_button.setCheckable(True)
        self.zoom_button.setToolTip("Ctrl+wheel in one pane zooms the others by the same factor")
        self.zoom_button.toggled.connect(lambda on: setattr(state, "link_zoom", on))
        lay.addWidget(self.zoom_button)

        self.mask_box = QCheckBox("Labels")
        self.mask_box.setToolTip("Show the segmentation overlay (G)")
        self.mask_box.toggled.connect(lambda on: setattr(state, "mask_visible", on))
        lay.addWidget(self.mask_box)

        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setFixedWidth(90)
        self.opacity.setToolTip("Label overlay opacity")
        self.opacity.valueChanged.connect(lambda v: setattr(state, "mask_opacity", v / 100.0))
        lay.addWidget(self.opacity)

        self.legend = Legend(state)
        lay.addWidget(self.legend)

        for event, handler in (("image", self._on_image), ("window_level", self._on_window_level),
                               ("mask", self._on_mask), ("mask_visible", self.mask_box.setChecked),
                               ("mask_opacity", self._on_opacity), ("wl_mode", self.wl_button.setChecked),
                               ("link_zoom", self.zoom_button.setChecked)):
            state.subscribe(event, handler)
        self._on_image(None)

    def hide_window_level(self) -> None:
        """No W/L numbers or controls (blinded reading: the caller fixes one window for every image)."""
        for w in (self.wl_label, self.preset, self.wl_button):
            w.hide()

    # -- model -> widgets ------------------------------------------------------------------
    def _on_image(self, _: Any) -> None:
        st = self.state
        self.title.setText(st.title)
        self.title.setVisible(bool(st.title))
        self._on_window_level(st.window_level)
        self._on_mask(st.mask)
        self.mask_box.setChecked(st.mask_visible)
        self._on_opacity(st.mask_opacity)
        self.wl_button.setChecked(st.wl_mode)
        self.zoom_button.setChecked(st.link_zoom)

    def _on_window_level(self, wl: tuple[float, float]) -> None:
        name = matching_preset(self.state.presets, wl) or CUSTOM
        self.preset.setCurrentText(name)
        units = f" {self.state.units}" if self.state.units else ""
        self.preset.setToolTip(f"{self._preset_help}\nNow: W {wl[0]:.5g}  L {wl[1]:.5g}{units}")

    def _on_opacity(self, value: float) -> None:
        self.opacity.setValue(round(value * 100))

    def _on_mask(self, mask: Any) -> None:
        has = mask is not None
        for w in (self.mask_box, self.opacity):
            w.setEnabled(has)

    # -- widgets -> model ------------------------------------------------------------------
    def _preset_chosen(self, row: int) -> None:
        name = self.preset.itemText(row)
        if name in self.state.presets:
            self.state.window_level = self.state.presets[name]
        else:  # "Custom" names no values: show what is really set
            self._on_window_level(self.state.window_level)


class Legend(QWidget):
    """Colour swatch and name of each label, in a row (control bar) or a column (info cell)."""

    def __init__(self, state: ViewState, vertical: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.vertical = vertical
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setHorizontalSpacing(4)
        self.grid.setVerticalSpacing(3)
        for event in ("image", "mask", "label_colors", "label_names"):
            state.subscribe(event, self._rebuild)
        self._rebuild(None)

    def _rebuild(self, _: Any) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        st = self.state
        if st.mask is None:
            return
        entries = [(lab, st.label_colors[lab], st.label_names.get(lab, f"label {lab}")) for lab in st.present_labels]
        cells: list[QLabel] = []
        for n, (lab, rgb, name) in enumerate(entries[:MAX_LEGEND]):
            sw, text = QLabel(), QLabel(name)
            sw.setPixmap(_swatch(rgb))
            text.setToolTip(f"label {lab}")
            if not self.vertical:
                text.setContentsMargins(0, 0, 8, 0)  # air between one entry and the next swatch
            row, col = (n, 0) if self.vertical else (0, 2 * n)
            self.grid.addWidget(sw, row, col)
            self.grid.addWidget(text, row, col + 1)
            cells += [sw, text]
        if len(entries) > MAX_LEGEND:
            more = QLabel(f"+{len(entries) - MAX_LEGEND} more")
            more.setToolTip("\n".join(f"{lab}: {name}" for lab, _, name in entries[MAX_LEGEND:]))
            self.grid.addWidget(more, *((MAX_LEGEND, 1) if self.vertical else (0, 2 * MAX_LEGEND)))
            cells.append(more)
        # The names column (vertical) or a column past the last entry (horizontal) takes the slack,
        # so swatches sit right next to their names.
        for col in range(self.grid.columnCount() + 1):
            self.grid.setColumnStretch(col, 0)
        self.grid.setColumnStretch(1 if self.vertical else 2 * MAX_LEGEND + 1, 1)
        # A layout shows widgets added to a visible parent only after the event loop turns;
        # show them now so an immediate grab (or a test) sees the legend.
        for cell in cells:
            cell.setVisible(True)

    def entries(self) -> list[str]:
        """The label names in the legend, in order (for tests and accessibility)."""
        names = []
        for i in range(self.grid.count()):
            w = self.grid.itemAt(i).widget()
            if isinstance(w, QLabel) and w.text():
                names.append(w.text())
        return names
