"""Sharded generation: `medsynth sample` under two processes (gloo on the CPU) writes the file one process writes,
sample for sample and header for header; a killed or stopped multi-process run keeps what it drew, FILE.h5 is never
half there, and `--resume` completes it drawing only what is missing, on two processes or on one.

One test runs the launcher itself (torchrun). The others fork the two processes from this one, each with the
environment a launcher gives it (RANK, WORLD_SIZE, MASTER_ADDR, ...): torch is imported already, so a run takes
seconds rather than tens of them, and a kill is still the kernel's kill of a real process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.inference.sample import SampleJob
from engine.io import destination, shards
from engine.io.medsynth_h5 import read_image_set
from engine.io.medsynth_writer import SampleWriter
from engine.jobs import Progress, Requests, execute
from tests.forking import cli, in_child, kill_me

ROOT = Path(__file__).resolve().parents[1]
N, BATCH = 16, 2


def sample_args(run: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", str(run), "--n", str(N), "--batch", str(BATCH), "--steps", "2", "--device", "cpu",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def reference(tiny_run, tmp_path_factory) -> Path:
    """What one process writes."""
    out = tmp_path_factory.mktemp("one") / "one.h5"
    done = cli(sample_args(tiny_run, out))
    assert done["rc"] == 0, done
    return out


def contents(path: Path) -> dict:
    """Every dataset and root attribute but the time of writing."""
    with h5py.File(path, "r") as f:
        data = {name: f[name][:] for name in f if isinstance(f[name], h5py.Dataset)}
        attrs = {k: v for k, v in f.attrs.items() if k != "created"}
    return {"data": data, "attrs": attrs}


def assert_same_as_one_process(path: Path, reference: Path) -> None:
    got, want = contents(path), contents(reference)
    n = int(want["attrs"]["n_planned"])
    assert sorted(got["data"]) == sorted(want["data"])
    for name, values in want["data"].items():
        np.testing.assert_array_equal(got["data"][name], values, err_msg=name)
    assert sorted(got["attrs"]) == sorted(want["attrs"])
    for key, value in want["attrs"].items():
        assert np.array_equal(got["attrs"][key], value), key
    assert got["attrs"]["n_complete"] == n
    assert len(set(got["data"]["seeds"].tolist())) == n  # every seed unique
    assert len(read_image_set(path)) == n
    # Nothing of the run is left beside the file.
    assert not shards.folder(path).exists() and not destination.temp_beside(path).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_ranks(argv: list[str], world: int = 2, before=None, timeout: float = 90.0) -> list[dict]:
    """`medsynth ARGV` in `world` forked processes joined as a launcher joins them; for each (by rank) its exit
    code and stderr, or {"signal": N} when it was killed. `before(rank)` runs in each child first."""
    env = {"WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    children = []
    for rank in range(world):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(read)
                os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0")
                import torch
                from accelerate.state import AcceleratorState

                torch.set_num_threads(1)
                # This process's Accelerate state (a training fixture made one) is not the child's: a launched
                # process starts without one.
                AcceleratorState._reset_state(reset_partial_state=True)
                if before is not None:
                    before(rank)
                out = cli(argv)
            except BaseException:
                out, code = {"rc": 70, "stderr": traceback.format_exc()}, 70
            finally:
                os.write(write, json.dumps(out).encode())
                os._exit(code)
        os.close(write)
        children.append((pid, read))
    deadline = time.monotonic() + timeout
    ends = []
    for pid, read in children:
        while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                for other, _ in children:
                    with contextlib.suppress(OSError):
                        os.kill(other, signal.SIGKILL)
                raise TimeoutError(f"rank {len(ends)} ran past {timeout} s")
            time.sleep(0.05)
        status = ended[1]
        with os.fdopen(read, "rb") as pipe:
            text = pipe.read().decode()
        ends.append({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else json.loads(text))
    return ends


def _before_append(call: int, act) -> None:
    """SampleWriter.append calls `act()` just before its `call`-th call in this (forked) process."""
    real, calls = SampleWriter.append, [0]

    def append(self, *a, **kw):
        calls[0] += 1
        if calls[0] == call:
            act()
        return real(self, *a, **kw)
    SampleWriter.append = append


def _on_rank(rank: int, act):
    """A `before` that makes `rank` call `act()` when it has written its first shard batch and is about to write
    the next."""
    def before(r: int) -> None:
        if r == rank:
            _before_append(2, act)
    return before


def shard_counts(out: Path) -> dict[str, int]:
    """Each shard's whole samples, after checking it reads as the MedSynth file it is."""
    counts = {}
    for path in sorted(shards.folder(out).iterdir()):
        with h5py.File(path, "r", locking=False) as f:
            n = int(f.attrs["n_complete"])
            assert np.isfinite(f["images"][:n]).all()
        assert len(read_image_set(path)) == n
        counts[path.name] = n
    return counts


