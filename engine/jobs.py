"""Jobs and the events they emit: the one interface the CLI, the GUI and tests share.

A job is a plain object with ``run(emit, cancelled)``. It reports through small
event dataclasses and polls ``cancelled()`` between steps, so the caller decides
how to show progress (tqdm, Qt signals, a list in a test) and when to stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Progress:
    stage: str  # "train", "sample", "load", ...
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


@dataclass
class Done:
    result: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False


@dataclass
class Failed:
    message: str
    error: BaseException | None = None


Event = Progress | Loss | Preview | Checkpoint | Message | Done | Failed
Emit = Callable[[Event], None]
Cancelled = Callable[[], bool]


class Job(Protocol):
    def run(self, emit: Emit, cancelled: Cancelled) -> dict[str, Any]: ...


class Requests:
    """Requests a running job polls once a step (stop, sample now, save now).

    Plain attributes rather than Qt signals keep the engine Qt-free; the GUI and
    the CLI's signal handler set them from another thread, which is safe for
    simple attribute writes under the GIL.
    """

    def __init__(self) -> None:
        self.stop = False
        self.sample_now = False
        self.save_now = False

    def cancelled(self) -> bool:
        return self.stop

    def take(self, name: str) -> bool:
        """Return a one-shot request and clear it."""
        value = getattr(self, name)
        setattr(self, name, False)
        return bool(value)
