"""Fine-tuning a Stable-Diffusion-format model: LoRA against full fine-tuning, step time, weights, files and memory.

Run from the repository root:

    .venv/bin/python bench/finetune.py [--model tiny|sd15|PATH] [--sizes 64 256] [--ranks 4 8] [--steps N]

Each configuration (image size x LoRA rank, rank 0 = full fine-tuning of the UNet) trains in a fresh subprocess of
this script, through engine.training.jobs.train_job (FinetuneJob: the real engine step, with its EMA, optimizer,
logging and final checkpoint) on phantom images whose class names give the prompts ("no lesion", "1 lesion", ...).

- seconds per step: the engine emits a train Progress event after every step (log_every = 1); the time between
  consecutive events, after --warmup untimed steps, is one step. The median of --steps such gaps is reported, so the
  model loading, the VAE encoding of the training set and the final save are outside it. On the CPU the same gaps
  in process CPU time are reported too: on a machine shared with other jobs they move far less than wall time
  (with one torch thread; with more, threads spinning at a barrier bill CPU time as well).
- trained weights: the elements in the checkpoint's model.safetensors, which holds only what trains (the adapters
  for LoRA, the whole UNet otherwise); their share is of every weight in the pretrained model's unet/, vae/ and
  text_encoder/ files.
- checkpoint size: model.safetensors alone (what a user shares) and the whole checkpoint folder (with the EMA copy
  and the optimizer state, what resume needs).
- peak memory: the subprocess's own peak RSS (getrusage RUSAGE_SELF at its end; a fresh process per configuration,
  so one configuration's allocations never count against another's), with the RSS before the job started (Python,
  torch, diffusers) beside it; on CUDA also torch.cuda.max_memory_allocated.

Configurations run one after another on the same machine in one invocation, so the LoRA/full ratios printed at the
end compare figures taken side by side; absolute seconds on a small shared CPU move with the neighbours' load.

`--model sd15` builds an SD-1.5-sized model from configs with random weights (UNet 860 M, VAE 84 M, a 12-layer
768-wide CLIP text encoder, the tiny test tokenizer) in a temporary folder: no download, but a few GB of disk and
of memory; it is meant for a GPU (--device cuda). `--model PATH` fine-tunes a real diffusers folder or single file.

Measured on this machine (2026-12-03: 2 CPU cores shared with other jobs, load average about 6, so the wall-clock
s/step carries the neighbours' load and the CPU-time column is the steadier one; torch threads 1), default settings:

    model tiny (12 s to build/find), batch 2, device cpu, torch threads 1, 20 timed steps after 3 warm-up,
    16 phantom images
    load average 5.8 before, 6.4 after, on 2 CPU cores
     size   training    s/step  CPU s/st      trained    share  model MB   ckpt MB  RSS0 MiB  peak MiB
       64     LoRA 4    0.1116    0.0519        9,984    1.10%      0.05      0.20       423       481
       64     LoRA 8    0.1534    0.0496       19,968    2.19%      0.09      0.36       423       481
       64       full    0.1892    0.0628      792,964   87.08%      3.20     12.79       423       492
      256     LoRA 4    1.5202    0.5091        9,984    1.10%      0.05      0.20       434       603
      256     LoRA 8    1.8619    0.5305       19,968    2.19%      0.09      0.36       434       599
      256       full    1.3589    0.5420      792,964   87.08%      3.20     12.79       435       592

    LoRA / full, measured in this run (peak memory: the whole process; above the pre-job RSS in brackets)
     size  rank   s/step CPU s/st   trained  model MB   ckpt MB         peak RSS
       64     4     0.59     0.83    0.0126    0.0154    0.0154    0.98 ( 0.84)
       64     8     0.81     0.79    0.0252    0.0279    0.0279    0.98 ( 0.84)
      256     4     1.12     0.94    0.0126    0.0154    0.0154    1.02 ( 1.08)
      256     8     1.37     0.98    0.0252    0.0279    0.0279    1.01 ( 1.05)

On the tiny model LoRA trains ~1-2% of the weights and writes a checkpoint ~1.5-3% the size, but a step costs
nearly as much as full fine-tuning (CPU time 0.8x at 64 px, 0.95x at 256 px): the backward pass still runs
through the whole frozen UNet for the adapters' gradients, and at this size activations, not weights or optimizer
state, set both time and memory. The weight-bound savings show on an SD-sized model.

SD-1.5-sized (--model sd15, random weights, 1.03 G weights in all), this CPU, 64 px, batch 1, LoRA rank 4, 1 warm-up
+ 2 timed steps: 16.4 s/step, 797,184 trained weights (0.08%), model.safetensors 3.2 MB, checkpoint 12.9 MB, peak
RSS 4.36 GiB (0.42 GiB before the job). Full fine-tuning of it is refused here by the engine's own memory check
("needs about 24.8 GiB for its fine-tune stage, but cpu offers 19.9 GiB"): the whole UNet's weights, gradients, AdamW
moments and EMA copy. A configuration that fails prints its reason and gets no ratio; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The script lives in bench/, so a plain `python bench/finetune.py` would not see `engine` (or tests/sd_tiny).
ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

RESULT = "RESULT "  # the prefix of a worker's one line of JSON on stdout
WEIGHT_PARTS = ("unet", "vae", "text_encoder")


def _rss_mib() -> float:
    """The current resident set of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def count_weights(files: list[Path]) -> int:
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                shape = st.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def model_weights(model: Path) -> int | None:
    """Every weight of the pretrained model's networks (a folder's safetensors files; None for other forms)."""
    if model.is_file():
        return count_weights([model]) if model.suffix == ".safetensors" else None
    files = [f for part in WEIGHT_PARTS for f in (model / part).glob("*.safetensors")]
    return count_weights(files) if files else None


