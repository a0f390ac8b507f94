"""A real two-process data-parallel run (gloo on the CPU), the code path several GPUs take."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_cli_setup

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_train_one_run(tmp_path):
    data, cfg = tiny_cli_setup(tmp_path, 32, "checkpoint_every = 5\nlog_every = 2")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "-m", "medsynth", "train", str(data), "--out", str(run), "--config", str(cfg),
                        "--steps", "10", "--device", "cpu"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-6000:]
    assert r.stderr.count("(2 processes") == 1, "only the main process reports"
    assert r.stdout.count("trained to step 10") == 1
    assert [p.name for p in sorted(run.glob("checkpoints/step_*"))] == ["step_0000005", "step_0000010"]
    rows = [json.loads(x) for x in (run / "loss.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 11))  # a 10-step run logs every step
