"""The Train panel warns about a GPU preset on a CPU and shows the run's measured duration."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")

import torch  # noqa: E402

from engine.runtime.estimate import describe  # noqa: E402
from medsynth_gui.panels.train_panel import TrainPanel  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without a GPU")
def test_gpu_preset_on_a_cpu_machine_is_named_with_the_cpu_batch(qtbot):
    panel = TrainPanel()
    qtbot.addWidget(panel)
    assert panel.estimate.text() == ""  # the demo preset is sized for a CPU
    panel.preset.setCurrentText("medmnist-28")
    assert "medmnist-28 preset is sized for a GPU" in panel.estimate.text()
    assert panel.batch_spin.value() == 32  # the preset's CPU batch, which is what will run
    panel._on_event(describe(0.39, 20_000, "CPU", "medmnist-28", "cpu"))
    assert "about 2 h 10 min on this CPU (20,000 steps × 0.39 s, measured over 3 warm-up steps)" in \
        panel.estimate.text()
    panel.preset.setCurrentText("demo")
    assert panel.estimate.text() == "" and panel.batch_spin.value() == 32
