"""The one bridge between Qt and the engine: a job runs in a QThread, its events become signals.

Events are throttled to about ten updates a second (losses batched, only the
latest progress kept) so a fast job cannot flood the event loop; stop, save-now
and preview-now travel in the job's Requests, which it polls every step. A job's bad input
reaches its panel as one line; a bug's traceback goes to the log file, and the panel
says where.
"""

from __future__ import annotations

import logging
import time

from PySide6.QtCore import QObject, QThread, Signal, Slot

from engine.errors import InputError
from engine.jobs import Done, Event, Failed, Job, Loss, Progress, Requests, execute
from medsynth_gui import gui_gc
from medsynth_gui.logfile import record_failure

log = logging.getLogger(__name__)
INTERVAL_S = 0.1


def describe_failure(exc: BaseException) -> str:
    """One line a user can act on; the traceback goes to the log, not the screen."""
    if isinstance(exc, InputError):
        return str(exc)
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return ("The GPU ran out of memory. Try a smaller batch, a smaller image size, "
                "or the CPU; the last checkpoint is kept.")
    return f"{name}: {exc}"


class _Worker(QObject):
    event = Signal(object)
    losses = Signal(list)
    finished = Signal(object)  # Done or Failed

    def __init__(self, job: Job, requests: Requests) -> None:
        super().__init__()
        self.job = job
        self.requests = requests
        self._pending_losses: list[Loss] = []
        self._pending_progress: Progress | None = None
        self._last = 0.0

    def _flush(self) -> None:
        if self._pending_losses:
            self.losses.emit(self._pending_losses)
            self._pending_losses = []
        if self._pending_progress is not None:
            self.event.emit(self._pending_progress)
            self._pending_progress = None
        self._last = time.monotonic()

    def _emit(self, ev: Event) -> None:
        if isinstance(ev, Loss):
            self._pending_losses.append(ev)
        elif isinstance(ev, Progress):
            self._pending_progress = ev
        else:
            self._flush()
            self.event.emit(ev)
            return
        if time.monotonic() - self._last >= INTERVAL_S:
            self._flush()

    @Slot()
    def run(self) -> None:
        outcome: Done | Failed
        try:
            outcome = execute(self.job, self._emit, self.requests)
        except InputError as exc:
            log.info("%s stopped on bad input: %s", type(self.job).__name__, exc)
            outcome = Failed(describe_failure(exc), exc)
        except BaseException as exc:  # noqa: BLE001 — every failure must reach the panel, not kill the app
            where = record_failure(exc, f"{type(self.job).__name__} failed")
            outcome = Failed(f"{describe_failure(exc)} (details in {where})", exc)
        self._flush()
        self.finished.emit(outcome)
        # The thread ends itself so that JobRunner.wait() can block without a deadlock.
        QThread.currentThread().quit()


class JobRunner(QObject):
    """Runs one job at a time off the GUI thread. Panels connect to its signals."""

    event = Signal(object)  # Progress, Preview, Checkpoint, Message
    losses = Signal(list)  # list[Loss], batched
    done = Signal(object)  # Done
    failed = Signal(str)
    running_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: _Worker | None = None
        self.requests = Requests()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, job: Job) -> None:
        if self.running:
            raise RuntimeError("a job is already running")
        self.requests = Requests()  # the job's: what stop(), save_now() and preview_now() reach
        thread = QThread()
        worker = _Worker(job, self.requests)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.event.connect(self.event)
        worker.losses.connect(self.losses)
        worker.finished.connect(self._finished)
        self._thread, self._worker = thread, worker
        gui_gc.job_started()
        thread.start()
        self.running_changed.emit(True)

    def stop(self) -> None:
        self.requests.stop()

    def save_now(self) -> None:
        self.requests.save_now()

    def preview_now(self) -> None:
        self.requests.preview_now()

    def wait(self, timeout_ms: int = 60_000) -> bool:
        """Block until the job ends (used when the window closes mid-run)."""
        thread = self._thread
        if thread is None:
            return True
        ok = thread.wait(timeout_ms)
        from PySide6.QtCore import QCoreApplication

        QCoreApplication.processEvents()
        return ok

    @Slot(object)
    def _finished(self, outcome: Done | Failed) -> None:
        thread = self._thread
        self._thread = self._worker = None
        if thread is not None:
            thread.wait()
            thread.deleteLater()
            gui_gc.job_ended()
        self.running_changed.emit(False)
        if isinstance(outcome, Failed):
            self.failed.emit(outcome.message)
        else:
            self.done.emit(outcome)
