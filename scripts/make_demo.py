"""Rebuild the bundled demo: engine/resources/demo/phantoms.h5 and the demo model in engine/resources/demo/run/.

The model is the `demo` preset trained on 512 phantoms for 4,000 steps with a cosine learning-rate decay (about 50
minutes on two CPU cores with OMP_NUM_THREADS=1). Only the EMA weights, the state
and the config ship (a few MB); the optimizer state stays out, so the bundled run
samples but does not resume.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_demo.py [--from-run RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import RESOURCES, load_preset  # noqa: E402
from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.io.medsynth_h5 import read_image_set  # noqa: E402
from engine.io.medsynth_writer import write_image_set  # noqa: E402
from engine.jobs import Requests  # noqa: E402
from engine.training import checkpoints  # noqa: E402
from engine.training.run_dir import RunDir  # noqa: E402
from engine.training.train import TrainJob  # noqa: E402

DEMO = RESOURCES / "demo"
STEPS = 4000


def train(data: Path, run: Path) -> None:
    cfg = load_preset("demo")
    cfg.data.path = str(data)
    cfg.train.steps = STEPS
    cfg.train.lr_schedule = "cosine"
    cfg.train.ema_decay = 0.995
    cfg.train.checkpoint_every = 250
    cfg.train.preview_every = 0
    TrainJob(cfg, run, data=read_image_set(data)).run(lambda ev: None, Requests())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--from-run", type=Path, help="copy this finished run instead of training one")
    args = parser.parse_args()
    DEMO.mkdir(parents=True, exist_ok=True)
    data = DEMO / "phantoms.h5"
    if not data.exists():
        write_image_set(data, make_phantoms(512, size=32, seed=0))
    run = RunDir(args.from_run or Path(tempfile.mkdtemp()) / "run")
    if args.from_run is None:
        train(data, run.path)
    ckpt = run.latest()
    if ckpt is None:
        raise SystemExit(f"{run.path}: no checkpoint")
    out = RunDir(DEMO / "run")
    shutil.rmtree(out.path, ignore_errors=True)
    target = out.checkpoints_dir / ckpt.name
    target.mkdir(parents=True)
    for name in ("ema.safetensors", checkpoints.STATE):
        shutil.copy2(ckpt / name, target / name)
    # The bundled run names its data by base name, as every run does; the app knows where the bundled file is.
    state = checkpoints.read_state(target)
    state["data_source"] = "phantoms.h5"
    state["config"]["data"]["path"] = "phantoms.h5"
    state.pop("optimizer_param_groups", None)
    (target / checkpoints.STATE).write_text(json.dumps(state, indent=2))
    config = run.read_config()
    config.data.path = "phantoms.h5"
    out.write_config(config)
    if run.loss_log_path.exists():
        shutil.copy2(run.loss_log_path, out.loss_log_path)
    print(f"demo model: {target} ({sum(p.stat().st_size for p in target.iterdir()) / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
