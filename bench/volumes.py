"""Seconds per training step and per generated volume for the 3D presets.

On the CPU: `demo-3d` (32^3 phantoms). GPU presets are measured only when a CUDA GPU is
present; otherwise the script says "no GPU" and prints no figure for them.
Run from the repository root: .venv/bin/python bench/volumes.py [--steps 10] [--sampler-steps 25]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.config import load_preset, preset_names  # noqa: E402
from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.jobs import Progress  # noqa: E402
from engine.models import count_parameters  # noqa: E402
from engine.sample import Generator  # noqa: E402
from engine.train import TrainJob  # noqa: E402

WARMUP = 2


def measure(preset: str, steps: int, sampler_steps: int, device: str) -> None:
    cfg = load_preset(preset)
    size = cfg.model.image_size
    data = make_phantoms(8, size=size, dims=3)
    cfg.data.path = "phantoms"
    cfg.train.steps = steps + WARMUP
    cfg.train.checkpoint_every = 10**9
    cfg.train.device = device
    times: dict[int, float] = {}

    def emit(ev: object) -> None:
        if isinstance(ev, Progress) and ev.stage == "train":
            times[ev.done] = time.perf_counter()

    run = Path(tempfile.mkdtemp()) / "run"
    job = TrainJob(cfg, run, data=data)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    job.run(emit, lambda: False)
    per_step = (times[steps + WARMUP] - times[WARMUP]) / steps
    gen = Generator(run, device=device)
    t0 = time.perf_counter()
    gen.generate([0], [0] if gen.num_classes else None, "dpm", sampler_steps)
    per_volume = time.perf_counter() - t0
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda" else ""
    print(f"{preset:10s} {size}^3, {count_parameters(gen.model) / 1e6:.2f} M params, batch {cfg.train.batch}, "
          f"{device}: {per_step:.3f} s per training step, {per_volume:.2f} s per volume "
          f"(DPM-Solver++ x {sampler_steps}){peak}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sampler-steps", type=int, default=25)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    measure("demo-3d", args.steps, args.sampler_steps, "cpu")
    gpu_presets = [p for p in ("brain-64", "brain-128", "ct-128") if p in preset_names()]
    if not torch.cuda.is_available():
        print(f"no GPU: GPU presets ({', '.join(gpu_presets) or 'none defined yet'}) not measured")
        return
    for preset in ["demo-3d", *gpu_presets]:
        measure(preset, args.steps, args.sampler_steps, "cuda")


if __name__ == "__main__":
    main()