def make_sd15(root: Path) -> Path:
    """An SD-1.5-sized diffusers folder from configs, random weights: SD 1.5's own UNet, VAE and text encoder shapes."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from sd_tiny import SD_SCHEDULER, VAE_SCALING, write_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = root / "sd15-random"
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=VAE_SCALING,
    )
    write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, vocab_size=len(tokenizer), projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(prediction_type="epsilon", **SD_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def worker(args: argparse.Namespace) -> None:
    """One configuration, in this (fresh) process: train, then print one RESULT line of JSON."""
    import torch

    from engine.config import FINE_TUNE_PRESET, load_preset
    from engine.data.phantoms import make_phantoms
    from engine.jobs import Event, Progress, Requests
    from engine.training.jobs import train_job

    cuda = args.device == "cuda"
    cfg = load_preset(FINE_TUNE_PRESET)
    cfg.pretrained.path = str(args.model)
    cfg.pretrained.lora_rank = args.rank
    cfg.model.image_size = args.size
    cfg.train.steps = args.warmup + args.steps + 1  # +1: the first gap starts at the first step's event
    cfg.train.batch = args.batch
    cfg.train.cpu_batch = 0  # the batch above, on every device
    cfg.train.device = args.device
    cfg.train.log_every = 1
    cfg.train.preview_every = 0
    cfg.train.checkpoint_every = cfg.train.steps + 1  # only the final save, after the last timed event
    data = make_phantoms(args.images, size=args.size, seed=0)
    rss_before = _rss_mib()
    marks: dict[int, tuple[float, float]] = {}

    def emit(event: Event) -> None:
        if isinstance(event, Progress) and event.stage == "train":
            if cuda:
                torch.cuda.synchronize()
            marks[event.done] = (time.perf_counter(), time.process_time())

    with tempfile.TemporaryDirectory(prefix="medsynth-bench-ft-") as tmp:
        result = train_job(cfg, Path(tmp) / "run", data=data).run(emit, Requests())
        ckpt = Path(result["checkpoint"])
        model_file = ckpt / "model.safetensors"
        trained = count_weights([model_file])
        model_bytes = model_file.stat().st_size
        folder_bytes = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    first = args.warmup + 1
    steps = [i for i in range(first, first + args.steps) if i in marks and i + 1 in marks]
    gaps = [marks[i + 1][0] - marks[i][0] for i in steps]
    cpu_gaps = [marks[i + 1][1] - marks[i][1] for i in steps]
    out = {
        "s_per_step": statistics.median(gaps) if gaps else float("nan"),
        "cpu_s_per_step": statistics.median(cpu_gaps) if cpu_gaps else float("nan"),
        "job_seconds": result.get("seconds"),
        "trained": trained,
        "model_bytes": model_bytes,
        "folder_bytes": folder_bytes,
        "rss_before_mib": rss_before,
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "threads": torch.get_num_threads(),
    }
    print(RESULT + json.dumps(out), flush=True)


def run_one(model: Path, size: int, rank: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", str(model), "--size", str(size),
           "--rank", str(rank), "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--images", str(args.images), "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not lines:
        # A configuration the engine refuses (its memory check, say) is a result too: its last line says why.
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        return {"error": f"exit {proc.returncode}: {tail[-1] if tail else ''}"}
    return json.loads(lines[-1][len(RESULT):])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny",
                    help="tiny (the test model, built here), sd15 (SD-1.5-sized from configs, random weights), or "
                         "the path of a diffusers folder / single-file checkpoint")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image edges, px")
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 8], help="LoRA ranks, each against full fine-tuning")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (the median of their times is reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--images", type=int, default=16, help="phantom images in the training set")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the engine's choice, the cores other processes leave free)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds one configuration may take")
    # The worker's own arguments: one configuration in a fresh process.
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return

    from engine.runtime.threads import use_free_cores

    # One thread count for every configuration, fixed through the environment so the workers' TrainJobs keep it.
    os.environ["MEDSYNTH_THREADS"] = str(args.threads or use_free_cores())
    with tempfile.TemporaryDirectory(prefix="medsynth-bench-models-") as tmp:
        t0 = time.perf_counter()
        models: dict[int, Path] = {}
        for size in args.sizes:
            if args.model == "tiny":
                from sd_tiny import make_tiny_sd

                # The UNet's sample size matched to the image size, as a model trained at that size would have.
                models[size] = make_tiny_sd(Path(tmp) / str(size), sample_size=size)
            elif args.model == "sd15":
                models[size] = models.get(args.sizes[0]) or make_sd15(Path(tmp))
            else:
                models[size] = Path(args.model).expanduser().resolve()
        built = time.perf_counter() - t0
        load_before = os.getloadavg()[0]
        results: dict[tuple[int, int], dict] = {}
        for size in args.sizes:
            total = model_weights(models[size])
            for rank in [*args.ranks, 0]:
                r = run_one(models[size], size, rank, args)
                r["total"] = total
                what = f"LoRA rank {rank}" if rank else "full"
                if "error" in r:
                    print(f"{size} px {what}: failed, {r['error']}", flush=True)
                    continue
                results[size, rank] = r
                print(f"{size} px {what}: {r['s_per_step']:.4f} s/step, peak RSS {r['peak_rss_mib']:.0f} MiB",
                      flush=True)
        load_after = os.getloadavg()[0]

    print()
    threads = next(iter(results.values()))["threads"] if results else "?"
    print(f"model {args.model} ({built:.0f} s to build/find), batch {args.batch}, device {args.device}, torch threads "
          f"{threads}, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{args.images} phantom images")
    print(f"load average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPU cores")
    gpu = args.device == "cuda"
    cpu = not gpu
    head = (f"{'size':>5s} {'training':>10s} {'s/step':>9s}" + (f" {'CPU s/st':>9s}" if cpu else "")
            + f" {'trained':>12s} {'share':>8s} {'model MB':>9s} {'ckpt MB':>9s}"
            f" {'RSS0 MiB':>9s} {'peak MiB':>9s}" + (f" {'GPU MiB':>9s}" if gpu else ""))
    print(head)
    for (size, rank), r in results.items():
        share = f"{r['trained'] / r['total']:8.2%}" if r["total"] else f"{'?':>8s}"
        print(f"{size:5d} {f'LoRA {rank}' if rank else 'full':>10s} {r['s_per_step']:9.4f}"
              + (f" {r['cpu_s_per_step']:9.4f}" if cpu else "") + f" {r['trained']:12,d} "
              f"{share} {r['model_bytes'] / 1e6:9.2f} {r['folder_bytes'] / 1e6:9.2f} {r['rss_before_mib']:9.0f} "
              f"{r['peak_rss_mib']:9.0f}" + (f" {r['peak_gpu_mib']:9.0f}" if gpu else ""))
    print()
    print("LoRA / full, measured in this run (peak memory: the whole process; above the pre-job RSS in brackets)")
    print(f"{'size':>5s} {'rank':>5s} {'s/step':>8s}" + (f" {'CPU s/st':>8s}" if cpu else "")
          + f" {'trained':>9s} {'model MB':>9s} {'ckpt MB':>9s} {'peak RSS':>16s}" + (f" {'GPU':>8s}" if gpu else ""))
    for size in args.sizes:
        for rank in args.ranks:
            if (size, rank) not in results or (size, 0) not in results:
                continue  # a side that failed above: no ratio
            full, r = results[size, 0], results[size, rank]
            grown = (r["peak_rss_mib"] - r["rss_before_mib"]) / max(full["peak_rss_mib"] - full["rss_before_mib"], 1)
            print(f"{size:5d} {rank:5d} {r['s_per_step'] / full['s_per_step']:8.2f}"
                  + (f" {r['cpu_s_per_step'] / full['cpu_s_per_step']:8.2f}" if cpu else "") + " "
                  f"{r['trained'] / full['trained']:9.4f} {r['model_bytes'] / full['model_bytes']:9.4f} "
                  f"{r['folder_bytes'] / full['folder_bytes']:9.4f} "
                  f"{r['peak_rss_mib'] / full['peak_rss_mib']:7.2f} ({grown:5.2f})"
                  + (f" {r['peak_gpu_mib'] / full['peak_gpu_mib']:8.2f}" if gpu else ""))


if __name__ == "__main__":
    main()
