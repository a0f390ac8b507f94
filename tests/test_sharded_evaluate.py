"""`medsynth evaluate` under a launcher: two CPU processes (gloo) share the per-image work — a feature network's
features, radiomic features, the nearest-training search, Inception's features — and the figures in /metrics
are one process's, with one report, written once."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from engine.evaluation.sharding import TOGETHER, Shards
from engine.evaluation.stages import Stage
from medsynth.cli import main
from tests.conftest import make_evaluation_files

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


class TinyEncoder(torch.nn.Module):
    """Stands in for a user's feature network (torch.export), so the test needs no download."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


# Synthetic sample -> the training image planted as its copy.
COPIES = {2: 5, 11: 20}


def _files(root: Path) -> tuple[Path, Path, Path]:
    """Training, held-out and synthetic phantoms, the synthetic set a fresh draw with two planted copies. 19
    samples: the two processes' blocks differ in size, and a feature network's batches of 8 do not divide them."""
    return make_evaluation_files(root, n_train=40, n_test=16, n_synth=19, copies=COPIES)[1:]


def _metrics(path: Path) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    with h5py.File(path) as f:
        m = f["metrics"]
        figures = {k: float(v) for k, v in m.attrs.items() if k != "summary" and np.isscalar(v)
                   and not isinstance(v, (str, bytes))}
        return figures, json.loads(m.attrs["summary"]), m["nn_index"][:], m["nn_corr"][:]


