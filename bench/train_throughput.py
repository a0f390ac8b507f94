"""Training throughput: MedSynth's TrainJob against a bare PyTorch loop on the same model and data.

Run from the repository root:

    .venv/bin/python bench/train_throughput.py [--preset demo] [--steps N] [--batch B]

A preset without masks (medmnist-28) trains on a MedMNIST-shaped .npz written by the
bench itself: (N, 28, 28) uint8 images and (N, 1) class labels, read by the engine's
own npz reader; the others train on the phantoms.

Both loops run in this one process, alternated (bare, engine, bare, engine, ...),
because on a small shared machine the same loop can vary 2x between runs; only
figures taken side by side on the same machine are comparable. The last line is
the engine/bare throughput ratio, which the engine should keep at 0.95 or above.

The share of the machine's matrix-multiply limit puts the absolute figures in
context: achieved GFLOP/s (images/s times the counted FLOPs per training image)
over the rate of a large float32 torch.mm on the same device.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The script lives in bench/, so a plain `python bench/train_throughput.py` would not see `engine`.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from engine.config import RunConfig, batch_for, load_preset  # noqa: E402
from engine.data.dataset import ImageSet  # noqa: E402
from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.data.prepare import TrainingTensors, fit_normalisation, to_tensors  # noqa: E402
from engine.io.sources.npz import read_npz  # noqa: E402
from engine.jobs import Event, Progress, Requests  # noqa: E402
from engine.models.diffusion import noise_levels  # noqa: E402
from engine.models.networks import build_model  # noqa: E402
from engine.runtime.devices import pick_device  # noqa: E402
from engine.runtime.threads import use_free_cores  # noqa: E402
from engine.settings import Device  # noqa: E402
from engine.training.run_dir import RunDir  # noqa: E402
from engine.training.steps import Batch, noised_loss  # noqa: E402
from engine.training.train import TrainJob, complete_model_config, mixed_precision  # noqa: E402


def sync(device: torch.device) -> None:
    # CUDA work is asynchronous: without this a timer measures kernel launches, not kernels.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_config(preset: str, steps: int, batch: int, device: str) -> RunConfig:
    cfg = load_preset(preset)
    cfg.train.steps = steps
    cfg.train.batch = batch
    cfg.train.cpu_batch = 0  # the batch above, on every device
    cfg.train.device = device
    # Checkpoints and previews are I/O and sampling, not training; the final save still
    # happens, but after the last timed Progress event.
    cfg.train.checkpoint_every = steps + 1
    cfg.train.preview_every = 0
    return cfg


def resolved(cfg: RunConfig, data: ImageSet) -> tuple[RunConfig, TrainingTensors]:
    """The config as TrainJob completes it, and the very tensors it trains on."""
    cfg = copy.deepcopy(cfg)
    complete_model_config(cfg, data)
    norm = fit_normalisation(data, cfg.data.modality)
    tensors = to_tensors(data, norm, cfg.model.image_size, cfg.mask_mode, cfg.facts.mask_labels,
                         cfg.facts.num_classes > 0)
    return cfg, tensors


def autocast_for(cfg: RunConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    # Match the engine's precision choice, or a GPU comparison would be bf16 against fp32.
    mp = mixed_precision(cfg.train.mixed_precision, device.type)
    if mp == "no":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if mp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def bench_data(cfg: RunConfig, n: int, folder: Path) -> ImageSet:
    """Phantoms for presets with masks; a MedMNIST-like .npz (8 classes of smooth blobs) otherwise."""
    if cfg.mask_mode != "none":
        return make_phantoms(n, size=cfg.model.image_size, seed=0)
    rng = np.random.default_rng(0)
    size = cfg.model.image_size
    yy, xx = np.mgrid[:size, :size] / size
    labels = rng.integers(0, 8, (n, 1))
    centres = rng.uniform(0.25, 0.75, (n, 2, 1, 1))
    widths = (0.05 + 0.02 * labels[:, 0])[:, None, None]
    blobs = np.exp(-((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2) / widths)
    images = np.clip(255 * blobs + rng.normal(0, 8, blobs.shape), 0, 255).astype(np.uint8)
    path = folder / "medmnist_like.npz"
    np.savez(path, train_images=images, train_labels=labels.astype(np.uint8))
    return read_npz(path)


@dataclass
class Rate:
    images_per_s: float  # wall clock: what a user waits for
    # Process CPU time: on a machine shared with other jobs it moves far less than wall time, so it
    # tells engine overhead from the neighbours' load. Only with one torch thread, though: with more,
    # threads waiting at a barrier for a descheduled sibling spin and bill CPU time too. CPU only.
    images_per_cpu_s: float


def rate(images: int, wall: float, cpu: float) -> Rate:
    return Rate(images / wall, images / max(cpu, 1e-9))


def bare_loop(cfg: RunConfig, data: ImageSet, warmup: int, steps: int, device: torch.device) -> Rate:
    """Throughput of the minimum training step: sample, noise, forward, loss, backward, AdamW.

    The noising, forward and loss are the engine's own `noised_loss`; what the bare loop leaves out is
    the engine's per-step CPU generator, flips, class dropout, EMA, gradient clipping and logging."""
    cfg, tensors = resolved(cfg, data)
    tc = cfg.train
    x_all = tensors.x.to(device)
    labels_all = None if tensors.labels is None else tensors.labels.to(device)
    cond_all = None if tensors.cond is None else tensors.cond.to(device)
    torch.manual_seed(tc.seed)
    channels_last = device.type == "cuda" and x_all.dim() == 4
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    alphas = noise_levels(tc, x_all.shape[2:]).to(device)
    autocast = autocast_for(cfg, device)
    # One generator on the device: the cheapest way to draw the same kinds of random numbers.
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    n, b = x_all.shape[0], tc.batch
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
        idx = torch.randint(n, (b,), generator=gen, device=device)
        x0 = x_all[idx]
        batch = Batch(x0, torch.randn(x0.shape, generator=gen, device=device),
                      torch.randint(0, tc.num_train_timesteps, (b,), generator=gen, device=device),
                      None if cond_all is None else cond_all[idx], None if labels_all is None else labels_all[idx])
        loss = noised_loss(model, batch, alphas, tc, autocast, channels_last)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return rate(steps * b, time.perf_counter() - t0, time.process_time() - c0)


