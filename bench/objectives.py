"""Flow matching against v-prediction with the same training budget, sampled at 5-50 steps.

Run from the repository root:

    .venv/bin/python bench/objectives.py [--train-steps 400] [--n 64] [--ddpm-n 16] [--size 32]

Two models of the demo preset (same network, batch, steps, learning rate and seed; only `train.objective`
differs) train on the same phantoms. Each is sampled at 5, 10, 20 and 50 steps with its default sampler
(DPM-Solver++ for v, Euler for flow), plus DPM-Solver++ at 25 (today's default) and DDPM-1000 on the first
`--ddpm-n` seeds for v, and Heun for flow. Every setting draws the same seeds (classes cycling) in batches of the
same size. For each: network calls per sample, seconds per sample, the phantom rules (class agreement: lesion count
= class; image agreement: lesion contrast sign = mask label), the Fréchet Radiomics Distance against held-out
phantoms, and the downstream Dice ratio: a segmenter trained on the samples against one trained on as many real
phantoms, both scored on the held-out phantoms (engine.evaluation's utility networks, the real one trained once).
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

from bench.samplers import generate  # noqa: E402  (the same draw: seeds 0..n-1, classes cycling)
from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.evaluation.metrics.dice import dice_iou  # noqa: E402
from engine.evaluation.metrics.phantom_fidelity import phantom_fidelity  # noqa: E402
from engine.evaluation.metrics.radiomics import frd_from_features, radiomic_features  # noqa: E402
from engine.evaluation.metrics.segmenter import segment, train_segmenter  # noqa: E402
from engine.inference.generator import Generator  # noqa: E402
from engine.jobs import Loss, Requests  # noqa: E402
from engine.training.train import TrainJob  # noqa: E402

STEPS = (5, 10, 20, 50)
NUM_LABELS = 3  # background, bright and dark lesions


def train(run_dir: Path, objective: str, steps: int, size: int, n_train: int) -> Path:
    from engine.config import load_preset

    cfg = load_preset("demo")
    cfg.model.image_size = size
    cfg.train.objective = objective
    cfg.train.preview_every = 0
    cfg.data.path = f"phantoms({n_train}, size={size}, seed=0)"
    data = make_phantoms(n_train, size=size, seed=0)

    def emit(event: object) -> None:
        if isinstance(event, Loss) and (event.step % 100 == 0 or event.step == steps):
            print(f"  {objective} step {event.step}/{steps}  loss {event.loss:.4f}", flush=True)

    t0 = time.perf_counter()
    TrainJob(cfg, run_dir, data=data, steps=steps).run(emit, Requests())
    print(f"  {objective}: trained {steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir


def calls(name: str, steps: int) -> int:
    """Network calls per sample (a guided batch is one call): Heun evaluates twice a step but the last."""
    return 2 * steps - 1 if name == "heun" else steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=400, help="training steps of each model (the same budget)")
    ap.add_argument("--n-train", type=int, default=512, help="training phantoms")
    ap.add_argument("--size", type=int, default=32, help="phantom size in pixels")
    ap.add_argument("--n", type=int, default=64, help="samples per setting")
    ap.add_argument("--ddpm-n", type=int, default=16, help="samples for v-prediction's DDPM-1000 (slow)")
    ap.add_argument("--batch", type=int, default=32, help="samples per generate() call, the same for all")
    ap.add_argument("--seg-steps", type=int, default=200, help="training steps of each downstream segmenter")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medsynth-objectives-") as tmp:
        runs = {obj: train(Path(tmp) / obj, obj, args.train_steps, args.size, args.n_train)
                for obj in ("v_prediction", "flow")}
        return bench(runs, args)


def bench(runs: dict[str, Path], args: argparse.Namespace) -> int:
    import torch

    torch.manual_seed(0)
    n, batch = args.n, max(1, min(args.batch, args.n))
    held_out = make_phantoms(n, size=args.size, seed=5000)
    real_train = make_phantoms(n, size=args.size, seed=7000)
    lo, hi = float(held_out.images.min()), float(held_out.images.max())

    def unit(images: np.ndarray) -> np.ndarray:
        return np.clip((images - lo) / (hi - lo), 0, 1).astype(np.float32)

    real_features = radiomic_features(unit(held_out.images))
    t0 = time.perf_counter()
    real_seg = train_segmenter(unit(real_train.images), real_train.masks, NUM_LABELS, steps=args.seg_steps,
                               device="cpu")
    real_dice = dice_iou(segment(real_seg, unit(held_out.images)), held_out.masks, NUM_LABELS)["dice"]
    print(f"  real segmenter ({args.seg_steps} steps): Dice {real_dice:.3f} in {time.perf_counter() - t0:.0f} s",
          flush=True)

    def figures(images: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        f = phantom_fidelity(images, masks, labels)
        f["frd"] = frd_from_features(real_features, radiomic_features(unit(images)))
        seg = train_segmenter(unit(images), masks, NUM_LABELS, steps=args.seg_steps, device="cpu")
        f["dice_ratio"] = dice_iou(segment(seg, unit(held_out.images)), held_out.masks, NUM_LABELS)["dice"] / real_dice
        return f

    settings = [("v_prediction", "dpm", s) for s in (*STEPS[:3], 25, STEPS[3])] + \
               [("v_prediction", "ddpm", 1000)] + [("flow", "euler", s) for s in STEPS] + \
               [("flow", "heun", s) for s in (5, 10)]
    # A second real draw: what a perfect generator would score (no FRD is 0 for two different real sets).
    other = make_phantoms(n, size=args.size, seed=9000)
    rows = [("real phantoms", "-", 0, n, None, figures(other.images, other.masks, other.labels))]
    for obj, run in runs.items():
        gen = Generator(run, device=args.device)
        gen.generate([0], [0], None, 2)  # one-off costs (allocator, kernels) are no sampler's fault
        for o, name, steps in settings:
            if o != obj:
                continue
            count = args.ddpm_n if name == "ddpm" else n
            images, masks, labels, seconds = generate(gen, name, steps, count, min(batch, count))
            rows.append((obj, name, steps, count, seconds / count, figures(images, masks, labels)))
            print(f"  {obj} {name} x {steps}: {seconds:.1f} s for {count}", flush=True)

    print()
    head = f"{'objective':<14}{'sampler':>8}{'steps':>6}{'calls':>6}{'n':>5}{'s/sample':>10}{'class agr':>10}" \
           f"{'image agr':>10}{'FRD':>10}{'Dice ratio':>11}"
    print(head)
    print("-" * len(head))
    for obj, name, steps, count, per, f in rows:
        per_text = "-" if per is None else f"{per:.4f}"
        print(f"{obj:<14}{name:>8}{steps or '-':>6}{calls(name, steps) if steps else '-':>6}{count:>5}{per_text:>10}"
              f"{f['mask_class_agreement']:>10.3f}{f['image_mask_agreement']:>10.3f}{f['frd']:>10.4g}"
              f"{f['dice_ratio']:>11.3f}")
    print("-" * len(head))
    print("class agr: lesion count in the mask = class; image agr: lesion contrast sign = mask label; FRD vs "
          f"{n} held-out phantoms (lower is better); Dice ratio: segmenter trained on the samples / on {n} real "
          f"phantoms, both scored on the held-out ones. DDPM-1000 drew only {args.ddpm_n} samples.")

    def row(obj: str, name: str, steps: int) -> dict[str, float]:
        return next(r[5] for r in rows if r[:3] == (obj, name, steps))

    ref, flow10 = row("v_prediction", "dpm", 25), row("flow", "euler", 10)
    better = {"mask_class_agreement": 1, "image_mask_agreement": 1, "frd": -1, "dice_ratio": 1}
    verdict = [f"{k} {flow10[k]:.3f} vs {ref[k]:.3f} "
               f"({'at least as good' if sign * (flow10[k] - ref[k]) >= 0 else 'worse'})" for k, sign in better.items()]
    per = {(r[0], r[1], r[2]): r[4] for r in rows if r[4]}
    flow, dpm, ddpm = per["flow", "euler", 10], per["v_prediction", "dpm", 25], per["v_prediction", "ddpm", 1000]
    print(f"flow Euler x 10 vs v DPM-Solver++ x 25 (today's default): {'; '.join(verdict)}")
    print(f"  network calls 10 vs 25 ({25 / 10:.1f}x fewer) and vs DDPM-1000 ({1000 / 10:.0f}x fewer); seconds per "
          f"sample {flow:.4f} vs {dpm:.4f} ({dpm / flow:.1f}x) and vs DDPM-1000 {ddpm:.4f} ({ddpm / flow:.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
