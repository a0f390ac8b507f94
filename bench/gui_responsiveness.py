"""Longest stall of the Qt event loop while a training job runs in the app's worker thread.

A 5 ms QTimer measures how late each tick fires; the worst lateness over the run is
the longest time a user's click or scroll would have waited. The same timer without
a job gives the baseline in the same run. Goal: under 50 ms while training.
Run from the repository root: .venv/bin/python bench/gui_responsiveness.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.io.medsynth_writer import write_image_set  # noqa: E402
from medsynth_gui.panels.train_panel import TrainPanel  # noqa: E402

TICK_MS = 5


def measure(app: QApplication, seconds: float, panel: TrainPanel | None = None) -> dict[str, float]:
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append((now - last[0]) * 1000.0 - TICK_MS)
        last[0] = now

    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    gaps.sort()
    steps = panel.progress.value() if panel is not None else 0
    return {"max_ms": gaps[-1], "p99_ms": gaps[int(len(gaps) * 0.99)], "ticks": len(gaps), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp())
    data = write_image_set(tmp / "phantoms.h5", make_phantoms(256, 32))
    panel = TrainPanel()
    panel.resize(520, 900)
    panel.show()
    idle = measure(app, min(5.0, args.seconds), None)
    panel.data_edit.setText(str(data))
    panel.run_edit.setText(str(tmp / "run"))
    panel.steps_spin.setValue(1_000_000)
    panel.start()
    # Skip model construction and the first steps, then measure steady training.
    deadline = time.perf_counter() + 120
    while panel.progress.value() < 2 and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.01)
    busy = measure(app, args.seconds, panel)
    panel.stop()
    panel.runner.wait()
    print(f"event-loop lateness of a {TICK_MS} ms timer (ms)      max     p99   ticks")
    print(f"  idle window (baseline)                 {idle['max_ms']:7.1f} {idle['p99_ms']:7.1f} {idle['ticks']:7d}")
    print(f"  training in the worker ({busy['steps']} steps)  {busy['max_ms']:7.1f} {busy['p99_ms']:7.1f} "
          f"{busy['ticks']:7d}")
    print(f"longest stall while training: {busy['max_ms']:.1f} ms = {busy['max_ms'] / 50.0:.2f}x the 50 ms goal "
          f"({busy['max_ms'] / max(idle['max_ms'], 0.1):.1f}x the idle baseline)")


if __name__ == "__main__":
    main()
