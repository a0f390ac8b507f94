"""A job run as several processes on this machine's GPUs (or its CPU), for a front end that runs jobs in-process:
the app's "all N GPUs".

The front end hands over a recipe, a picklable callable that builds the job (the same one it would run itself);
each process launched by Accelerate's launcher builds and runs it (engine/runtime/launched_main.py). The main
process's events come back over the job channel, so the front end sees one run: its losses, previews, progress and
checkpoints once. Stop signals the launcher, which passes it on to every process; each stops at the same step and
keeps what it did, as under `medsynth --num-processes` or SLURM.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import pickle
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.jobs import Cancelled, Emit, Job, Message, Requests
from engine.runtime import job_channel, launch

log = logging.getLogger(__name__)

CHILD_MODULE = "engine.runtime.launched_main"
POLL_S = 0.1
# How long the processes have to stop and save after the launcher passed the stop on, before they are killed.
STOP_GRACE_S = launch.SHUTDOWN_SECONDS + 10


class LaunchFailed(Exception):
    """The launched processes failed; the message is the one line to show, the details are in the log."""


class LaunchedJob:
    """`recipe()` run as `processes` processes (one per GPU, or several on the CPU) under Accelerate's launcher."""

    def __init__(self, recipe: Callable[[], Job], processes: int, *, cpu: bool) -> None:
        self.recipe, self.processes, self.cpu = recipe, processes, cpu

    def where(self) -> str:
        return f"{self.processes} processes on the CPU" if self.cpu else f"{self.processes} GPUs"

    def run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="medsynth-launch-") as folder:
            job_file = Path(folder) / "job.pickle"
            with open(job_file, "wb") as f:
                pickle.dump(self.recipe, f)
            listener = job_channel.Listener()
            try:
                return self._run(job_file, listener, emit, requests)
            finally:
                listener.close()

    def _run(self, job_file: Path, listener: job_channel.Listener, emit: Emit, requests: Requests) -> dict[str, Any]:
        cmd = launch.launch_command(self.processes, [str(job_file)], cpu=self.cpu, module=CHILD_MODULE)
        env = {**launch.launch_environment(self.cpu), **listener.environment(), "PYTHONUNBUFFERED": "1"}
        emit(Message(f"Starting {self.where()}…"))
        # Its own session: a Ctrl-C in the terminal that started the app reaches the processes once, from here.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = _Output(proc)
        ended: job_channel.Ended | None = None
        stopped_at: float | None = None
        try:
            while True:
                if requests.stop_asked() and stopped_at is None:
                    proc.send_signal(signal.SIGTERM)  # the launcher passes it on to every process
                    stopped_at = time.monotonic()
                if requests.take_save_now():
                    listener.request(job_channel.SAVE_NOW)
                if requests.take_preview_now():
                    listener.request(job_channel.PREVIEW_NOW)
                finished = proc.poll() is not None
                for message in listener.receive(0.5 if finished else POLL_S):
                    if isinstance(message, job_channel.Ended):
                        ended = message
                    else:
                        emit(message)
                if finished:
                    break
                if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE_S:
                    proc.kill()
        finally:
            if proc.poll() is None:  # the front end itself failed: the processes must not outlive it
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_GRACE_S)
                proc.kill()
        rc = proc.wait()
        output.join()
        return self._outcome(ended, rc, output, stopped_at is not None)

    def _outcome(self, ended: job_channel.Ended | None, rc: int, output: _Output, stopped: bool) -> dict[str, Any]:
        """The run's end as one process's would be: its result, Cancelled, an InputError or a LaunchFailed. Another
        process's failure comes first: the launcher stops the main one, which would otherwise end as if stopped."""
        done = ended.done if ended is not None else None
        if done is not None and not done.cancelled:
            return done.result
        if ended is not None and ended.input_fault is not None:
            raise InputError(*ended.input_fault)
        failed = output.first(launch.FAILED_PREFIX)  # the first process to fail: the others' failures follow from it
        if failed is not None or (ended is not None and ended.failure is not None):
            error = LaunchFailed(f"{failed if failed is not None else f'process 0: {ended.failure}'} "
                                 f"(one of {self.processes} processes)")
            error.add_note(output.text())
            raise error
        said = output.first(launch.ERROR_PREFIX)
        if said is not None:  # another process refused its input: it said so in one line
            raise InputError(None, said)
        if done is not None:
            raise Cancelled("stopped", done.result)
        if stopped:
            raise Cancelled("stopped before the processes began", {})
        error = LaunchFailed(f"the {self.where()} ended with exit code {rc}: {output.last_line()}")
        error.add_note(output.text())
        raise error


class _Output:
    """What the launcher and its processes print, read on a thread so that the pipe never fills: it goes to the log,
    and its lines explain a failure."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self._thread = threading.Thread(target=self._read, args=(proc,), name="launched-output", daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line.strip():
                log.info("launched: %s", line)
                self.lines.append(line)

    def join(self) -> None:
        self._thread.join(5)

    def first(self, prefix: str) -> str | None:
        """The rest of the first line that starts with `prefix`."""
        return next((line[len(prefix):].strip() for line in self.lines if line.startswith(prefix)), None)

    def last_line(self) -> str:
        return self.lines[-1] if self.lines else "(nothing printed)"

    def text(self) -> str:
        return "\n".join(self.lines)
