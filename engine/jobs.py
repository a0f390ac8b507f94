"""The job contract: what the CLI, the GUI and tests rely on when they run a job (one home).

A job is an object with ``run(emit, requests) -> result``:

- it reports through ``emit`` with the small event dataclasses below, so the caller decides how to show
  progress (tqdm, Qt signals, a list in a test);
- it polls ``requests`` (a :class:`Requests`) between steps: a stop, and the one-shot "save now" and
  "preview now";
- it returns its result (a plain dict) when it finishes, and raises :class:`Cancelled`, carrying the result
  so far, when it honoured a stop. Either way it has kept what was done: a cancelled training run has saved
  its checkpoint, a cancelled sampling run its complete samples, a cancelled evaluation its figures so far.

:func:`execute` turns both endings into one :class:`Done`; the front ends call it rather than ``run``, so
``Done`` is never emitted, only returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class Progress:
    stage: str  # "train", "sample", "load", an evaluation Stage, ...
    done: int
    total: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Loss:
    step: int
    loss: float
    lr: float


@dataclass
class Preview:
    step: int
    images: Any  # numpy (N, C, H, W) in data units


@dataclass
class Checkpoint:
    step: int
    path: str


@dataclass
class Message:
    text: str


class DataSummary(Message):
    """What a job found in its data (mask labels and their coding, model size), said before it starts;
    a front end keeps it in view rather than letting progress overwrite it."""


Event = Progress | Loss | Preview | Checkpoint | Message
Emit = Callable[[Event], None]


@dataclass
class Done:
    """How a job ended: its result, and whether it ended early because a stop was asked."""

    result: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False


@dataclass
class Failed:
    """A job that raised: the one line a front end shows, and the error for its log."""

    message: str
    error: BaseException | None = None


class Cancelled(Exception):
    """A stop was asked and honoured; the one way every job (and anything it calls) ends early.

    Raised once what was done is kept. ``result`` is the job's result so far, shaped as ``run`` would have
    returned it; code below a job (a sampler loop, a utility training) raises it bare and the job re-raises
    it with its result.
    """

    def __init__(self, message: str = "stopped", result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result: dict[str, Any] = result if result is not None else {}


class Requests:
    """What a front end asks of a running job: stop, save a checkpoint now, draw a preview now.

    The front end (the CLI's Ctrl-C handler, the app's buttons) calls ``stop`` / ``save_now`` /
    ``preview_now`` from its own thread; the job polls with ``stop_asked`` / ``check`` and takes the one-shot
    requests with ``take_save_now`` / ``take_preview_now`` once a step. Plain attributes rather than Qt signals
    keep the engine Qt-free; single attribute writes are safe across threads under the GIL. Jobs that have
    nothing to save or preview ignore those two.
    """

    def __init__(self) -> None:
        self._stop = False
        self._save_now = False
        self._preview_now = False

    # ---- the front end's side
    def stop(self) -> None:
        """Ask the job to end at its next poll, keeping what it has done."""
        self._stop = True

    def save_now(self) -> None:
        """Ask for a checkpoint at the next step (training)."""
        self._save_now = True

    def preview_now(self) -> None:
        """Ask for a preview of what the model makes at the next step (training)."""
        self._preview_now = True

    # ---- the job's side
    def stop_asked(self) -> bool:
        return self._stop

    def check(self, where: str = "stopped") -> None:
        """Raise Cancelled if a stop was asked; ``where`` says how far the work got."""
        if self.stop_asked():
            raise Cancelled(where)

    def take_save_now(self) -> bool:
        asked, self._save_now = self._save_now, False
        return asked

    def take_preview_now(self) -> bool:
        asked, self._preview_now = self._preview_now, False
        return asked


@runtime_checkable
class Job(Protocol):
    def run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        """Do the work, reporting through ``emit`` and polling ``requests``; return the result.

        On a stop: keep what was done, then raise ``Cancelled`` with the result so far.
        """
        ...


def execute(job: Job, emit: Emit, requests: Requests) -> Done:
    """Run a job to its end, whichever it is: the one place a front end turns ``Cancelled`` into a Done."""
    try:
        return Done(job.run(emit, requests))
    except Cancelled as stop:
        return Done(stop.result, cancelled=True)
