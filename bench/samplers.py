"""Sampler speed against fidelity: DDPM-1000 vs DDIM and DPM-Solver++ at 20 and 50 steps.

Run from the repository root:

    .venv/bin/python bench/samplers.py [--checkpoint RUN_DIR] [--n 64] [--train-steps 400]

Without a checkpoint (and none under engine/resources/demo/) it first trains the demo preset
on 512 phantoms in a temporary directory (about 2-3 minutes on 2 CPU cores). Every
sampler draws the same seeds 0..n-1 with balanced classes, in batches of the same
size, so the seconds per sample compare like for like. Fidelity is judged by the
phantom rules (engine.evaluation.metrics.phantom_fidelity), with n real phantoms as reference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.evaluation.metrics.phantom_fidelity import phantom_fidelity  # noqa: E402
from engine.training import checkpoints  # noqa: E402
from engine.training.run_dir import RunDir  # noqa: E402

DEMO_DIR = ROOT / "engine" / "resources" / "demo"
SETTINGS = [("ddpm", 1000), ("ddim", 20), ("ddim", 50), ("dpm", 20), ("dpm", 50)]
NUM_CLASSES = 4
TOLERANCE = 0.05


def find_demo_checkpoint() -> Path | None:
    """engine/resources/demo itself, or a run folder directly inside it, if it holds a checkpoint."""
    if not DEMO_DIR.is_dir():
        return None
    for place in [DEMO_DIR, *sorted(p for p in DEMO_DIR.iterdir() if p.is_dir())]:
        if checkpoints.is_checkpoint(place) or RunDir(place).latest() is not None:
            return place
    return None


def train_demo(run_dir: Path, steps: int) -> Path:
    from engine.config import load_preset
    from engine.jobs import Loss, Message, Requests
    from engine.training.train import TrainJob

    cfg = load_preset("demo")
    # The data are passed in memory; the path is only the label recorded in the run.
    cfg.data.path = "phantoms(512, size=32, seed=0)"
    data = make_phantoms(512, size=32, seed=0)

    def emit(event: object) -> None:
        if isinstance(event, Message):
            print(f"  {event.text}", flush=True)
        elif isinstance(event, Loss) and (event.step % 100 == 0 or event.step == steps):
            print(f"  step {event.step}/{steps}  loss {event.loss:.4f}", flush=True)

    t0 = time.perf_counter()
    TrainJob(cfg, run_dir, data=data, steps=steps).run(emit, Requests())
    print(f"  trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir


def generate(gen, name: str, steps: int, n: int, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """n samples (seeds 0..n-1, classes cycling 0..3) in fixed-size batches; returns the seconds too."""
    seeds = list(range(n))
    labels = [s % NUM_CLASSES for s in seeds]
    images, masks = [], []
    t0 = time.perf_counter()
    for lo in range(0, n, batch):
        im, m = gen.generate(seeds[lo:lo + batch], labels[lo:lo + batch], name, steps)
        images.append(im)
        masks.append(m)
    seconds = time.perf_counter() - t0
    return np.concatenate(images), np.concatenate(masks), np.array(labels), seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="run directory or checkpoint folder (default: engine/resources/demo/, "
                                         "else train one in a temp dir)")
    ap.add_argument("--n", type=int, default=64, help="samples per sampler setting (default 64)")
    ap.add_argument("--ddpm-n", type=int, default=None, help="samples for DDPM-1000 (default n//4: it is slow)")
    ap.add_argument("--batch", type=int, default=16, help="samples per generate() call, the same for all")
    ap.add_argument("--train-steps", type=int, default=400, help="training steps when training a model")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = ap.parse_args(argv)
    if args.n < NUM_CLASSES:
        ap.error(f"--n must be at least {NUM_CLASSES} so every class is drawn")
    ddpm_n = args.ddpm_n if args.ddpm_n is not None else max(NUM_CLASSES, args.n // 4)
    batch = max(1, min(args.batch, args.n))

    with tempfile.TemporaryDirectory(prefix="medsynth-bench-") as tmp:
        run = args.checkpoint or find_demo_checkpoint()
        if run is None:
            print(f"no checkpoint given or in {DEMO_DIR}: training the demo preset for "
                  f"{args.train_steps} steps in {tmp}", flush=True)
            run = train_demo(Path(tmp) / "run", args.train_steps)
        return bench(Path(run), args.n, ddpm_n, batch, args.device)


def bench(run: Path, n: int, ddpm_n: int, batch: int, device: str) -> int:
    import torch

    from engine.inference.generator import Generator

    torch.manual_seed(0)
    gen = Generator(run, device=device)
    if gen.num_classes != NUM_CLASSES or gen.cfg.mask_mode != "joint":
        print(f"{gen.ckpt} is not a class-conditional joint image+mask phantom model", file=sys.stderr)
        return 2
    print(f"checkpoint {gen.ckpt} on {gen.device}; n = {n} (DDPM-1000: {ddpm_n}), batch {batch}", flush=True)
    # The first call pays one-off costs (allocator, kernels, CUDA context) that are no sampler's fault.
    gen.generate([0], [0], "ddim", 2)

    real = make_phantoms(n, size=gen.cfg.model.image_size, seed=0)
    rows = [("real phantoms", n, None, phantom_fidelity(real.images, real.masks, real.labels))]
    for name, steps in SETTINGS:
        count = ddpm_n if name == "ddpm" else n
        images, masks, labels, seconds = generate(gen, name, steps, count, batch)
        rows.append((f"{name} x {steps}", count, seconds / count, phantom_fidelity(images, masks, labels)))
        print(f"  {name} x {steps}: {seconds:.1f} s for {count}", flush=True)

    print()
    head = f"{'sampler':<14}{'n':>5}{'s/sample':>10}{'class agr':>11}{'image agr':>11}{'lesion px':>11}"
    print(head)
    print("-" * len(head))
    for label, count, per, f in rows:
        per_text = "-" if per is None else f"{per:.3f}"
        print(f"{label:<14}{count:>5}{per_text:>10}{f['mask_class_agreement']:>11.3f}"
              f"{f['image_mask_agreement']:>11.3f}{100 * f['lesion_pixel_share']:>10.2f}%")
    print("-" * len(head))
    if ddpm_n != n:
        print(f"DDPM-1000 drew only the first {ddpm_n} seeds (--ddpm-n) to save time; its figures are noisier.")
    print("class agr: lesion count in the mask = class; image agr: lesion contrast sign = mask label "
          "(nan: no lesions).")

    ref = rows[1]
    ref_f, ref_per = ref[3], ref[2]
    keys = ("mask_class_agreement", "image_mask_agreement")

    def close(f: dict[str, float]) -> bool:
        # Better than DDPM counts as close; nan (no lesions at all) never does.
        return all(np.isfinite(f[k]) and f[k] >= ref_f[k] - TOLERANCE for k in keys)

    fast = [r for r in rows[2:] if close(r[3])]
    if fast:
        label, _, per, _ = min(fast, key=lambda r: r[2])
        print(f"fastest sampler within {TOLERANCE} of DDPM-1000 fidelity (both agreements): "
              f"{label} ({ref_per / per:.0f}x faster per sample)")
    else:
        print(f"no faster sampler within {TOLERANCE} of DDPM-1000 fidelity on both agreements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