@pytest.mark.slow
def test_two_processes_give_one_process_figures_and_one_report(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no FID weights: FID is not measured
    train_path, test_path, synth_path = _files(tmp_path)
    torch.manual_seed(0)
    net = tmp_path / "encoder.pt2"
    torch.export.save(torch.export.export(TinyEncoder(), (torch.zeros(8, 1, 32, 32),)), str(net))
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    for folder in (one_dir, two_dir):
        folder.mkdir()
        shutil.copy(synth_path, folder / "synth.h5")
    args = ["--real", str(test_path), "--train-data", str(train_path), "--features-net", str(net), "--no-utility",
            "--utility-steps", "2", "--device", "cpu"]
    two = subprocess.run([*LAUNCH, "-m", "medsynth", "evaluate", str(two_dir / "synth.h5"), *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=150)
    assert two.returncode == 0, two.stderr[-6000:]
    # One process: this one (no launcher), as `medsynth evaluate` runs.
    assert main(["evaluate", str(one_dir / "synth.h5"), *args]) == 0
    (f1, s1, idx1, corr1), (f2, s2, idx2, corr2) = _metrics(one_dir / "synth.h5"), _metrics(two_dir / "synth.h5")
    assert (s1["processes"], s2["processes"]) == (1, 2)
    # Every figure, each to float rounding: features and radiomics are gathered exactly; a nearest-training
    # correlation is a matrix product whose rounding may differ with the block's size (~1e-7).
    assert set(f1) == set(f2)
    assert {"fd_net", "frd", "mmd", "ms_ssim_synth", "nn_corr_max", "nn_share_above"} <= set(f1)
    for key in f1:
        assert f2[key] == pytest.approx(f1[key], rel=1e-5, abs=1e-6), key
    for key in ("fd_net", "fd_net_real_vs_real", "frd", "frd_real_vs_real", "mmd", "ms_ssim_synth"):
        assert f2[key] == f1[key], key
    # The nearest training image of every sample, the copies found by both.
    assert np.array_equal(idx1, idx2) and np.allclose(corr1, corr2, atol=1e-6)
    assert {i: int(idx2[i]) for i in COPIES} == COPIES and corr2[list(COPIES)].min() > 0.999
    assert [c[:2] for c in s2["memorization"]["closest"]] == [c[:2] for c in s1["memorization"]["closest"]]
    assert s2["not_measured"] == s1["not_measured"]
    # One process reports and writes: the figures once, one report, nothing else in the folder.
    assert two.stdout.count("[fd_net]") == 1 and two.stdout.count("report:") == 1
    assert two.stderr.count("evaluating 19 synthetic samples") == 1
    assert sorted(p.name for p in two_dir.iterdir()) == sorted(p.name for p in one_dir.iterdir())
    assert len(list(two_dir.glob("*.html"))) == 1


WORKER = textwrap.dedent("""
    import sys

    import numpy as np
    import torch
    from engine.evaluation.evaluate import EvalSettings, EvaluateJob
    from engine.evaluation.metrics.inception import FIDInception, inception_features, volume_slices
    from engine.evaluation.sharding import Shards
    from engine.errors import InputError
    from engine.io import destination
    from engine.jobs import Requests, execute
    from medsynth.cli import main
    from tests.conftest import StopAfter

    shards = Shards.of_launch("cpu")
    # Bad input, which every process finds: the main one says it, once; each ends with the exit code of bad input.
    assert main(["evaluate", sys.argv[1], "--real", sys.argv[1] + ".missing"]) == 2
    # A fault only the main process looks for (no room for the results): the others end too, rather than wait.
    check_room = destination.check_room

    def no_room(path, need):
        raise InputError(path, "has no room left")

    if shards.main:
        destination.check_room = no_room
    assert main(["evaluate", *sys.argv[1:2], "--real", *sys.argv[2:3], "--train-data", *sys.argv[3:4]]) == 2
    destination.check_room = check_room

    torch.manual_seed(0)
    net = FIDInception((64,)).eval()
    rng = np.random.default_rng(1)
    images = rng.random((4, 1, 24, 24), dtype=np.float32)
    volumes = rng.random((3, 1, 8, 8, 8), dtype=np.float32)

    def features(x):
        return inception_features(volume_slices(x, per_axis=1) if x.ndim == 5 else x, (64,), net, batch=2)

    # Images: blocks of 2 (rows 0:2 and 2:4). Volumes, 3 slices each: blocks of 2 volumes (6 slices, 3 batches).
    got = shards.image_rows(features, images, 2)
    got_vol = shards.image_rows(features, volumes, 2, per_image=3)
    if shards.main:
        want, want_vol = features(images), features(volumes)
        assert np.array_equal(got[64], want[64]) and np.array_equal(got_vol[64], want_vol[64])
        print("equal", shards.world, got[64].shape, got_vol[64].shape)

    # A stop asked of the second process only, at its 4th poll (before radiomics), stops both there.
    requests = StopAfter(3) if shards.rank == 1 else Requests()
    job = EvaluateJob(*sys.argv[1:4], EvalSettings(utility=False, utility_steps=2))
    done = execute(job, lambda ev: None, requests)
    assert done.cancelled and not done.result["complete"]
    if shards.main:
        print("stopped after", *sorted(done.result["summary"]["timings_s"]))
""")


@pytest.mark.slow
def test_inception_features_a_stop_and_bad_input_across_processes(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    train_path, test_path, synth_path = _files(tmp_path)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    r = subprocess.run([*LAUNCH, str(worker), str(synth_path), str(test_path), str(train_path)], capture_output=True,
                       text=True, cwd=ROOT, timeout=150, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-6000:]
    # Inception's features of images and of volumes' slices, gathered: exactly one process's.
    assert r.stdout.splitlines()[0].split() == ["equal", "2", "(4,", "64)", "(9,", "64)"]
    # Both processes ended at the same point (neither waits for the other), and what was measured is kept.
    assert r.stdout.splitlines()[1] == "stopped after features fid load"
    with h5py.File(synth_path) as f:
        summary = json.loads(f["metrics"].attrs["summary"])
        assert summary["complete"] is False and "frd" not in f["metrics"].attrs
    assert len(list(tmp_path.glob("*_report.html"))) == 1
    assert r.stderr.count("medsynth: error:") == 2 and "synth.h5.missing: does not exist" in r.stderr
    assert r.stderr.count("has no room left") == 1


def test_blocks_cover_every_row_once_in_order_and_start_on_a_batch():
    for n, world, align in ((48, 2, 8), (7, 2, 3), (1000, 8, 50), (5, 4, 1), (3, 2, 25), (0, 3, 4)):
        blocks = [Shards(rank, world).block(n, align) for rank in range(world)]
        assert [i for b in blocks for i in range(b.start, b.stop)] == list(range(n))
        assert all(b.start % align == 0 for b in blocks if b.stop > b.start)
    sizes = [len(range(1000)[Shards(r, 8).block(1000, 50)]) for r in range(8)]
    assert max(sizes) - min(sizes) <= 50  # whole batches, spread evenly


def test_one_process_computes_everything_itself():
    one = Shards()
    assert one.main and one.rows(lambda x: x * 2, np.arange(5)).tolist() == [0, 2, 4, 6, 8]
    # The stages every process shares come first: after them the main process runs on alone.
    assert list(Stage)[:len(TOGETHER)] == list(TOGETHER)
    assert [s for s in Stage if Shards(1, 2).takes_part(s)] == list(TOGETHER)
