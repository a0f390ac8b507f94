"""Seconds per training step and per generated volume for the 3D presets, and the 2D latent row.

On the CPU: `demo-3d` (32^3 phantoms). GPU presets are measured only when a CUDA GPU is
present; otherwise the script says "no GPU" and prints no figure for them.
The 2D latent row: `cxr-256` (an autoencoder to 4 x 32^2, then its UNet on the latent) against the same
UNet in pixel space at the same image size, each in a process of its own so its peak RSS is its own
(and its CUDA peak on a GPU). The pixel-space UNet keeps attention at its coarsest level only, as the
pixel presets do: attention over 128^2 positions would not fit any machine.
Run from the repository root: .venv/bin/python bench/volumes.py [--steps 10] [--sampler-steps 25]
    [--only-2d] [--size 256] [--batch 2]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.config import load_preset, preset_names  # noqa: E402
from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.inference.generator import Generator  # noqa: E402
from engine.jobs import Progress, Requests  # noqa: E402
from engine.models.networks import count_parameters, diffusion_shape  # noqa: E402
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


def measure_2d(space: str, steps: int, sampler_steps: int, device: str, size: int, batch: int) -> None:
    """One row of the 2D latent comparison: cxr-256 in `space` ("latent" or "pixel") at `size` px."""
    cfg = load_preset("cxr-256")
    cfg.model.image_size = size
    if space == "pixel":
        cfg.autoencoder.enabled = False
        cfg.model.attention_levels = [False] * (len(cfg.model.block_out_channels) - 1) + [True]
    cfg.data.path = "phantoms"
    cfg.train.batch = cfg.train.cpu_batch = cfg.autoencoder.batch = batch
    cfg.train.steps = cfg.autoencoder.steps = steps + WARMUP
    cfg.train.checkpoint_every = cfg.autoencoder.checkpoint_every = 10**9
    cfg.train.preview_every = 0
    cfg.train.device = device
    # Both rows alike, as the memory estimate advises for pixel space at 256^2 (~25 GiB at batch 4 without).
    cfg.train.gradient_checkpointing = True
    times: dict[str, dict[int, float]] = {"train": {}, "autoencoder": {}}

    def emit(ev: object) -> None:
        if isinstance(ev, Progress) and ev.stage in times:
            times[ev.stage][ev.done] = time.perf_counter()

    def per_step(stage: str) -> float:
        return (times[stage][steps + WARMUP] - times[stage][WARMUP]) / steps

    run = Path(tempfile.mkdtemp()) / "run"
    t0 = time.perf_counter()
    TrainJob(cfg, run, data=make_phantoms(max(2 * batch, 10), size=size)).run(emit, Requests())
    train_wall = time.perf_counter() - t0
    gen = Generator(run, device=device)
    gen.generate([0], [0], "dpm", 2)  # warm-up: the first call pays for allocations
    t0 = time.perf_counter()
    gen.generate([1], [1], "dpm", sampler_steps)
    per_sample = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    cuda = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda" else ""
    stage1 = f"autoencoder {per_step('autoencoder'):.3f} s/step, " if space == "latent" else ""
    shape = "x".join(map(str, diffusion_shape(gen.cfg)))
    print(f"cxr-256 {space:6s} {size}^2 (network on {shape}), {count_parameters(gen.model) / 1e6:.2f} M params, "
          f"batch {batch} (gradient checkpointing), {device}: {stage1}diffusion {per_step('train'):.3f} s/step, "
          f"{per_sample:.2f} s per sample (DPM-Solver++ x {sampler_steps}), peak RSS {rss:.2f} GiB{cuda}; "
          f"whole run {train_wall:.0f} s",
          flush=True)


def rows_2d(args: argparse.Namespace, device: str) -> None:
    """The 2D latent row, latent then pixel space, each in a fresh process so each peak is its own."""
    for space in ("latent", "pixel"):
        subprocess.run([sys.executable, __file__, "--row-2d", space, "--device", device, "--steps", str(args.steps),
                        "--sampler-steps", str(args.sampler_steps), "--size", str(args.size),
                        "--batch", str(args.batch)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sampler-steps", type=int, default=25)
    ap.add_argument("--only-2d", action="store_true", help="only the 2D latent row (cxr-256 latent vs pixel)")
    ap.add_argument("--size", type=int, default=256, help="image size of the 2D latent row")
    ap.add_argument("--batch", type=int, default=2, help="batch of both stages in the 2D latent row")
    ap.add_argument("--row-2d", choices=("latent", "pixel"), help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row_2d:
        measure_2d(args.row_2d, args.steps, args.sampler_steps, args.device, args.size, args.batch)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if args.only_2d:
        rows_2d(args, "cpu")
        if torch.cuda.is_available():
            rows_2d(args, "cuda")
        return
    measure("demo-3d", args.steps, args.sampler_steps, "cpu")
    measure("demo-3d", args.steps, args.sampler_steps, "cpu", latent=True)
    rows_2d(args, "cpu")
    gpu_presets = [p for p in ("brain-64", "brain-128", "ct-128") if p in preset_names()]
    if not torch.cuda.is_available():
        print(f"no GPU: GPU presets ({', '.join(gpu_presets) or 'none defined yet'}) not measured")
        return
    for preset in ["demo-3d", *gpu_presets]:
        measure(preset, args.steps, args.sampler_steps, "cuda")
    rows_2d(args, "cuda")


if __name__ == "__main__":
    main()
