"""Gallery speed on a 10,000-sample file: first screen, scrolling, filtering, memory.

Run from the repository root:

    .venv/bin/python bench/gui_gallery.py [--n 10000] [--size 64] [--pages 20] [--keep FILE.h5]

It writes a phantom-like MedSynth file (200 phantoms, each reused with a random gain,
flip and noise, so no two samples are the same bytes), opens it in the Gallery
offscreen and times each step until the visible thumbnails are painted. The first
screen is set against reading every image, which is what a gallery that loads eagerly
would do before showing anything.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.io.medsynth_h5 import open_file  # noqa: E402
from engine.io.medsynth_writer import SampleWriter  # noqa: E402
from medsynth_gui.gallery import Gallery  # noqa: E402

BASE = 200
BATCH = 500


def rss_mb() -> float:
    """Resident memory now (Linux), else the peak that getrusage reports."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 1024)


def write_file(path: Path, n: int, size: int) -> float:
    t0 = time.perf_counter()
    base = make_phantoms(BASE, size=size, seed=0)
    rng = np.random.default_rng(0)
    with SampleWriter(path, n, (1, size, size), masks=True, labels=True, kind="synthetic",
                      class_names=base.class_names, label_names=base.label_names,
                      normalisation={"modality": "MR", "lo": 0.0, "hi": 1000.0, "units": "a.u."},
                      overwrite=True) as w:
        for lo in range(0, n, BATCH):
            hi = min(lo + BATCH, n)
            pick = rng.integers(0, BASE, hi - lo)
            images = base.images[pick] * rng.uniform(0.85, 1.15, (hi - lo, 1, 1, 1)).astype(np.float32)
            images += rng.normal(0, 8, images.shape).astype(np.float32)
            masks = base.masks[pick]
            flip = rng.random(hi - lo) < 0.5
            images[flip] = images[flip][..., ::-1]
            masks[flip] = masks[flip][..., ::-1]
            w.append(images, np.arange(lo, hi), masks, base.labels[pick])
    return time.perf_counter() - t0


STALLS: list[float] = []  # the longest single event-loop turn of each wait: what a user feels as a freeze


def until_painted(app: QApplication, g: Gallery, timeout: float = 30.0) -> float:
    """Process events until every thumbnail in sight is loaded, then paint once; seconds taken."""
    t0 = time.perf_counter()
    worst = 0.0
    while time.perf_counter() - t0 < timeout:
        t = time.perf_counter()
        app.processEvents()
        worst = max(worst, time.perf_counter() - t)
        if g.visible_rows() and g.screen_loaded():
            break
    t = time.perf_counter()
    g.grab()  # the paint a user would see, with every visible thumbnail drawn
    STALLS.append(max(worst, time.perf_counter() - t))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--keep", type=Path, help="write the file here and keep it")
    args = ap.parse_args()

    app = QApplication.instance() or QApplication([])
    tmp = tempfile.TemporaryDirectory()
    path = args.keep or Path(tmp.name) / "gallery_bench.h5"
    wrote = write_file(path, args.n, args.size)
    print(f"file: {args.n} samples of {args.size}x{args.size} + masks, "
          f"{path.stat().st_size / 2**20:.1f} MB, written in {wrote:.1f} s")

    g = Gallery()
    g.resize(1280, 800)
    g.show()
    app.processEvents()
    rss0 = rss_mb()

    t0 = time.perf_counter()
    assert g.open_file(path), "the bench file did not open"
    opened = time.perf_counter() - t0
    first = opened + until_painted(app, g)
    shown = len(g.visible_rows())
    rss_first = rss_mb()

    bar = g.view.verticalScrollBar()
    times = []
    for _ in range(args.pages):
        bar.setValue(bar.value() + bar.pageStep())
        times.append(until_painted(app, g))
    paused = []
    for _ in range(5):  # a user who looks at each page for a moment gets the next one prefetched
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            app.processEvents()
        bar.setValue(bar.value() + bar.pageStep())
        paused.append(until_painted(app, g))
    cached_pages = []
    for _ in range(5):  # back over pages already loaded: the cost of painting alone
        bar.setValue(bar.value() - bar.pageStep())
        cached_pages.append(until_painted(app, g))
    bar.setValue(bar.maximum())
    to_end = until_painted(app, g)
    rss_scrolled = rss_mb()

    g.set_class_filter(2)
    filtered = until_painted(app, g)
    shown_filtered = g.count()
    g.set_class_filter(None)
    unfiltered = until_painted(app, g)

    big = []
    g.set_thumbnail_size(192)
    until_painted(app, g)
    for _ in range(args.pages):
        bar.setValue(bar.value() - bar.pageStep())
        big.append(until_painted(app, g))
    rss_big = rss_mb()

    t0 = time.perf_counter()
    with open_file(path) as f:
        f["images"][:]
    read_all = time.perf_counter() - t0

    per_page = np.array(times) * 1000
    print(f"first screen: {first * 1000:.0f} ms ({opened * 1000:.0f} ms to open, {shown} thumbnails) "
          f"vs {read_all * 1000:.0f} ms to read every image: {read_all / first:.0f}x sooner")
    print(f"scroll by a page (96 px, {args.pages} pages): mean {per_page.mean():.0f} ms, "
          f"max {per_page.max():.0f} ms; jump to the end {to_end * 1000:.0f} ms")
    print(f"scroll by a page after a 0.3 s look (prefetched): mean {np.mean(paused) * 1000:.0f} ms")
    print(f"scroll back over loaded pages: mean {np.mean(cached_pages) * 1000:.0f} ms (paint only); "
          f"longest event-loop turn in any step {max(STALLS) * 1000:.0f} ms")
    print(f"scroll by a page (192 px): mean {np.mean(big) * 1000:.0f} ms, max {np.max(big) * 1000:.0f} ms")
    print(f"class filter: {filtered * 1000:.0f} ms to show {shown_filtered} of {g.count()}; "
          f"back to all {unfiltered * 1000:.0f} ms")
    print(f"memory (RSS over the empty gallery): first screen +{rss_first - rss0:.1f} MB, "
          f"after {args.pages} pages and the end +{rss_scrolled - rss0:.1f} MB, "
          f"after 192 px pages +{rss_big - rss0:.1f} MB (cache holds {g.model.cached()} thumbnails)")
    g.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
