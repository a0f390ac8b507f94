"""Spin boxes held to a setting's declared range (engine.settings), so the app offers only what a config takes."""

from __future__ import annotations

from PySide6.QtWidgets import QDoubleSpinBox, QSpinBox

from engine.settings import Spec

INT_MAX = 2**31 - 1  # what a QSpinBox holds


def ranged(spin: QSpinBox | QDoubleSpinBox, spec: Spec) -> QSpinBox | QDoubleSpinBox:
    """`spin` with the Spec's ends as its minimum and maximum (an end left out moves in by the box's smallest
    step); an end the Spec leaves open keeps the box's own."""
    step = 1 if isinstance(spin, QSpinBox) else 10.0 ** -spin.decimals()
    kind = int if isinstance(spin, QSpinBox) else float
    if spec.low is not None:
        spin.setMinimum(kind(spec.low + (step if spec.above else 0)))
    if spec.high is not None:
        high = spec.high - (step if spec.below else 0)
        spin.setMaximum(min(int(high), INT_MAX) if kind is int else high)
    return spin
