"""The base of the panels that run an engine job: its runner, Run / Stop, progress, status and error lines.

A panel builds its job in start() and hands it to launch(); the base keeps the buttons in step
with the runner (Run and the settings usable only while idle, Stop only while a job runs) and
turns a failure into one line on the error line. Subclasses lay the shared widgets out where they
fit and react to the job's events and result in _on_event and _on_done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from PySide6.QtWidgets import QProgressBar, QPushButton, QWidget

from engine.jobs import Done, Job
from medsynth_gui.panels.widgets import status_labels
from medsynth_gui.worker import JobRunner


class JobPanel(QWidget):
    """A panel that runs one engine job at a time off the GUI thread."""

    def __init__(self, run_text: str, parent: QWidget | None = None, *, one_line_status: bool = False) -> None:
        super().__init__(parent)
        self.runner = JobRunner(self)
        self.runner.event.connect(self._on_event)
        self.runner.done.connect(self._on_done)
        self.runner.failed.connect(self._on_failed)
        self.runner.running_changed.connect(self._on_running)
        self.run_btn = QPushButton(run_text)
        self.stop_btn = QPushButton("Stop")
        self.run_btn.clicked.connect(self.start)
        self.stop_btn.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.status, self.error = status_labels(one_line=one_line_status)
        self._idle_only: list[QWidget] = [self.run_btn]
        self._running_only: list[QWidget] = [self.stop_btn]
        self._on_running(False)

    def enable_while(self, idle: Iterable[QWidget] = (), running: Iterable[QWidget] = ()) -> None:
        """Widgets usable only while no job runs (the settings, Resume) or only while one runs (Save now)."""
        self._idle_only += idle
        self._running_only += running
        self._on_running(self.runner.running)

    # -- actions ------------------------------------------------------------------------
    def start(self) -> None:
        """Build the job from the panel's fields and launch it, or say on the error line what is missing."""
        raise NotImplementedError

    def launch(self, job: Job, status: str) -> None:
        self.status.setText(status)
        self.runner.start(job)

    def launch_on(self, recipe: Callable[[], Job], job: Job, status: str, processes: int, gpus: int,
                  device: str = "auto") -> None:
        """Launch `job` here, or with several `processes` the job `recipe` builds, as that many processes on
        this machine's `gpus` (or its CPU when `device` says so); their main process reports here."""
        if processes > 1:
            from engine.runtime.launch import on_cpu
            from engine.runtime.launched_job import LaunchedJob

            job = LaunchedJob(recipe, processes, cpu=on_cpu(device, gpus))
            status = f"Starting {job.where()}…"
        self.launch(job, status)

    def stop(self) -> None:
        """Ask the running job to stop; it ends at its next step and reports what it kept."""
        if self.runner.running:
            self.runner.stop()

    def show_error(self, text: str) -> None:
        """One line a user can act on, in red; an empty text hides the line."""
        self.error.setText(text)
        self.error.setVisible(bool(text))

    # -- the runner's signals -----------------------------------------------------------
    def _on_running(self, running: bool) -> None:
        for w in self._idle_only:
            w.setEnabled(not running)
        for w in self._running_only:
            w.setEnabled(running)

    def _on_event(self, ev: object) -> None:
        """A Progress, Message, Preview… from the running job; each panel shows the ones it knows."""

    def _on_done(self, done: Done) -> None:
        """The job ended, finished or stopped; each panel shows its result."""

    def _on_failed(self, message: str) -> None:
        self.status.setText("Failed")
        self.show_error(message)
