"""Scaling: training images per second and samples per second with 1..N processes, and the efficiency.

Run from the repository root:

    .venv/bin/python bench/scaling.py [--processes 1 2] [--device cpu|cuda] [--steps 40] [--samples 128]

Each configuration runs the real command under the launcher users run (`python -m torch.distributed.run
--nproc_per_node P -m medsynth train|sample ...`; gloo on a CPU, NCCL on GPUs), one process count after the other in
this one run, so the figures compare on the same machine:

- training: images per second of the whole run, from its loss log (rows carry the seconds since the loop began; the
  first logged rows are warm-up and left out): (steps between the rows) × batch per process × P / seconds;
- sampling: samples per second as `medsynth sample` reports it (the sampling loop, model loading left out);
- efficiency: throughput at P / (P × throughput at 1). On this 2-core machine two processes share the cores one
  process already uses, so a gain is not expected there; on P GPUs each process has its own.

The process counts are run in turn `--repeats` times (1, 2, 1, 2, ...) and each keeps its best figure: on a shared
machine another user's burst otherwise lands on one count and not the other.

Measured on the 2-core development machine, quiet (2026-12-04, defaults, best of 2): training 149 img/s on 1 process,
178 on 2 (efficiency 0.60); sampling 11.0 samples/s on 1, 12.6 on 2 (0.57). No GPU figures yet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def launch(processes: int, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "medsynth", *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // processes)))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return r, time.perf_counter() - t0


def training_rate(run: Path, batch: int, processes: int) -> float:
    rows = [json.loads(x) for x in (run / "loss.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time" in r]
    first, last = rows[len(rows) // 4], rows[-1]  # the first quarter is warm-up
    return (last["step"] - first["step"]) * batch * processes / max(last["time"] - first["time"], 1e-9)


def sampling_rate(out: str, n: int, wall: float) -> tuple[float, str]:
    found = re.search(r"wrote (\d+) samples to .* in ([\d.]+) s", out)
    if found and float(found.group(2)) > 0:
        return int(found.group(1)) / float(found.group(2)), "sampling loop"
    return n / wall, "whole command"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default="demo")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=16, help="images per process per step")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--sampler-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    from engine.data.phantoms import make_phantoms
    from engine.io.medsynth_writer import write_image_set

    best: dict[int, tuple[float, float, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_image_set(Path(tmp) / "phantoms.h5", make_phantoms(128, size=32))
        for attempt in range(args.repeats):
            for n in args.processes:
                run = Path(tmp) / f"run{n}-{attempt}"
                launch(n, "train", str(data), "--out", str(run), "--preset", args.preset, "--steps", str(args.steps),
                       "--batch", str(args.batch), "--device", args.device)
                train = training_rate(run, args.batch, n)
                out = Path(tmp) / f"s{n}-{attempt}.h5"
                r, wall = launch(n, "sample", str(run), "--num-samples", str(args.samples), "--out", str(out),
                                 "--steps", str(args.sampler_steps), "--device", args.device, "--batch", "32")
                sample, how = sampling_rate(r.stdout + r.stderr, args.samples, wall)
                old = best.get(n, (0.0, 0.0, how))
                best[n] = (max(old[0], train), max(old[1], sample), how)
    rows = [(n, *best[n]) for n in args.processes]
    base_t, base_s = rows[0][1], rows[0][2]
    print(f"\n{args.preset} on {args.device}: training {args.steps} steps × batch {args.batch} per process; "
          f"{args.samples} samples × {args.sampler_steps} sampler steps")
    print(f"{'processes':>9}  {'train img/s':>11}  {'efficiency':>10}  {'samples/s':>9}  {'efficiency':>10}  timed")
    for n, train, sample, how in rows:
        print(f"{n:>9}  {train:>11.1f}  {train / (n * base_t):>10.2f}  {sample:>9.2f}  "
              f"{sample / (n * base_s):>10.2f}  {how}")


if __name__ == "__main__":
    main()
