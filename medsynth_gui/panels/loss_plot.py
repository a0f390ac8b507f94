"""The Train panel's loss curve: every logged loss, and an exponentially smoothed line through them."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

# Weight of the past in the smoothed line, per logged point. Losses are logged every few steps and fall fast at first,
# so a heavier weight left the line above every raw point for the whole of a short run.
SMOOTHING = 0.6


class LossPlot(pg.PlotWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.raw: list[float] = []
        self.smooth: list[float] = []
        self._ema = 0.0
        self.setMinimumHeight(160)
        # The plot sits in a scrolling dock: the wheel scrolls the dock, it does not zoom the curve away.
        self.setMouseEnabled(x=False, y=False)
        self.setMenuEnabled(False)
        self.hideButtons()
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
            self.steps.append(step)
            self.raw.append(loss)
            # Started from zero and divided by the weight it has gathered (TensorBoard's debiasing), so the first
            # points are not pulled towards the first loss.
            self._ema = SMOOTHING * self._ema + (1 - SMOOTHING) * loss
            self.smooth.append(self._ema / (1 - SMOOTHING ** len(self.raw)))
        self._redraw()

    def reset(self) -> None:
        self.steps, self.raw, self.smooth = [], [], []
        self._ema = 0.0
        self._redraw()
        self.enableAutoRange()

    def _redraw(self) -> None:
        self.raw_curve.setData(self.steps, self.raw)
        self.smooth_curve.setData(self.steps, self.smooth)
        # An empty log axis would number an arbitrary 1 … 10 that no loss has reached.
        for side in ("left", "bottom"):
            self.getAxis(side).setStyle(showValues=bool(self.steps))