@pytest.mark.slow
def test_two_processes_under_torchrun_write_the_file_one_process_writes(tiny_run, reference, tmp_path):
    out = tmp_path / "two.h5"
    # torchrun's own parser would take --n for one of its options: --num-samples says the same to medsynth.
    argv = [a if a != "--n" else "--num-samples" for a in sample_args(tiny_run, out)]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "-m", "medsynth", *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = []
    while proc.poll() is None:  # whenever FILE.h5 is there, it is whole
        if out.exists():
            with h5py.File(out, "r", locking=False) as f:
                seen.append((int(f.attrs["n_complete"]), int(f.attrs["n_planned"])))
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-6000:]
    assert all(s == (N, N) for s in seen)
    assert stderr.count(f"sampling {N} with dpm x 2 steps on 2 processes") == 1, "only the main process reports"
    assert stdout.count(f"wrote {N} samples to {out}") == 1
    assert sorted(contents(out)["data"]) == ["images", "labels", "masks", "seeds"]
    assert_same_as_one_process(out, reference)



@pytest.mark.slow
def test_a_process_killed_under_torchrun_leaves_what_was_drawn_for_a_resume(tiny_run, reference, tmp_path):
    """The launcher's own ending: rank 1 is killed after its first batch, torchrun stops rank 0 (SIGTERM) and
    fails; the shards hold what both drew and a resume, here on one process, completes the file."""
    out = tmp_path / "t.h5"
    argv = [a if a != "--n" else "--num-samples" for a in sample_args(tiny_run, out)]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, *argv],
                       cwd=ROOT, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "KILL_RANK": "1"})
    assert r.returncode != 0 and "exitcode  : -9" in r.stderr, r.stderr[-4000:]
    assert not out.exists()
    assert sum(shard_counts(out).values()) >= BATCH
    done = cli(sample_args(tiny_run, out, "--resume"))
    assert done["rc"] == 0, done
    assert_same_as_one_process(out, reference)

@pytest.mark.slow
def test_a_killed_process_leaves_what_was_drawn_and_resume_completes_it(tiny_run, reference, tmp_path):
    out = tmp_path / "k.h5"
    ends = in_ranks(sample_args(tiny_run, out), before=_on_rank(1, kill_me))
    assert ends[1] == {"signal": signal.SIGKILL}
    assert ends[0]["rc"] == 130 and "ended unexpectedly" in ends[0]["stderr"], ends[0]
    assert not out.exists()  # never a half file under the name asked for
    # Rank 1 wrote one batch; rank 0 two (its second while rank 1 died), then found its peer gone.
    assert sorted(shard_counts(out).values()) == [BATCH, 2 * BATCH]
    shutil.copytree(shards.folder(out), shards.folder(tmp_path / "k1.h5"))

    again = in_ranks(sample_args(tiny_run, out, "--resume"))
    assert [e["rc"] for e in again] == [0, 0], again
    assert f"resuming: {3 * BATCH} of {N} samples were drawn before; drawing the {N - 3 * BATCH} missing" \
        in again[0]["stderr"] and "resuming" not in again[1]["stderr"]
    assert_same_as_one_process(out, reference)

    # The same leftovers, continued by one process.
    alone = cli(sample_args(tiny_run, tmp_path / "k1.h5", "--resume"))
    assert alone["rc"] == 0, alone
    assert_same_as_one_process(tmp_path / "k1.h5", reference)


