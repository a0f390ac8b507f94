"""Run-time estimates before training, GPU presets on a CPU, and start-up imports of light commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import batch_for, preset_device, preset_names, resolve
from engine.data.phantoms import make_phantoms
from engine.io.medsynth_writer import write_image_set
from engine.jobs import Requests
from engine.runtime.estimate import Estimate, StepTimer, format_duration
from engine.runtime.threads import threads_for, use_free_cores
from engine.training.train import TrainJob
from medsynth.cli import main
from tests.conftest import tiny_cli_setup, tiny_config

ROOT = Path(__file__).resolve().parent.parent
DURATION = r"about \d+ (s|min|h( \d+ min)?|days( \d+ h)?)"


def test_durations_read_as_durations():
    assert format_duration(42) == "42 s"
    assert format_duration(12 * 60 + 10) == "12 min"
    assert format_duration(2 * 3600 + 10 * 60) == "2 h 10 min"
    assert format_duration(3 * 86400 + 4 * 3600) == "3 days 4 h"


def test_step_timer_skips_the_first_step_and_reports_once():
    reports: list[tuple[float, int]] = []
    timer = StepTimer(0, 100, lambda s, n: reports.append((s, n)))
    for step in range(1, 11):
        timer(step)
    assert len(reports) == 1 and reports[0][1] == 100 and reports[0][0] >= 0
    short: list[tuple[float, int]] = []
    one = StepTimer(5, 6, lambda s, n: short.append((s, n)))
    one(6)
    assert short == []  # a single step has no second step to time


def test_presets_say_what_they_are_sized_for():
    hints = {name: preset_device(name) for name in preset_names()}
    assert set(hints.values()) <= {"cpu", "gpu"}
    assert hints["demo"] == "cpu" and hints["demo-3d"] == "cpu"
    assert hints["medmnist-28"] == "gpu" and hints["brain-128"] == "gpu"


def test_the_cpu_batch_applies_on_a_cpu_unless_a_batch_is_given():
    cfg = resolve("medmnist-28", None, {})
    assert batch_for(cfg.train, "cpu") == cfg.train.cpu_batch < cfg.train.batch == batch_for(cfg.train, "cuda")
    asked = resolve("medmnist-28", None, {"train": {"batch": 16}})
    assert batch_for(asked.train, "cpu") == 16 == batch_for(asked.train, "cuda")


def test_the_estimate_comes_before_training_ends(phantoms16, tmp_path):
    events: list = []
    TrainJob(tiny_config(steps=8), tmp_path / "run", data=phantoms16).run(events.append, Requests())
    estimates = [i for i, ev in enumerate(events) if isinstance(ev, Estimate)]
    assert len(estimates) == 1
    ev = events[estimates[0]]
    assert ev.steps == 8 and ev.seconds == pytest.approx(8 * ev.seconds_per_step) and not ev.warning
    steps_after = [e.done for e in events[estimates[0]:] if getattr(e, "stage", "") == "train"]
    assert steps_after and min(steps_after) < 8  # training went on after the estimate was shown


def test_medsynth_train_prints_the_estimate(tmp_path, capsys):
    data, cfg = tiny_cli_setup(tmp_path, 16, "steps = 6\nlog_every = 2")
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--config", str(cfg), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert re.search(DURATION + r" on this CPU \(6 steps × \d+\.\d\d s, measured over 3 warm-up steps\)", err), err
    assert "sized for a GPU" not in err


def test_a_gpu_preset_on_a_cpu_warns_with_the_estimate(tmp_path, capsys):
    npz = tmp_path / "pathmnist_like.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, train_images=rng.integers(0, 255, (24, 28, 28), dtype=np.uint8),
             train_labels=rng.integers(0, 3, (24, 1)))
    small = tmp_path / "small.toml"  # the preset's hint, a model small enough for a test
    small.write_text("[model]\nimage_size = 16\nblock_out_channels = [16, 32, 32]\nlayers_per_block = 1\n"
                     "[train]\nsteps = 5\nlog_every = 1\ncheckpoint_every = 100\npreview_every = 0\n")
    args = ["train", str(npz), "--out", str(tmp_path / "run"), "--preset", "medmnist-28", "--config", str(small),
            "--device", "cpu"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "The medmnist-28 preset is sized for a GPU and this run is on the CPU" in err
    warned = r"The medmnist-28 preset is sized for a GPU: training will take " + DURATION + " on this CPU"
    assert re.search(warned, err), err
    # No batch given: the preset's CPU batch is what ran.
    assert "batch 32 on the CPU" in err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["batch"] == 32


# torch too: none of these handles a tensor, and importing it costs 1-4 s of every start.
HEAVY = "torch", "diffusers", "monai", "PySide6"


def test_help_info_export_and_reader_study_import_no_torch_diffusers_or_monai(tmp_path):
    """All five commands in one process (what one imports stays imported), checked after the last."""
    h5 = write_image_set(tmp_path / "few.h5", make_phantoms(4, size=16))
    commands = [["--help"], ["info", str(h5)], ["info", str(ROOT / "engine" / "resources" / "demo" / "run")],
                ["export", str(h5), "--to", str(tmp_path / "png"), "--format", "png"],
                ["reader-study", "summary", str(tmp_path)]]
    code = ("import runpy, sys\n"
            f"for args in {commands!r}:\n"
            "    sys.argv = ['medsynth', *args]\n"
            "    try:\n        runpy.run_module('medsynth', run_name='__main__')\n"
            "    except SystemExit:\n        pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "exported 4 samples" in out.stdout, out.stderr  # the last commands did run
    assert "HEAVY []" in out.stderr, out.stderr


def test_cpu_jobs_take_the_cores_other_processes_leave_free(monkeypatch):
    assert threads_for(cores=2, load=3.3, default=2) == 1  # a busy shared machine: one thread, never 0
    assert threads_for(cores=2, load=0.2, default=2) == 2
    assert threads_for(cores=16, load=4.0, default=16) == 12
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("MEDSYNTH_THREADS", "1")
        assert use_free_cores() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_a_latent_run_times_each_stage(tmp_path):
    from tests.test_latent import tiny_latent

    events: list = []
    TrainJob(tiny_latent(ae_steps=5, steps=5), tmp_path / "run",
             data=make_phantoms(4, size=16, dims=3, seed=3)).run(events.append, Requests())
    texts = [ev.text for ev in events if isinstance(ev, Estimate)]
    assert len(texts) == 2, texts
    assert texts[0].startswith("Stage 1, the autoencoder, will take about")
    assert texts[1].startswith("Stage 2, the diffusion model, will take about")