@dataclass
class EngineRate(Rate):
    logged_images_per_s: float | None = None  # loss.jsonl's own figure, as a cross-check


def engine_run(cfg: RunConfig, data: ImageSet, warmup: int, steps: int, device: torch.device,
               threads: int) -> EngineRate:
    """images/s of TrainJob itself, timed between Progress events so setup and the final save are out."""
    cfg = copy.deepcopy(cfg)
    cfg.train.steps = warmup + steps
    cfg.train.checkpoint_every = warmup + steps + 1
    marks: dict[int, tuple[float, float]] = {}

    def emit(event: Event) -> None:
        if isinstance(event, Progress) and event.stage == "train" and event.done in (warmup, warmup + steps):
            sync(device)
            marks[event.done] = (time.perf_counter(), time.process_time())
            # A library that quietly changed the thread count would make the comparison meaningless.
            if torch.get_num_threads() != threads:
                raise RuntimeError(f"torch threads changed to {torch.get_num_threads()} inside TrainJob")

    with tempfile.TemporaryDirectory(prefix="medsynth-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        TrainJob(cfg, run_dir, data=data).run(emit, Requests())
        rows = RunDir(run_dir).loss_rows()
    # The first logged window holds the warm-up steps; the rest are steady state.
    steady = [r["images_per_s"] for r in rows[1:]]
    (t0, c0), (t1, c1) = marks[warmup], marks[warmup + steps]
    r = rate(steps * cfg.train.batch, t1 - t0, c1 - c0)
    return EngineRate(r.images_per_s, r.images_per_cpu_s, statistics.median(steady) if steady else None)


def flops_per_image(cfg: RunConfig, data: ImageSet, device: torch.device) -> float:
    """Counted FLOPs of one forward and backward pass, per image of the training batch."""
    cfg, tensors = resolved(cfg, data)
    b = cfg.train.batch
    model = build_model(cfg).to(device).train()
    idx = torch.arange(b) % tensors.x.shape[0]
    inp = tensors.x[idx]
    if tensors.cond is not None:
        inp = torch.cat([inp, tensors.cond[idx]], dim=1)
    labels = None if tensors.labels is None else tensors.labels[idx].to(device)
    t = torch.randint(0, cfg.train.num_train_timesteps, (b,), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        pred = model(inp.to(device), t, class_labels=labels).sample
        pred.float().square().mean().backward()
    return counter.get_total_flops() / b


def gemm_rate(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Best GFLOP/s of an n x n torch.mm: roughly the most this device does for dense math.

    Best of several, as for the loops: with fewer, a busy neighbour can push the measured
    limit below what the training loops reached at their best, and the share above 100%.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # first call pays for library initialisation
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per repetition")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed window")
    ap.add_argument("--batch", type=int, default=None, help="default: the preset's batch on this device")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions of each loop, alternated")
    ap.add_argument("--images", type=int, default=256, help="images in the training set")
    ap.add_argument("--device", default=Device.AUTO.value, choices=Device.values())
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the engine's choice, the cores other processes leave free)")
    args = ap.parse_args(argv)

    # One count for both loops: the engine's own choice from the machine's load (or --threads), fixed
    # through the environment so that TrainJob keeps it.
    os.environ["MEDSYNTH_THREADS"] = str(args.threads or use_free_cores())
    threads = use_free_cores()
    device = torch.device(pick_device(args.device))
    base = load_preset(args.preset)
    batch = args.batch or batch_for(base.train, device.type)
    cfg = make_config(args.preset, args.warmup + args.steps, batch, args.device)
    with tempfile.TemporaryDirectory(prefix="medsynth-bench-data-") as tmp:
        data = bench_data(cfg, args.images, Path(tmp))

    load_before = os.getloadavg()[0]
    # First, so that one-time library set-up (oneDNN/BLAS kernels, allocator growth) falls on
    # neither loop; it would otherwise count against whichever runs first.
    fpi = flops_per_image(cfg, data, device)
    sgemm = gemm_rate(device, torch.float32)
    bare: list[Rate] = []
    engine: list[EngineRate] = []
    for rep in range(args.repeats):
        bare.append(bare_loop(cfg, data, args.warmup, args.steps, device))
        engine.append(engine_run(cfg, data, args.warmup, args.steps, device, threads))
        print(f"repetition {rep + 1}/{args.repeats}: bare {bare[-1].images_per_s:.1f} images/s, "
              f"engine {engine[-1].images_per_s:.1f} images/s", flush=True)
    load_after = os.getloadavg()[0]

    # Again after, keeping the best: one busy moment must not set the machine's limit.
    sgemm = max(sgemm, gemm_rate(device, torch.float32))
    mp = mixed_precision(cfg.train.mixed_precision, device.type)
    # Under autocast the GPU's limit is the half-precision rate, not sgemm.
    half = gemm_rate(device, torch.bfloat16 if mp == "bf16" else torch.float16) if mp != "no" else None

    def row(name: str, values: list[float], fmt: str = "12.1f") -> None:
        print(f"{name:32s}{max(values):{fmt}}{statistics.median(values):{fmt}}")

    bare_best = max(r.images_per_s for r in bare)
    engine_best = max(r.images_per_s for r in engine)
    logged = [r.logged_images_per_s for r in engine if r.logged_images_per_s is not None]
    cores = os.cpu_count() or 1

    print()
    print(f"preset {args.preset}, {cfg.model.image_size} px, batch {batch}, device {device}, "
          f"torch threads {threads}, precision {mp}, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{args.repeats} repetitions each")
    print(f"load average {load_before:.1f} before, {load_after:.1f} after, on {cores} CPU cores")
    if load_before > 0.5 * cores:
        # Other processes were already running: wall-clock figures are theirs as much as ours.
        print("warning: the machine was busy before the benchmark started: wall-clock rows carry that load, "
              "the CPU-time rows much less so (least with --threads 1)")
    print(f"{'':32s}{'best':>12s}{'median':>12s}")
    row("bare loop images/s", [r.images_per_s for r in bare])
    row("engine images/s", [r.images_per_s for r in engine])
    if logged:
        row("engine images/s (loss.jsonl)", logged)
    if device.type == "cpu":
        row("bare loop images/CPU-s", [r.images_per_cpu_s for r in bare])
        row("engine images/CPU-s", [r.images_per_cpu_s for r in engine])
    print(f"{'GFLOP per training image':32s}{fpi / 1e9:12.3f}")
    print(f"{'sgemm GFLOP/s (2048 fp32)':32s}{sgemm:12.1f}")
    limit = sgemm
    if half is not None:
        print(f"{f'{mp} gemm GFLOP/s (2048)':32s}{half:12.1f}")
        limit = half
    print(f"{'':32s}{'GFLOP/s':>12s}{'share':>12s}")
    for name, ips in (("bare loop (best)", bare_best), ("engine (best)", engine_best)):
        achieved = ips * fpi / 1e9
        print(f"{name:32s}{achieved:12.1f}{achieved / limit:12.1%}")
    if device.type == "cpu":
        cpu_ratio = max(r.images_per_cpu_s for r in engine) / max(r.images_per_cpu_s for r in bare)
        print(f"engine/bare CPU-time ratio: {cpu_ratio:.2f} (engine overhead {(1 / cpu_ratio - 1) * 100:.1f}%)")
    ratio = engine_best / bare_best
    # Overhead as extra time per image: 1/ratio - 1, so 0.97 reads as 3.1%.
    print(f"engine/bare throughput ratio: {ratio:.2f} (engine overhead {(1 / ratio - 1) * 100:.1f}%)")
    print(f"seconds per step at batch {batch}: engine {batch / engine_best:.3f}, bare loop {batch / bare_best:.3f}, "
          f"engine/bare {bare_best / engine_best:.2f}")

if __name__ == "__main__":
    main()
