"""Start-up time, source install vs the packaged app, measured in one run: seconds to `--help` and from launch to
the first window (offscreen, `medsynth gui --check`), the median of a few launches each.

    .venv/bin/python bench/startup.py [--app dist/medsynth/medsynth] [--runs 3]

Without a built app (dist/medsynth/medsynth) it builds one first with packaging/build.sh (minutes; no archive).
Each launch runs with a fresh HOME, so no settings or caches of an earlier launch help it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(argv: list[str], home: Path) -> tuple[float, float | None, str]:
    """Wall seconds until the process ends, the app's own launch → window seconds (gui --check), its output."""
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr[-500:]}")
    shown = re.search(r"window shown \(([\d.]+) s after launch\)", r.stdout)
    return wall, float(shown[1]) if shown else None, r.stdout


def measure(exe: Path, runs: int) -> dict[str, float]:
    helps, windows = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as home:
            helps.append(launch([str(exe), "--help"], Path(home))[0])
        with tempfile.TemporaryDirectory() as home:
            _, shown, out = launch([str(exe), "gui", "--check"], Path(home))
            if shown is None:
                raise SystemExit(f"{exe} gui --check printed no time: {out[-300:]}")
            windows.append(shown)
    return {"help": statistics.median(helps), "window": statistics.median(windows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--app", default=str(ROOT / "dist" / "medsynth" / "medsynth"), help="the packaged launcher")
    ap.add_argument("--source", default=str(ROOT / ".venv" / "bin" / "medsynth"), help="the source install's")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    app = Path(args.app).resolve()
    if not app.is_file():
        print(f"no packaged app at {app}; building it (packaging/build.sh)", file=sys.stderr)
        env = dict(os.environ, NO_ARCHIVE="1", DIST=str(app.parent.parent))
        subprocess.run(["bash", str(ROOT / "packaging" / "build.sh")], env=env, check=True)
    # Warm the page cache for both, so neither pays for a first read from disk the other does not.
    source_exe = Path(args.source).resolve()
    for exe in (source_exe, app):
        with tempfile.TemporaryDirectory() as home:
            launch([str(exe), "--help"], Path(home))
    source, frozen = measure(source_exe, args.runs), measure(app, args.runs)
    print(f"start-up, median of {args.runs} launches, fresh HOME each ({os.cpu_count()} CPUs)")
    print(f"{'':24}{'source install':>16}{'packaged app':>16}{'packaged / source':>20}")
    for key, label in (("help", "--help (s)"), ("window", "launch -> window (s)")):
        print(f"{label:24}{source[key]:16.2f}{frozen[key]:16.2f}{frozen[key] / source[key]:20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
