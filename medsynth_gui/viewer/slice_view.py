"""One pane of the viewer: a slice, its label overlay, crosshair and orientation letters.

The pane owns one image item and one overlay item for its whole life and only feeds
them new slices: a view into the volume copied once into the order QImage reads,
and of the label map only the box that holds labels, so scrolling costs one
numpy-to-QImage conversion and one paint. Mouse and keys follow 3D Slicer and
ITK-SNAP habits: wheel and arrows move through slices, Ctrl+wheel zooms,
middle-drag pans, left-click places the crosshair, right-drag sets window/level.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QApplication, QWidget

from .colors import label_lut
from .items import FastImageItem, Label, row_order
from .orientation import VIEW_COLORS, Plane, display_slice, from_display, to_display
from .state import ViewState

BIG_STEP = 10  # slices per PageUp / PageDown
WL_PIXELS = 500.0  # dragging this many pixels sweeps the data's whole intensity range
LETTER_COLOR = (255, 236, 160)
WHEEL_NOTCH = 120  # angle delta of one wheel click; trackpads send fractions of it


class SliceView(pg.GraphicsView):
    """Shows plane `index` of `state.planes` and writes cursor / window-level changes back."""

    readout = Signal(str)
    zoomed = Signal(float)

    def __init__(self, state: ViewState, index: int, parent: QWidget | None = None) -> None:
        super().__init__(parent, background=(0, 0, 0))
        self.state = state
        self.index = index
        self.plane: Plane | None = None
        self._shown_slice: int | None = None
        self._mask_here = False  # the overlay has labels on the slice on screen
        self._mask_stale = False  # the overlay was hidden while the slice moved
        self._mask_buffer: np.ndarray | None = None  # this pane's overlay picture, reused per slice
        self._mask_region: tuple[slice, slice] = (slice(0), slice(0))
        self._wl_start: tuple[float, float] | None = None
        self.blind = False  # see set_blind
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(160, 160)

        self.vb = PaneViewBox(self)
        self.setCentralItem(self.vb)
        self.image_item = FastImageItem(axisOrder="col-major")
        self.mask_item = FastImageItem(axisOrder="col-major")
        self.mask_item.setZValue(1)
        self.vb.addItem(self.image_item)
        self.vb.addItem(self.mask_item)
        self.v_line = pg.InfiniteLine(angle=90, movable=False)
        self.h_line = pg.InfiniteLine(angle=0, movable=False)
        for line in (self.v_line, self.h_line):
            line.setZValue(10)
            self.vb.addItem(line, ignoreBounds=True)

        # Letters and labels hang off the ViewBox itself, not its data group, so they
        # stay pinned to the pane's edges however the slice is zoomed or panned.
        self.letters = {
            "left": Label((0.0, 0.5), LETTER_COLOR, 12, True),
            "right": Label((1.0, 0.5), LETTER_COLOR, 12, True),
            "top": Label((0.5, 0.0), LETTER_COLOR, 12, True),
            "bottom": Label((0.5, 1.0), LETTER_COLOR, 12, True),
        }
        self.corner = Label((0.0, 0.0), (230, 230, 230), 10, True)
        self.wl_text = Label((0.0, 1.0), (200, 200, 200), 9, False)
        self.position_text = Label((1.0, 1.0), (200, 200, 200), 9, False)
        for item in (*self.letters.values(), self.corner, self.wl_text, self.position_text):
            item.setParentItem(self.vb)
        self.vb.sigResized.connect(self._place_overlays)
        self.scene().sigMouseMoved.connect(self._on_hover)

        for event, handler in (("image", self._on_image), ("cursor", self._on_cursor),
                               ("window_level", self._on_window_level), ("mask", self._on_mask),
                               ("mask_visible", self._on_mask_visible), ("mask_opacity", self._on_label_colors),
                               ("label_colors", self._on_label_colors), ("wl_mode", self._on_wl_mode)):
            state.subscribe(event, handler)
        self._on_wl_mode(state.wl_mode)
        if state.has_image:
            self._on_image(None)

    # -- model -> pane -------------------------------------------------------------------
    def _on_image(self, _: Any) -> None:
        st = self.state
        self.plane = st.planes[self.index] if self.index < len(st.planes) else None
        self._shown_slice = None
        if self.plane is None:
            self.image_item.clear()
            self.mask_item.clear()
            self._mask_here = False
            return
        p, shape = self.plane, st.spatial_shape
        self._size_mm = (shape[p.h_axis] * st.spacing[p.h_axis], shape[p.v_axis] * st.spacing[p.v_axis])
        self._render_image()
        # Voxel spacing becomes the pixel size, so the picture keeps its true aspect in mm.
        rect = QRectF(0.0, 0.0, *self._size_mm)
        self.image_item.setRect(rect)
        self._mask_buffer = None
        self.mask_item.clear()
        self._render_mask()
        self._on_label_colors(None)
        self._on_mask_visible(st.mask_visible)
        for edge, item in self.letters.items():
            item.setText(p.letters[edge])
            item.setVisible(bool(p.letters[edge]))
        self._color_crosshair()
        self._update_cursor_marks()
        self._on_window_level(st.window_level)
        self.reset_view()

    def _color_crosshair(self) -> None:
        # Each line is another pane's plane, drawn in that pane's colour as Slicer does.
        colour_of_axis = {q.normal: VIEW_COLORS[q.name] for q in self.state.planes if q.normal is not None}
        default = VIEW_COLORS["Image"]
        for line, axis in ((self.v_line, self.plane.h_axis), (self.h_line, self.plane.v_axis)):
            # Opaque and one pixel wide: blending a translucent line costs more on every repaint.
            line.setPen(pg.mkPen(*colour_of_axis.get(axis, default), width=1))

    def _slice_key(self) -> int | None:
        p = self.plane
        return None if p is None or p.normal is None else self.state.cursor[p.normal]

    def _render_image(self) -> None:
        st = self.state
        # One copy, into the order QImage wants (pyqtgraph turns [h, v] into rows): every
        # later pass (NaN check, rescale, table lookup) then reads contiguous memory instead
        # of a slice strided across the whole volume.
        image = row_order(display_slice(st.volume, self.plane, st.cursor, channels_first=st.is_rgb))
        self.image_item.setImage(image, autoLevels=False, levels=st.levels)
        self._shown_slice = self._slice_key()

    def _render_mask(self) -> None:
        st, p = self.state, self.plane
        box = st.mask_bounds
        self._mask_here = box is not None and (p.normal is None or box[p.normal].start <= st.cursor[p.normal]
                                               < box[p.normal].stop)
        # A hidden overlay is not kept up to date; showing it again renders the current slice.
        self._mask_stale = not st.mask_visible
        if not self._mask_here or self._mask_stale:
            self._on_mask_visible(st.mask_visible)
            return
        # Only the labels' bounding box is copied, into a slice-sized buffer that is zero
        # everywhere else, and only that box (one voxel wider, against rounding) is painted.
        if self._mask_buffer is None:
            shape = st.spatial_shape
            self._mask_buffer = np.zeros((shape[p.h_axis], shape[p.v_axis]), np.uint8, order="F")
            self._mask_region = hs, vs = self._box_region(box)
            self.mask_item.clip = QRectF(hs.start - 1, vs.start - 1, hs.stop - hs.start + 2, vs.stop - vs.start + 2)
        crop = st.mask[box]
        local = tuple(c - b.start for c, b in zip(st.cursor, box))
        self._mask_buffer[self._mask_region] = display_slice(crop, p, local)
        first = self.mask_item.image is None or self.mask_item.image.shape != self._mask_buffer.shape
        self.mask_item.setImage(self._mask_buffer, autoLevels=False)
        if first:
            self.mask_item.setRect(QRectF(0.0, 0.0, *self._size_mm))
        self._on_mask_visible(st.mask_visible)

    def _box_region(self, box: tuple[slice, ...]) -> tuple[slice, slice]:
        """Where the labels' bounding box falls in the pane's [h, v] picture."""
        shape = self.state.spatial_shape
        (h0, v0) = to_display(self.plane, shape, tuple(b.start for b in box))
        (h1, v1) = to_display(self.plane, shape, tuple(b.stop - 1 for b in box))
        return slice(min(h0, h1), max(h0, h1) + 1), slice(min(v0, v1), max(v0, v1) + 1)

    def displayed_mask(self) -> np.ndarray | None:
        """The overlay as the pane shows it, or None when it is hidden or this slice has no labels."""
        return self.mask_item.image if self.plane is not None and self.mask_item.isVisible() else None

    def _on_cursor(self, _: Any) -> None:
        if self.plane is None:
            return
        if self._slice_key() != self._shown_slice:
            self._render_image()
            self._render_mask()
        self._update_cursor_marks()

    def _update_cursor_marks(self) -> None:
        st, p = self.state, self.plane
        dh, dv = to_display(p, st.spatial_shape, st.cursor)
        self.v_line.setValue((dh + 0.5) * st.spacing[p.h_axis])
        self.h_line.setValue((dv + 0.5) * st.spacing[p.v_axis])
        self.corner.setText(self.corner_text())
        if p.normal is not None:
            self.position_text.setText(f"{p.normal_letter} {st.cursor_world['RAS'.index(p.normal_letter)]:.1f} mm")
        self.position_text.setVisible(p.normal is not None)

    def corner_text(self) -> str:
        """Pane name and slice number as people count them (1 to n); the readout keeps 0-based indices."""
        st, p = self.state, self.plane
        if p is None:
            return ""
        shape = st.spatial_shape
        if p.normal is None:
            return f"{shape[1]} × {shape[0]} px"
        return f"{p.name}  {st.cursor[p.normal] + 1}/{shape[p.normal]}"

    def _on_window_level(self, wl: tuple[float, float]) -> None:
        if self.plane is None:
            return
        self.image_item.setLevels(self.state.levels)
        self.wl_text.setText(f"W {wl[0]:.4g}  L {wl[1]:.4g}")

    def _on_mask(self, _: Any) -> None:
        if self.plane is not None:
            self._mask_buffer = None
            self._render_mask()

    def _on_mask_visible(self, visible: bool) -> None:
        if visible and self._mask_stale and self.plane is not None:
            self._render_mask()
            return
        self.mask_item.setVisible(bool(visible) and self._mask_here)

    def _on_label_colors(self, _: Any) -> None:
        self.mask_item.setLookupTable(label_lut(self.state.label_colors, self.state.mask_opacity))

    def _on_wl_mode(self, on: bool) -> None:
        shape = Qt.CursorShape.SizeAllCursor if on else Qt.CursorShape.CrossCursor
        self.viewport().setCursor(shape)

    def _place_overlays(self) -> None:
        # Boxes sit flush with the edges so a crosshair running under a letter cannot peek out
        # beyond it; the boxes' own padding keeps the text off the edge.
        r = self.vb.rect()
        cx, cy = r.center().x(), r.center().y()
        self.letters["left"].place(r.left(), cy)
        self.letters["right"].place(r.right(), cy)
        self.letters["top"].place(cx, r.top())
        self.letters["bottom"].place(cx, r.bottom())
        self.corner.place(r.left(), r.top())
        self.wl_text.place(r.left(), r.bottom())
        self.position_text.place(r.right(), r.bottom())

    def set_blind(self) -> None:
        """For blinded reading: no crosshair, no W/L numbers, no value readout, and a window/level that stays."""
        self.blind = True
        for item in (self.v_line, self.h_line, self.wl_text):
            item.hide()

    # -- pane -> model -------------------------------------------------------------------
    def voxel_at(self, scene_pos: QPointF, clip: bool = False) -> tuple[int, ...] | None:
        """The voxel under a scene position, or None off the picture (unless clip)."""
        st, p = self.state, self.plane
        if p is None:
            return None
        view = self.vb.mapSceneToView(scene_pos)
        shape = st.spatial_shape
        dh = math.floor(view.x() / st.spacing[p.h_axis])
        dv = math.floor(view.y() / st.spacing[p.v_axis])
        if not clip and not (0 <= dh < shape[p.h_axis] and 0 <= dv < shape[p.v_axis]):
            return None
        return from_display(p, shape, st.cursor, dh, dv)

    def scene_pos_of(self, index: tuple[int, ...]) -> QPointF:
        """Scene position of a voxel's centre in this pane (tests and linked tools use it)."""
        st, p = self.state, self.plane
        dh, dv = to_display(p, st.spatial_shape, index)
        return self.vb.mapViewToScene(QPointF((dh + 0.5) * st.spacing[p.h_axis], (dv + 0.5) * st.spacing[p.v_axis]))

    def set_cursor_at(self, scene_pos: QPointF) -> None:
        index = self.voxel_at(scene_pos, clip=True)
        if index is not None:
            self.state.cursor = index
            if not self.blind:
                self.readout.emit(self.state.describe(self.plane.name, index))

    def _on_hover(self, scene_pos: QPointF) -> None:
        if self.plane is None or not self.vb.sceneBoundingRect().contains(scene_pos):
            return
        index = self.voxel_at(scene_pos)
        if index is None:
            return
        if not self.blind:
            self.readout.emit(self.state.describe(self.plane.name, index))
        if QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.state.cursor = index

    def step_slice(self, steps: int) -> None:
        """Move `steps` slices towards the normal's positive world end (S, A or R)."""
        p = self.plane
        if p is None or p.normal is None:
            return
        cursor = list(self.state.cursor)
        cursor[p.normal] += steps * p.normal_sign
        self.state.cursor = tuple(cursor)

    def drag_window_level(self, ev: Any) -> None:
        # Right/left is the window (contrast), down/up the level (brightness), as in Slicer.
        if self.blind:
            return
        if ev.isStart() or self._wl_start is None:
            self._wl_start = self.state.window_level
        lo, hi = self.state.data_range
        per_pixel = max(hi - lo, 1e-6) / WL_PIXELS
        delta = ev.screenPos() - ev.buttonDownScreenPos(ev.button())
        w0, l0 = self._wl_start
        self.state.window_level = (max(w0 + delta.x() * per_pixel, per_pixel), l0 + delta.y() * per_pixel)
        if ev.isFinish():
            self._wl_start = None

    def reset_view(self) -> None:
        """Fit the slice to the pane and follow resizes again until the next zoom or pan."""
        self.vb.enableAutoRange(pg.ViewBox.XYAxes, True)
        self.vb.autoRange(padding=0.02, items=[self.image_item])

    def apply_zoom(self, factor: float) -> None:
        self.vb.scaleBy((factor, factor))

    def keyPressEvent(self, ev: QKeyEvent) -> None:
        key, mods = ev.key(), ev.modifiers()
        plain = not (mods & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier))
        steps = {Qt.Key.Key_Up: 1, Qt.Key.Key_Right: 1, Qt.Key.Key_Down: -1, Qt.Key.Key_Left: -1,
                 Qt.Key.Key_PageUp: BIG_STEP, Qt.Key.Key_PageDown: -BIG_STEP}
        if key in steps:
            self.step_slice(steps[key])
        elif plain and key == Qt.Key.Key_R:
            self.reset_view()
        elif plain and key == Qt.Key.Key_W and not self.blind:
            self.state.wl_mode = not self.state.wl_mode
        elif plain and key == Qt.Key.Key_G:
            self.state.mask_visible = not self.state.mask_visible
        else:
            super().keyPressEvent(ev)
            return
        ev.accept()


