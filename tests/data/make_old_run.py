"""Writes tests/data/run_v0.1.0: a run folder as MedSynth 0.1.0 wrote it.

Run at commit 96aa0ff (before the engine reshape of issue 14), from the repository root:

    PYTHONPATH=. OMP_NUM_THREADS=1 python tests/data/make_old_run.py

The folder is kept, never regenerated, to prove old run folders still resume, sample and
describe with later code (tests/test_run_dir.py). The model is the tests' tiny config with
narrower channels, so the folder (weights, EMA, optimizer, config, facts, loss log) stays near 300 KB.
The data is made in memory from make_phantoms(OLD_RUN_IMAGES, size=16, seed=OLD_RUN_SEED), which
a test makes again to resume on the same images.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OLD_RUN = Path(__file__).resolve().parent / "run_v0.1.0"
OLD_RUN_STEPS = 6
OLD_RUN_IMAGES = 16
OLD_RUN_SEED = 1


def old_run_config():
    from tests.conftest import tiny_config

    cfg = tiny_config(steps=OLD_RUN_STEPS, log_every=2, checkpoint_every=1000)
    cfg.model.block_out_channels = [8, 8]  # 19 k parameters: four weight files well under 1 MB together
    return cfg


def main() -> None:
    from engine.train import TrainJob

    from engine.data.phantoms import make_phantoms

    shutil.rmtree(OLD_RUN, ignore_errors=True)
    data = make_phantoms(OLD_RUN_IMAGES, size=16, seed=OLD_RUN_SEED)
    TrainJob(old_run_config(), OLD_RUN, data=data).run(lambda ev: None, lambda: False)
    size = sum(p.stat().st_size for p in OLD_RUN.rglob("*") if p.is_file())
    print(f"wrote {OLD_RUN} ({size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
