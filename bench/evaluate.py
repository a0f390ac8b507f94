"""Time a full `medsynth evaluate` of 1,000 synthetic 2D samples on the CPU, stage by stage.

The "synthetic" set is a fresh phantom draw, so every stage has real work to do: FID when
the Inception weights file is present (otherwise the stage is skipped and the script
says so), FRD and MMD, MS-SSIM diversity, nearest training images, label quality and
three downstream segmenters. Each stage is printed with its share of the total, which
is what to compare between runs on a noisy machine.
Run from the repository root: .venv/bin/python bench/evaluate.py [--n 1000] [--size 64] [--utility-steps 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.evaluation.evaluate import EvalSettings, EvaluateJob  # noqa: E402
from engine.evaluation.metrics.inception import find_weights  # noqa: E402
from engine.io.medsynth_writer import SampleWriter, write_image_set  # noqa: E402
from engine.jobs import Requests  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="synthetic samples")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--utility-steps", type=int, default=300)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    train = write_image_set(root / "train.h5", make_phantoms(args.n, size=args.size, seed=0))
    test = write_image_set(root / "test.h5", make_phantoms(args.n // 2, size=args.size, seed=10**6))
    synth = make_phantoms(args.n, size=args.size, seed=2 * 10**6)
    path = root / "synth.h5"
    with SampleWriter(path, len(synth), synth.images.shape[1:], masks=True, labels=True,
                      class_names=synth.class_names, label_names=synth.label_names,
                      normalisation={"modality": "MR", "lo": 0.0, "hi": 1000.0},
                      config={"data": {"path": str(train)}}) as w:
        w.append(synth.images, np.arange(len(synth)), synth.masks, synth.labels)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; data made in "
          f"{time.perf_counter() - t:.1f} s: {args.n} synthetic, {args.n} training, {args.n // 2} held-out "
          f"{args.size}x{args.size} phantoms")
    weights = find_weights()
    print(f"FID Inception weights: {weights}" if weights else "FID Inception weights: not present, FID stage skipped")
    t0 = time.perf_counter()
    result = EvaluateJob(path, real=test, settings=EvalSettings(utility_steps=args.utility_steps)).run(
        lambda ev: None, Requests())
    total = time.perf_counter() - t0
    timings = result["summary"]["timings_s"]
    for stage, seconds in timings.items():
        print(f"  {stage:14s} {seconds:8.1f} s  {100 * seconds / total:5.1f}%")
    print(f"full evaluation of {args.n} samples: {total:.1f} s ({1000 * total / args.n:.1f} ms per sample)")
    f = result["figures"]
    print("figures: " + ", ".join(f"{k} {f[k]:.3f}" for k in ("frd", "frd_real_vs_real", "ms_ssim_synth",
                                                             "ms_ssim_real", "nn_corr_max", "dice_real",
                                                             "dice_synth", "dice_ratio_synth_real") if k in f))


if __name__ == "__main__":
    main()
