"""The Train and Generate panels' "All N GPUs": offered only on a machine with several, and a run started that way
is N real processes under Accelerate's launcher whose main process reports to the panel once; Stop stops them all.

No GPU here: the machine is told it has two, and each process, finding none, runs on the CPU (gloo) — the code path
of two GPUs but for the device. Each launch takes ~15-40 s on 2 cores."""

import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings  # noqa: E402

from engine.runtime import launch  # noqa: E402
from engine.training import checkpoints  # noqa: E402
from engine.training.run_dir import RunDir  # noqa: E402
from medsynth_gui.panels.generate_panel import GeneratePanel  # noqa: E402
from medsynth_gui.panels.train_panel import TrainPanel  # noqa: E402
from tests.test_gui_panels import tiny  # noqa: E402


@pytest.fixture(autouse=True)
def own_settings(tmp_path, monkeypatch):
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores


def _gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(launch, "local_gpus", lambda: n)


def _launched_left() -> list[str]:
    """The launcher and processes this test started (its descendants), alive: not another test run's."""
    left, todo = [], [os.getpid()]
    while todo:
        found = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
        for pid in found:
            todo.append(int(pid))
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            except OSError:
                continue
            if state != "Z" and ("launched_main" in cmd or "accelerate.commands.launch" in cmd):
                left.append(cmd)
    return left


@pytest.mark.parametrize("gpus", [0, 1])
def test_a_machine_with_one_gpu_or_none_is_offered_no_choice(qtbot, monkeypatch, gpus):
    _gpus(monkeypatch, gpus)
    train, generate = TrainPanel(), GeneratePanel()
    for panel in (train, generate):
        qtbot.addWidget(panel)
        panel.show()
        assert not panel.gpus_combo.isVisible() and panel.gpus_combo.processes() == 1


def test_a_machine_with_four_offers_all_four(qtbot, monkeypatch):
    _gpus(monkeypatch, 4)
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.show()
    assert panel.gpus_combo.isVisible()
    assert [panel.gpus_combo.itemText(i) for i in range(panel.gpus_combo.count())] == ["One GPU", "All 4 GPUs"]
    panel.gpus_combo.setCurrentIndex(1)
    assert panel.gpus_combo.processes() == 4


