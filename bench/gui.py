"""The app's three figures in one go: slice change, responsiveness while training, gallery first screen.

Each part is its own script (bench/gui_viewer.py, bench/gui_responsiveness.py,
bench/gui_gallery.py) so it can be run alone; this runs them one after another.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for name in ("gui_viewer.py", "gui_responsiveness.py", "gui_gallery.py"):
        print(f"\n== {name} ==", flush=True)
        sys.argv = [name]
        runpy.run_path(str(HERE / name), run_name="__main__")
