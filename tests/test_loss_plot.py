"""The Train panel's loss curve: the smoothed line follows a falling loss, and the wheel scrolls the dock instead of
zooming the curve out of sight (both seen in a walk of the packaged app)."""

from __future__ import annotations

import math

from medsynth_gui.panels.loss_plot import LossPlot


def test_the_smoothed_line_follows_a_fast_falling_loss(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    # 30 logged points, as a 300-step demo run logs them: 0.86 falling to about 0.08.
    points = [(10 * i, 0.08 + 0.78 * math.exp(-i / 4)) for i in range(1, 31)]
    plot.add(points)
    assert math.isclose(plot.smooth[0], plot.raw[0])  # not pulled towards an earlier start
    assert plot.smooth[-1] < 1.1 * plot.raw[-1]  # it was 0.13 against 0.077 with the old weighting
    assert all(s >= r for s, r in zip(plot.smooth[1:], plot.raw[1:]))  # a falling loss: smoothed lags just above
    plot.reset()
    plot.add([(1, 0.5)])
    assert plot.smooth == [0.5]


def test_the_wheel_does_not_zoom_the_curve(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    assert plot.getViewBox().state["mouseEnabled"] == [False, False]