@pytest.mark.slow
def test_training_on_all_gpus_reports_once_stop_stops_every_process_and_resume_goes_on(qtbot, monkeypatch, tmp_path):
    from engine.data.phantoms import make_phantoms
    from engine.io.medsynth_writer import write_image_set

    _gpus(monkeypatch, 2)
    data = write_image_set(tmp_path / "d.h5", make_phantoms(32, 16))
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.gpus_combo.setCurrentIndex(1)
    tiny(panel, data, tmp_path / "run", steps=100_000)
    statuses: list[str] = []
    panel.runner.event.connect(lambda ev: statuses.append(panel.status.text()))
    panel.start()
    assert panel.status.text() == "Starting 2 GPUs…" and not panel.gpus_combo.isEnabled()
    qtbot.waitUntil(lambda: panel.progress.value() >= 12, timeout=120_000)
    assert _launched_left(), "the run is not two launched processes"
    with qtbot.waitSignal(panel.runner.done, timeout=180_000):
        panel.stop_btn.click()
    stopped = int(panel.status.text().split("Stopped at step ")[1].split()[0])
    assert stopped >= 12, panel.status.text()
    run = RunDir(tmp_path / "run")
    assert run.latest().name == run.checkpoint_path(stopped).name
    checkpoints.verify(run.latest())
    state = json.loads((run.latest() / checkpoints.STATE).read_text())
    assert state["processes"] == 2 and state["global_batch"] == 8  # each of the two took 4 of every batch
    # One run's curve: each logged step once, as the loss log has them.
    logged = [json.loads(x)["step"] for x in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert panel.steps == sorted(set(panel.steps)) and set(panel.steps) <= set(logged) and panel.steps
    # The start as the main process says it, once: not once per process.
    assert any("global batch 8 = 2 processes × 4" in s for s in statuses), statuses[:20]
    assert not _launched_left()
    assert panel.gpus_combo.isEnabled() and panel.run_btn.isEnabled()
    # Resume on all GPUs goes on from the checkpoint the stop kept.
    panel.steps_spin.setValue(stopped + 4)
    with qtbot.waitSignal(panel.runner.done, timeout=180_000):
        panel.resume_btn.click()
    assert panel.status.text().startswith(f"Finished at step {stopped + 4}"), panel.status.text()
    final = RunDir(tmp_path / "run").latest()
    assert final.name == run.checkpoint_path(stopped + 4).name
    assert json.loads((final / checkpoints.STATE).read_text())["processes"] == 2
    logged = [json.loads(x)["step"] for x in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == stopped + 4
    assert not _launched_left()


def _generate_on_two(qtbot, monkeypatch, run, n: int, out: Path) -> GeneratePanel:
    """A Generate panel on a machine told it has two GPUs, set to draw `n` samples of `run` on both into `out`."""
    _gpus(monkeypatch, 2)
    panel = GeneratePanel()
    qtbot.addWidget(panel)
    panel.show()
    assert panel.gpus_combo.isVisible()
    panel.gpus_combo.setCurrentIndex(1)
    panel.set_checkpoint(str(run))
    panel.n_spin.setValue(n)
    panel.steps_spin.setValue(3)
    panel.out_edit.setText(str(out))
    return panel


@pytest.mark.slow
def test_generating_on_all_gpus_fills_one_file_a_single_process_would(qtbot, monkeypatch, tiny_run, tmp_path):
    out = tmp_path / "g.h5"
    panel = _generate_on_two(qtbot, monkeypatch, tiny_run, 40, out)  # batches of 16: two for the main process
    with qtbot.waitSignal(panel.file_done, timeout=180_000) as finished:
        panel.start()
    assert finished.args == [str(out)]
    assert panel.status.text().startswith("Done: 40 samples in g.h5")
    # The same panel on one GPU: the file a single process makes.
    one = tmp_path / "one.h5"
    panel.gpus_combo.setCurrentIndex(0)
    panel.out_edit.setText(str(one))
    with qtbot.waitSignal(panel.file_done, timeout=180_000):
        panel.start()
    with h5py.File(out) as got, h5py.File(one) as want:
        assert got.attrs["n_complete"] == 40
        assert sorted(got["seeds"][:]) == sorted(set(got["seeds"][:]))
        np.testing.assert_array_equal(got["seeds"][:], want["seeds"][:])
        np.testing.assert_array_equal(got["images"][:], want["images"][:])
        np.testing.assert_array_equal(got["masks"][:], want["masks"][:])
    assert not _launched_left()


@pytest.mark.slow
def test_stopping_a_generation_on_all_gpus_keeps_the_first_samples_in_the_file(qtbot, monkeypatch, tiny_run, tmp_path):
    from engine.io import shards

    out = tmp_path / "g.h5"
    panel = _generate_on_two(qtbot, monkeypatch, tiny_run, 2000, out)
    shown: list[str] = []
    panel.file_started.connect(shown.append)
    panel.start()
    qtbot.waitUntil(lambda: panel.progress.value() >= 64, timeout=180_000)
    assert shown == []  # a shard is not shown: its rows are not the run's sample numbers
    assert panel.status.text().endswith("the gallery shows them when the GPUs finish")
    with qtbot.waitSignal(panel.file_done, timeout=180_000) as finished:
        panel.stop_btn.click()
    assert finished.args == [str(out)] and shown == [str(out)]
    kept = int(panel.status.text().split("Stopped: ")[1].split()[0])
    assert 64 <= kept < 2000 and f"{kept} samples in g.h5" in panel.status.text()
    with h5py.File(out) as f:
        assert int(f.attrs["n_complete"]) == kept and int(f.attrs["n_planned"]) == 2000
        assert len(set(f["seeds"][:kept].tolist())) == kept  # each sample its own seed
    assert not shards.folder(out).exists()
    assert not _launched_left()
