"""`medsynth demo`: phantoms → short training → generation → a printed summary, all headless."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import load_preset
from engine.data.phantoms import make_phantoms
from engine.inference.sample import SampleJob
from engine.io.medsynth_h5 import read_image_set
from engine.io.medsynth_writer import write_image_set
from engine.jobs import Emit, Job, Message, Requests
from engine.training.run_dir import RunDir
from engine.training.train import TrainJob

DEMO_IMAGES = 512


class DemoJob:
    """Phantoms, a short training on them, then generation: a job like the two it runs, so a stop ends it
    the same way (a stopped training keeps its checkpoint and the next demo resumes it)."""

    def __init__(self, out: Path, *, steps: int | None = None, n: int = 64) -> None:
        self.out, self.steps, self.n = Path(out), steps, n
        self.run_dir, self.synth = self.out / "run", self.out / "synthetic.h5"

    def run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        out, steps, run_dir, synth = self.out, self.steps, self.run_dir, self.synth
        out.mkdir(parents=True, exist_ok=True)
        data_path = out / "phantoms.h5"
        if not data_path.exists():
            write_image_set(data_path, make_phantoms(DEMO_IMAGES, size=32, seed=0))
        if RunDir(run_dir).holds_run():
            job = TrainJob(None, run_dir, resume=True, steps=steps)
        else:
            cfg = load_preset("demo")
            cfg.data.path = str(data_path)
            job = TrainJob(cfg, run_dir, data=read_image_set(data_path), steps=steps)
        emit(Message(f"demo: {DEMO_IMAGES} phantom images in {data_path}"))
        job.run(emit, requests)
        SampleJob(run_dir, self.n, synth, sampler_name="dpm", steps=25, seed=0, guidance=2.0,
                  overwrite=True).run(emit, requests)
        return {"synthetic": str(synth), "run_dir": str(run_dir)}


def run_demo(out: Path, *, steps: int | None = None, n: int = 64, run: Callable[[Job], int]) -> int:
    """The demo with a printed summary; ``run`` is the front end's job runner (its exit code)."""
    job = DemoJob(out, steps=steps, n=n)
    run_dir, synth = job.run_dir, job.synth
    code = run(job)
    if code:
        return code
    made = read_image_set(synth)
    k, names, images, masks = len(made), made.class_names, made.images, made.masks
    counts = np.bincount(made.labels, minlength=len(names))
    print(f"demo done: {k} synthetic images with masks and labels in {synth}")
    print("  classes: " + ", ".join(f"{name}: {int(c)}" for name, c in zip(names, counts)))
    print(f"  intensity {images.min():.0f}..{images.max():.0f} (phantom units), "
          f"lesion pixels {100 * float((masks > 0).mean()):.2f}% of the image")
    print(f"  training run (checkpoints, loss log): {run_dir}")
    print(f"  open it with h5py: h5py.File('{synth}')['images'], ['masks'], ['labels'], ['seeds']")
    return 0