class PaneViewBox(pg.ViewBox):
    """A ViewBox whose mouse gestures are the clinical ones instead of pyqtgraph's defaults."""

    def __init__(self, pane: SliceView) -> None:
        super().__init__(lockAspect=True, enableMenu=False, invertY=False)
        self._pane = pane
        self._wheel_rest = 0

    def wheelEvent(self, ev: Any, axis: int | None = None) -> None:
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            factor = 1.02 ** (ev.delta() * self.state["wheelScaleFactor"])
            super().wheelEvent(ev, axis)
            self._pane.zoomed.emit(factor)
            return
        # Whole notches move whole slices; trackpad fractions add up until they make one.
        self._wheel_rest += ev.delta()
        steps = int(self._wheel_rest / WHEEL_NOTCH)
        if steps:
            self._wheel_rest -= steps * WHEEL_NOTCH
            self._pane.step_slice(steps)
        ev.accept()

    def mouseClickEvent(self, ev: Any) -> None:
        if ev.button() == Qt.MouseButton.LeftButton and not self._pane.state.wl_mode:
            self._pane.set_cursor_at(ev.scenePos())
        ev.accept()

    def mouseDragEvent(self, ev: Any, axis: int | None = None) -> None:
        button = ev.button()
        if button == Qt.MouseButton.MiddleButton:
            super().mouseDragEvent(ev, axis)  # pyqtgraph pans on a middle drag
        elif button == Qt.MouseButton.RightButton or (
                button == Qt.MouseButton.LeftButton and self._pane.state.wl_mode):
            self._pane.drag_window_level(ev)
        elif button == Qt.MouseButton.LeftButton:
            self._pane.set_cursor_at(ev.scenePos())
        ev.accept()
