"""While a job runs in its worker thread, cyclic garbage is collected on the GUI thread only (a collection in the
worker that destroyed a Qt object deadlocked against the GUI thread at the end of a training run)."""

from __future__ import annotations

import gc
import threading

from engine.jobs import Requests
from medsynth_gui import gui_gc
from medsynth_gui.worker import JobRunner


class _MakesCycles:
    """A job that leaves plenty of cyclic garbage behind, as a training loop's objects can."""

    def run(self, emit, requests: Requests) -> dict:
        for _ in range(30_000):
            a: list = []
            a.append(a)
        return {"made": 30_000}


def test_collections_during_a_job_happen_on_the_gui_thread(qtbot):
    gui = threading.get_ident()
    where: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            where.append(threading.get_ident())

    runner = JobRunner()
    gc.callbacks.append(record)
    try:
        with qtbot.waitSignal(runner.done, timeout=60_000):
            runner.start(_MakesCycles())
            assert gui_gc.collecting_on_gui_thread()
        assert where and set(where) == {gui}  # the garbage was collected, and only here
    finally:
        gc.callbacks.remove(record)
    assert gc.isenabled() and not gui_gc.collecting_on_gui_thread()
