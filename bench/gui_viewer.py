"""Slice-update speed of the viewer on a 256^3 float32 volume with a label overlay.

Run from the repository root:

    .venv/bin/python bench/gui_viewer.py [--size 256] [--updates 200]

Each update moves the model's cursor, then lets Qt process events so the panes
re-render and repaint, and is timed as a whole. The four kinds below take turns,
update by update, so that other work on the machine weighs on all of them alike. Two kinds of move: a scroll
(one slice index changes, as with the mouse wheel, so one pane gets a new
slice and the others move their crosshair) and a click (all three indices
change, so every pane gets a new slice). Each is timed twice: with
processEvents alone, and with a full grab of the widget as well, which forces
every pane to paint whatever the platform would skip. Figures are milliseconds
per update against the 10 ms goal, all from one run on one machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from medsynth_gui.viewer import Viewer  # noqa: E402

GOAL_MS = 10.0


def phantom(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy ellipsoid body with two labelled blobs: enough structure to render honestly."""
    rng = np.random.default_rng(seed)
    ax = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y, z = ax[:, None, None], ax[None, :, None], ax[None, None, :]
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 + (z / 0.9) ** 2 <= 1.0
    vol = rng.normal(0.0, 20.0, (size,) * 3).astype(np.float32)
    vol += np.where(body, np.float32(400.0), np.float32(0.0))
    mask = np.zeros((size,) * 3, np.uint8)
    mask[((x - 0.3) ** 2 + y**2 + z**2) <= 0.04] = 1
    mask[((x + 0.3) ** 2 + (y - 0.2) ** 2 + z**2) <= 0.02] = 2
    return vol, mask


def time_update(app: QApplication, viewer: Viewer, cursor: tuple[int, int, int], grab: bool) -> float:
    """Milliseconds from moving the cursor to the panes having painted it."""
    t0 = time.perf_counter()
    viewer.state.cursor = cursor
    app.processEvents()
    if grab:
        viewer.grab()
    return (time.perf_counter() - t0) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=560)
    args = parser.parse_args()

    app = QApplication.instance() or QApplication([])
    t0 = time.perf_counter()
    vol, mask = phantom(args.size)
    viewer = Viewer()
    viewer.resize(args.width, args.height)
    viewer.show()
    viewer.set_image(vol, mask=mask, label_names={1: "lesion A", 2: "lesion B"}, title="bench")
    for _ in range(5):
        app.processEvents()
    load_s = time.perf_counter() - t0
    panes = viewer.slice_views
    sizes = ", ".join(f"{p.viewport().width()}x{p.viewport().height()}" for p in panes)
    print(f"platform {app.platformName()}; volume {vol.shape} float32 + uint8 mask; panes {sizes} px; "
          f"set up and load {load_s:.2f} s")
    # Other work on the machine shows up as p95 spikes; say how busy it was.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start")

    n, size = args.updates, args.size
    rng = np.random.default_rng(1)
    sweep = np.abs((np.arange(4 * n) % (2 * size - 2)) - (size - 1))  # up and down through the volume

    def scroll(cursor: tuple[int, ...], step: int) -> tuple[int, int, int]:
        return (cursor[0], cursor[1], int(sweep[step]))  # the wheel: only the axial index moves

    def click(cursor: tuple[int, ...], step: int) -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(0, size, 3))  # a click elsewhere: all three move

    kinds = [("scroll, processEvents", scroll, False), ("scroll, + grab", scroll, True),
             ("click, processEvents", click, False), ("click, + grab", click, True)]
    for step in range(20):  # warm caches and buffers
        time_update(app, viewer, click(viewer.state.cursor, step), grab=True)
    # Round robin, so a burst of other work on the machine falls on every kind alike.
    times: dict[str, list[float]] = {label: [] for label, _, _ in kinds}
    for step in range(n):
        for turn, (label, move, grab) in enumerate(kinds):
            times[label].append(time_update(app, viewer, move(viewer.state.cursor, 4 * step + turn), grab))
    # Honest only if the last slice really reached the screen: rendered, not just queued.
    assert all(not p.image_item._renderRequired for p in panes), "processEvents did not render the slice"
    rows = []
    for label, _, _ in kinds:
        ms = np.array(times[label])
        rows.append((label, ms.mean(), np.median(ms), np.percentile(ms, 95)))

    head = (f"{'update (' + str(n) + ' each)':<24}{'mean ms':>9}{'median':>8}{'p95 ms':>9}"
            f"{'mean/10ms':>11}{'p95/10ms':>10}")
    print(head)
    print("-" * len(head))
    for label, mean, median, p95 in rows:
        print(f"{label:<24}{mean:>9.2f}{median:>8.2f}{p95:>9.2f}{mean / GOAL_MS:>11.2f}{p95 / GOAL_MS:>10.2f}")
    print("-" * len(head))
    worst = max(row[3] for row in rows)
    verdict = "meets" if worst < GOAL_MS else "misses"
    print(f"worst p95 {worst:.2f} ms: {verdict} the {GOAL_MS:.0f} ms goal ({worst / GOAL_MS:.2f}x)")
    print(f"machine load average {os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.1f} at end")
    viewer.close()


if __name__ == "__main__":
    main()
