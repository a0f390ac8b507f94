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
from engine.inference.sample import Generator  # noqa: E402
from engine.jobs import Progress, Requests  # noqa: E402
from engine.models.networks import count_parameters  # noqa: E402
from engine.runtime import memory  # noqa: E402
from engine.training.train import TrainJob  # noqa: E402

WARMUP = 2


def measure(preset: str, steps: int, sampler_steps: int, device: str, latent: bool = False) -> None:
    cfg = load_preset(preset)
    if latent:
        cfg.autoencoder.enabled = True  # the preset's network on an autoencoder's latent
    size = cfg.model.image_size
    data = make_phantoms(8, size=size, dims=3)
    cfg.data.path = "phantoms"
    cfg.train.steps = steps + WARMUP
    cfg.autoencoder.steps = steps + WARMUP
    cfg.train.checkpoint_every = cfg.autoencoder.checkpoint_every = 10**9
    cfg.train.device = device
    times: dict[str, dict[int, float]] = {"train": {}, "autoencoder": {}}

    def emit(ev: object) -> None:
        if isinstance(ev, Progress) and ev.stage in times:
            times[ev.stage][ev.done] = time.perf_counter()

    run = Path(tempfile.mkdtemp()) / "run"
    job = TrainJob(cfg, run, data=data)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    job.run(emit, Requests())
    train_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0

    def per_step(stage: str) -> float:
        return (times[stage][steps + WARMUP] - times[stage][WARMUP]) / steps

    gen = Generator(run, device=device)
    t0 = time.perf_counter()
    gen.generate([0], [0] if gen.num_classes else None, "dpm", sampler_steps)
    per_volume = time.perf_counter() - t0
    estimate = max(s.total_bytes for s in memory.estimate(gen.cfg, device)) / 2**30
    name = preset + (" (latent)" if latent and not preset.endswith("128") else "")
    stage1 = f"autoencoder {per_step('autoencoder'):.3f} s/step, " if cfg.autoencoder.enabled else ""
    peak = (f", peak GPU memory {train_peak:.2f} GiB (estimate {estimate:.2f} GiB)" if device == "cuda"
            else f", memory estimate {estimate:.2f} GiB")
    print(f"{name:18s} {size}^3, {count_parameters(gen.model) / 1e6:.2f} M params, batch {cfg.train.batch}, "
          f"{device}: {stage1}diffusion {per_step('train'):.3f} s/step, {per_volume:.2f} s per volume "
          f"(DPM-Solver++ x {sampler_steps}){peak}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sampler-steps", type=int, default=25)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    measure("demo-3d", args.steps, args.sampler_steps, "cpu")
    measure("demo-3d", args.steps, args.sampler_steps, "cpu", latent=True)
    gpu_presets = [p for p in ("brain-64", "brain-128", "ct-128") if p in preset_names()]
    if not torch.cuda.is_available():
        print(f"no GPU: GPU presets ({', '.join(gpu_presets) or 'none defined yet'}) not measured")
        return
    for preset in ["demo-3d", *gpu_presets]:
        measure(preset, args.steps, args.sampler_steps, "cuda")


if __name__ == "__main__":
    main()