@pytest.mark.slow
def test_a_stop_on_one_process_stops_both_and_keeps_their_samples(tiny_run, reference, tmp_path):
    out = tmp_path / "s.h5"
    ends = in_ranks(sample_args(tiny_run, out), before=_on_rank(1, lambda: os.kill(os.getpid(), signal.SIGTERM)))
    assert [e["rc"] for e in ends] == [130, 130], ends
    # Both stopped after the same round, so what they drew is the run's first samples: the file holds them, as a
    # single process's stopped file does, and nothing else is left.
    assert not shards.folder(out).exists()
    got, want = contents(out), contents(reference)
    drawn = int(got["attrs"]["n_complete"])
    assert drawn >= 2 * BATCH and drawn % (2 * BATCH) == 0
    assert f"stopped with {drawn} of {N} samples drawn in {out}; continue" in ends[0]["stdout"], ends[0]
    assert got["attrs"]["n_complete"] == drawn and got["attrs"]["n_planned"] == N
    for name, values in want["data"].items():
        np.testing.assert_array_equal(got["data"][name][:drawn], values[:drawn], err_msg=name)
    assert shards.SHARD_ATTR in got["attrs"]  # it says which run it is part of: a resume checks the settings

    # The leftovers are not run over unasked, nor continued with other settings.
    fresh = cli(sample_args(tiny_run, out))
    assert fresh["rc"] == 2 and fresh["stderr"].count("\n") == 1 and f"{out}: already exists" in fresh["stderr"]
    other = cli(sample_args(tiny_run, out, "--resume", "--seed", "5"))
    assert other["rc"] == 2 and str(out) in other["stderr"] and "seed" in other["stderr"], other
    assert int(contents(out)["attrs"]["n_complete"]) == drawn

    done = cli(sample_args(tiny_run, out, "--resume"))
    assert done["rc"] == 0, done
    assert_same_as_one_process(out, reference)


def test_one_process_killed_mid_run_resumes_from_its_partial_file(tiny_run, reference, tmp_path):
    out = tmp_path / "p.h5"

    def work():
        _before_append(3, kill_me)
        return cli(sample_args(tiny_run, out))

    assert in_child(work, timeout=60).killed
    assert not out.exists()
    # What the crash left says which run it belongs to: a resume with another setting is refused, naming it.
    other = cli(sample_args(tiny_run, out, "--resume", "--steps", "3"))
    assert other["rc"] == 2 and other["stderr"].count("\n") == 1 and "(steps 2, not 3)" in other["stderr"], other
    done = cli(sample_args(tiny_run, out, "--resume"))
    assert done["rc"] == 0, done
    assert f"resuming: {2 * BATCH} of {N} samples were drawn before" in done["stderr"]
    assert_same_as_one_process(out, reference)
    # A resume of a whole file draws nothing.
    again = cli(sample_args(tiny_run, out, "--resume"))
    assert again["rc"] == 0 and "already holds all" in again["stderr"]
    assert_same_as_one_process(out, reference)


def test_one_process_stopped_early_is_completed_by_a_resume(tiny_run, reference, tmp_path):
    out = tmp_path / "stopped.h5"
    job = SampleJob(tiny_run, N, out, steps=2, batch=BATCH, guidance=2.0, device="cpu")
    requests = Requests()
    done = execute(job, lambda ev: isinstance(ev, Progress) and ev.done >= 3 * BATCH and requests.stop(), requests)
    assert done.cancelled and done.result["n"] == 3 * BATCH
    with h5py.File(out, "r") as f:
        assert int(f.attrs["n_complete"]) == done.result["n"] < int(f.attrs["n_planned"])
    # It says which run it belongs to, as a crash's file does: a resume with another setting is refused, naming it.
    for flag, value, said in (("--steps", "3", "(steps 2, not 3)"), ("--guidance", "3", "guidance")):
        other = cli(sample_args(tiny_run, out, "--resume", flag, value))
        assert other["rc"] == 2 and other["stderr"].count("\n") == 1 and said in other["stderr"], other
        assert str(out) in other["stderr"]
    again = cli(sample_args(tiny_run, out, "--resume"))
    assert again["rc"] == 0, again
    assert f"resuming: {done.result['n']} of {N} samples were drawn before" in again["stderr"]
    assert_same_as_one_process(out, reference)


