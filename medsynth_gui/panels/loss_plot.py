"""The Train panel's loss curve: every logged loss, and an exponentially smoothed line through them."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

SMOOTHING = 0.9


class LossPlot(pg.PlotWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.raw: list[float] = []
        self.smooth: list[float] = []
        self.setMinimumHeight(160)
        self.setLabel("bottom", "step")
        self.setLabel("left", "loss")
        self.setLogMode(y=True)
        # Plain loss values on the axis, not "loss (x0.001)" with ticks scaled to match.
        self.getAxis("left").enableAutoSIPrefix(False)
        self.showGrid(x=True, y=True, alpha=0.2)
        self.addLegend(offset=(-10, 10))
        self.raw_curve = self.plot([], [], pen=pg.mkPen((150, 150, 150, 110), width=1), name="raw",
                                   symbol="o", symbolSize=3, symbolPen=None, symbolBrush=(150, 150, 150, 160))
        self.smooth_curve = self.plot([], [], pen=pg.mkPen((80, 170, 255), width=2), name="smoothed")
        self._redraw()

    def add(self, points: Iterable[tuple[int, float]]) -> None:
        """(step, loss) pairs in step order; a loss a log axis cannot show (0, nan, inf) is left out."""
        for step, loss in points:
            if not (loss > 0 and math.isfinite(loss)):
                continue
            prev = self.smooth[-1] if self.smooth else loss
            self.steps.append(step)
            self.raw.append(loss)
            self.smooth.append(SMOOTHING * prev + (1 - SMOOTHING) * loss)
        self._redraw()

    def reset(self) -> None:
        self.steps, self.raw, self.smooth = [], [], []
        self._redraw()
        self.enableAutoRange()

    def _redraw(self) -> None:
        self.raw_curve.setData(self.steps, self.raw)
        self.smooth_curve.setData(self.steps, self.smooth)
        # An empty log axis would number an arbitrary 1 … 10 that no loss has reached.
        for side in ("left", "bottom"):
            self.getAxis(side).setStyle(showValues=bool(self.steps))
