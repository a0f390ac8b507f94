"""The viewer widget: axial, coronal and sagittal panes (or one for a 2D image) and their controls."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from medsynth_gui.labels import WrapLabel

from .controls import ControlBar, Legend
from .orientation import orientation_code
from .slice_view import SliceView
from .state import ViewState

PANE_GRID = {"row": [(0, 0), (0, 1), (0, 2)], "grid": [(0, 0), (1, 0), (1, 1)]}


class Viewer(QWidget):
    """Three linked slice panes of one volume (or one pane of a 2D image) with a control bar.

    `state` is the model behind it: set fields there (cursor, window_level, mask_visible,
    mask_opacity, ...) and every pane and control follows.

    blind: for blinded reading (a reader study), show nothing that could tell one image's
    source from another's: no crosshair, no window/level numbers or controls, no value
    readout, no intensity summary; the caller sets one window/level and it stays.
    """

    readout = Signal(str)

    def __init__(self, parent: QWidget | None = None, layout: str = "row", blind: bool = False) -> None:
        super().__init__(parent)
        if layout not in PANE_GRID:
            raise ValueError(f"layout must be 'row' or 'grid', got {layout!r}")
        self.blind = blind
        self.state = ViewState()
        self._layout_kind = layout
        self._panes = [SliceView(self.state, i) for i in range(3)]
        self.controls = ControlBar(self.state, on_reset=self.reset_views)
        self._grid_host = self._build_panes()
        self._build_info_cell()
        if blind:
            self.controls.hide_window_level()
        self._stretch_grid()

        self.placeholder = QLabel("No image loaded")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet("color: #aaa; background: #000; font-size: 14pt;")

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        outer.addWidget(self.controls)
        outer.addWidget(self._grid_host, 1)
        outer.addWidget(self.placeholder, 1)
        self.state.subscribe("image", self._on_image)
        self._on_image(None)

    def _build_panes(self) -> QWidget:
        """The slice panes in their grid, on a host whose background shows through the gaps."""
        grid_host = QWidget()
        grid_host.setObjectName("panes")
        grid_host.setStyleSheet("QWidget#panes { background: #3a3a3a; }")  # the 2px gaps show as pane borders
        grid = QGridLayout(grid_host)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        for pane, (row, col) in zip(self._panes, PANE_GRID[self._layout_kind]):
            grid.addWidget(pane, row, col)
            if self.blind:
                pane.set_blind()
            else:
                pane.readout.connect(self.readout)
            pane.zoomed.connect(self._on_zoomed)
        self._grid = grid
        return grid_host

    def _build_info_cell(self) -> None:
        # In the 2x2 layout the fourth cell says what is on screen, as Slicer's data probe
        # does, and holds the legend, which leaves the control bar short enough for half a screen.
        self.info_cell = QFrame()
        self.info_cell.setObjectName("info")
        self.info_cell.setStyleSheet("QFrame#info { background: #111; } QLabel { color: #ddd; }")
        cell = QVBoxLayout(self.info_cell)
        cell.setContentsMargins(10, 8, 10, 8)
        self.info = WrapLabel("")
        self.info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        cell.addWidget(self.info)
        if self._layout_kind == "grid":
            self.legend = Legend(self.state, vertical=True)
            self.controls.legend.hide()
            cell.addSpacing(6)
            cell.addWidget(self.legend)
            self._grid.addWidget(self.info_cell, 0, 1)
        else:
            self.legend = self.controls.legend
            self.info_cell.hide()
        cell.addStretch(1)

    def _stretch_grid(self) -> None:
        # Panes share the area equally; the text cell must not claim a bigger row.
        self.info_cell.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        rows, cols = (1, 3) if self._layout_kind == "row" else (2, 2)
        for i in range(cols):
            self._grid.setColumnStretch(i, 1)
        for i in range(rows):
            self._grid.setRowStretch(i, 1)

    @property
    def slice_views(self) -> list[SliceView]:
        """The panes in use: [axial, coronal, sagittal] for a volume, [image] for a 2D image."""
        return [p for p in self._panes if p.plane is not None]

    def set_image(self, volume: np.ndarray, mask: np.ndarray | None = None, affine: np.ndarray | None = None,
                  spacing: tuple[float, ...] | None = None, label_names: dict[int, str] | None = None,
                  units: str = "", title: str = "") -> None:
        """Show a volume (X, Y, Z) in the file's voxel order, a 2D image (H, W) or a colour one (3, H, W).

        mask: uint8 labels of the same spatial shape; affine: 4x4 voxel-to-RAS mm (from
        spacing when None); units "HU" opens with a CT window, anything else with MRI auto.
        """
        self.state.set_image(volume, mask=mask, affine=affine, spacing=spacing, label_names=label_names,
                             units=units, title=title)

    def reset_views(self) -> None:
        for pane in self.slice_views:
            pane.reset_view()

    def _on_image(self, _: object) -> None:
        st = self.state
        loaded = st.has_image
        self._grid_host.setVisible(loaded)
        self.placeholder.setVisible(not loaded)
        single = len(st.planes) == 1
        for pane in self._panes:
            pane.setVisible(pane.plane is not None)
        if self._layout_kind == "grid":
            self.info_cell.setVisible(loaded and not single and not self.blind)
        # One pane takes the whole area instead of one cell of it; back to its cell for a volume.
        rows, cols = (2, 2) if self._layout_kind == "grid" else (1, 3)
        self._grid.addWidget(self._panes[0], 0, 0, *((rows, cols) if single else (1, 1)))
        self.info.setText(self._info_text() if loaded else "")

    def _info_text(self) -> str:
        st = self.state
        shape = " × ".join(str(n) for n in st.spatial_shape)
        spacing = " × ".join(f"{s:.3g}" for s in st.spacing)
        lines = [f"<b>{st.title}</b>" if st.title else "", f"{shape} voxels", f"{spacing} mm"]
        if len(st.spatial_shape) == 3:
            lines.append(f"voxel axes point {orientation_code(st.affine)}")
        lo, hi = st.data_range
        lines.append(f"intensity 0.1–99.9%: {lo:.4g} … {hi:.4g} {st.units}".rstrip())
        if st.mask is not None:
            lines.append(f"labels: {len(st.present_labels)}")
        lines.append("<br><span style='color:#999'>wheel / ↑↓: slice · PgUp/PgDn: 10 slices<br>"
                     "click: crosshair · Shift+move: follow<br>right-drag: window/level · Ctrl+wheel: zoom<br>"
                     "middle-drag: pan · R: reset · G: labels · W: W/L drag</span>")
        return "<br>".join(line for line in lines if line)

    def _on_zoomed(self, factor: float) -> None:
        if not self.state.link_zoom:
            return
        source = self.sender()
        for pane in self.slice_views:
            if pane is not source:
                pane.apply_zoom(factor)