@pytest.mark.slow
def test_a_text_models_prompts_are_sharded_and_merged_as_one_process_writes_them(tmp_path, phantoms16):
    from engine import config
    from engine.training.jobs import train_job
    from tests.sd_tiny import make_tiny_sd

    cfg = config.resolve(config.FINE_TUNE_PRESET, None, {
        "pretrained": {"path": str(make_tiny_sd(tmp_path / "sd")), "prompt_template": "phantom, {class}",
                       "lora_rank": 4},
        "train": {"steps": 2, "batch": 4, "cpu_batch": 4, "warmup_steps": 0, "checkpoint_every": 2,
                  "preview_every": 0},
        "model": {"image_size": 32}})
    run = tmp_path / "lora"
    assert not execute(train_job(cfg, run, data=phantoms16), lambda e: None, Requests()).cancelled
    rows = tmp_path / "prompts.csv"
    rows.write_text('prompt,n,class\n"phantom, 2 lesions",3,2 lesions\nround phantom,3,\n')

    def args(out: Path) -> list[str]:
        return ["sample", str(run), "--prompts", str(rows), "--batch", str(BATCH), "--steps", "2",
                "--device", "cpu", "--out", str(out)]

    assert cli(args(tmp_path / "one.h5"))["rc"] == 0
    ends = in_ranks(args(tmp_path / "two.h5"))
    assert [e["rc"] for e in ends] == [0, 0], ends
    assert sorted(contents(tmp_path / "two.h5")["data"]) == ["images", "prompts", "seeds"]
    assert_same_as_one_process(tmp_path / "two.h5", tmp_path / "one.h5")
    with h5py.File(tmp_path / "two.h5", "r") as f:
        assert f["prompts"].asstr()[:].tolist() == ["phantom, 2 lesions"] * 3 + ["round phantom"] * 3


def test_a_refusal_is_one_line_from_the_main_process_and_no_process_waits(tiny_run, tmp_path):
    out = tmp_path / "held.h5"
    with destination.writer_lock(out):  # another run is writing that file
        ends = in_ranks(sample_args(tiny_run, out), timeout=60)
    assert [e["rc"] for e in ends] == [2, 2], ends
    assert ends[0]["stderr"].count("\n") == 1 and "being written by another MedSynth run" in ends[0]["stderr"]
    assert ends[1]["stderr"] == ""
    assert not out.exists() and not shards.folder(out).exists()


def test_rows_copied_from_another_file_are_its_rows_whatever_its_storage(tmp_path):
    """The merge copies a shard's compressed chunks as stored; rows of a file stored otherwise (contiguous, other
    filters) are decoded and written again: the same samples either way."""
    rng = np.random.default_rng(3)
    images = rng.normal(size=(5, 1, 8, 8)).astype(np.float32)
    masks = (images[:, 0] > 0).astype(np.uint8)
    with SampleWriter(tmp_path / "shard.h5", 5, (1, 8, 8), masks=True, labels=False, lock=False) as w:
        w.append(images, np.arange(5), masks)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["images"], f["masks"], f["seeds"] = images, masks, np.arange(5)
    for source in ("shard.h5", "plain.h5"):
        out = tmp_path / f"copy-{source}"
        with SampleWriter(out, 3, (1, 8, 8), masks=True, labels=False, lock=False) as w, \
                h5py.File(tmp_path / source, "r") as f:
            w.append_stored(f, 1, 3)
            w.append_stored(f, 4, 5)
        with h5py.File(out, "r") as f:
            np.testing.assert_array_equal(f["images"][:], images[[1, 2, 4]])
            np.testing.assert_array_equal(f["masks"][:], masks[[1, 2, 4]])
            assert f["seeds"][:].tolist() == [1, 2, 4] and int(f.attrs["n_complete"]) == 3


if __name__ == "__main__":  # a process of the torchrun test above: `medsynth ARGS`, killed on rank KILL_RANK
    if os.environ.get("RANK") == os.environ.get("KILL_RANK"):
        _on_rank(int(os.environ["RANK"]), kill_me)(int(os.environ["RANK"]))
    from medsynth.cli import main

    sys.exit(main(sys.argv[1:]))
