"""Two viewers side by side (say a real sample and a synthetic one), linked like FSLeyes' views.

Location is linked through world millimetres, not voxel indices, so two images of
different size or orientation still show the same anatomical point. Display
settings (window/level, overlay opacity and visibility) link separately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QSplitter, QVBoxLayout, QWidget

from .state import ViewState
from .viewer import Viewer

DISPLAY_FIELDS = ("window_level", "mask_opacity", "mask_visible")


class CompareView(QWidget):
    readout = Signal(str)

    def __init__(self, parent: QWidget | None = None, layout: str = "grid") -> None:
        super().__init__(parent)
        self.left = Viewer(layout=layout)
        self.right = Viewer(layout=layout)
        self._syncing = False

        self.link_location = QCheckBox("Link location")
        self.link_location.setChecked(True)
        self.link_location.setToolTip("Move both crosshairs to the same point in millimetres (through the affines)")
        self.link_display = QCheckBox("Link display settings")
        self.link_display.setToolTip("Share window/level, label opacity and label visibility")
        self.link_location.toggled.connect(lambda on: on and self._sync_location(self.left.state, self.right.state))
        self.link_display.toggled.connect(lambda on: on and self._sync_display(self.left.state, self.right.state))

        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        bar.addWidget(self.link_location)
        bar.addWidget(self.link_display)
        bar.addStretch(1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.left)
        split.addWidget(self.right)
        split.setChildrenCollapsible(False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(bar)
        lay.addWidget(split, 1)

        for src, dst in ((self.left, self.right), (self.right, self.left)):
            src.readout.connect(self._relay(src))
            src.state.subscribe("cursor", self._follow(self._sync_location, src.state, dst.state, self.link_location))
            for name in DISPLAY_FIELDS:
                src.state.subscribe(name, self._follow(self._sync_display, src.state, dst.state, self.link_display))

    # -- loading -----------------------------------------------------------------------
    def set_left(self, volume: np.ndarray, mask: np.ndarray | None = None, affine: np.ndarray | None = None,
                 spacing: tuple[float, ...] | None = None, label_names: dict[int, str] | None = None,
                 units: str = "", title: str = "") -> None:
        """Load the left viewer (same arguments as Viewer.set_image)."""
        self._load(self.left, self.right, volume, mask, affine, spacing, label_names, units, title)

    def set_right(self, volume: np.ndarray, mask: np.ndarray | None = None, affine: np.ndarray | None = None,
                  spacing: tuple[float, ...] | None = None, label_names: dict[int, str] | None = None,
                  units: str = "", title: str = "") -> None:
        """Load the right viewer (same arguments as Viewer.set_image)."""
        self._load(self.right, self.left, volume, mask, affine, spacing, label_names, units, title)

    def _load(self, target: Viewer, other: Viewer, *args: Any) -> None:
        target.set_image(*args)
        # The side already on screen leads: the new one opens where the user is looking.
        if self.link_location.isChecked():
            self._sync_location(other.state, target.state)
        if self.link_display.isChecked():
            self._sync_display(other.state, target.state)

    # -- linking -----------------------------------------------------------------------
    def _follow(self, sync: Callable[[ViewState, ViewState], None], src: ViewState, dst: ViewState,
                box: QCheckBox) -> Callable[[Any], None]:
        def handler(_: Any) -> None:
            if box.isChecked():
                sync(src, dst)
        return handler

    def _sync_location(self, src: ViewState, dst: ViewState) -> None:
        if self._syncing or not (src.has_image and dst.has_image):
            return
        # The guard stops the echo: rounding to the other grid and back could nudge the source.
        self._syncing = True
        try:
            dst.set_cursor_world(src.cursor_world)
        finally:
            self._syncing = False

    def _sync_display(self, src: ViewState, dst: ViewState) -> None:
        if self._syncing or not (src.has_image and dst.has_image):
            return
        self._syncing = True
        try:
            for name in DISPLAY_FIELDS:
                setattr(dst, name, getattr(src, name))
        finally:
            self._syncing = False

    def _relay(self, viewer: Viewer) -> Callable[[str], None]:
        def relay(text: str) -> None:
            title = viewer.state.title or ("left" if viewer is self.left else "right")
            self.readout.emit(f"{title}: {text}")
        return relay
