"""`medsynth demo`: phantoms → short training → generation → a printed summary, all headless."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from engine.config import load_preset
from engine.data.phantoms import make_phantoms
from engine.sample import SampleJob
from engine.store import read_image_set, write_image_set
from engine.train import TrainJob
from engine.training.run_dir import RunDir

DEMO_IMAGES = 512


def run_demo(out: Path, *, steps: int | None = None, n: int = 64, view: Any = None) -> int:
    from engine.cli import run_job

    out.mkdir(parents=True, exist_ok=True)
    data_path = out / "phantoms.h5"
    if not data_path.exists():
        write_image_set(data_path, make_phantoms(DEMO_IMAGES, size=32, seed=0))
    run_dir = out / "run"
    if RunDir(run_dir).holds_run():
        job = TrainJob(None, run_dir, resume=True, steps=steps)
    else:
        cfg = load_preset("demo")
        cfg.data.path = str(data_path)
        job = TrainJob(cfg, run_dir, data=read_image_set(data_path), steps=steps)
    view.write(f"demo: {DEMO_IMAGES} phantom images in {data_path}")
    code = run_job(job, view)
    if code:
        return code
    synth = out / "synthetic.h5"
    code = run_job(SampleJob(run_dir, n, synth, sampler_name="dpm", steps=25, seed=0, guidance=2.0,
                                  overwrite=True), view)
    if code:
        return code
    with h5py.File(synth, "r") as f:
        k = int(f.attrs["n_complete"])
        labels = f["labels"][:k]
        masks = f["masks"][:k]
        images = f["images"][:k]
        names = [str(x) for x in json.loads(f.attrs["class_names"])]
    counts = np.bincount(labels, minlength=len(names))
    print(f"demo done: {k} synthetic images with masks and labels in {synth}")
    print("  classes: " + ", ".join(f"{name}: {int(c)}" for name, c in zip(names, counts)))
    print(f"  intensity {images.min():.0f}..{images.max():.0f} (phantom units), "
          f"lesion pixels {100 * float((masks > 0).mean()):.2f}% of the image")
    print(f"  training run (checkpoints, loss log): {run_dir}")
    print(f"  open it with h5py: h5py.File('{synth}')['images'], ['masks'], ['labels'], ['seeds']")
    return 0
