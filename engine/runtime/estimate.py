"""How long a training run will take on this device, said before the user waits for it.

The figure is measured, not modelled: the first steps of the run itself are timed
(after the very first, which pays for one-time library set-up), and the remaining
steps are priced at that rate. A preset sized for a GPU is named as such when the
run is on a CPU, with the figure, so nobody starts a day-long run unawares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.config import preset_device
from engine.jobs import Message

# Timed steps after the first; three are enough for a figure within the run-to-run spread here.
WARMUP_STEPS = 3


def format_duration(seconds: float) -> str:
    """A duration as people say it: "40 s", "12 min", "2 h 10 min", "3 days 4 h"."""
    s = max(0, round(seconds))
    if s < 90:
        return f"{s} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h" if hours else f"{days} days"


@dataclass
class Estimate(Message):
    """The measured time of the whole run, sent once the warm-up steps are timed."""

    seconds: float = 0.0
    steps: int = 0
    seconds_per_step: float = 0.0
    warning: bool = False  # a GPU preset on a CPU


def gpu_preset_on_cpu(preset: str, device: str) -> bool:
    return device == "cpu" and bool(preset) and preset_device(preset) == "gpu"


def device_warning(preset: str, device: str) -> str:
    """A line for a preset sized for a GPU when the run is on a CPU; empty otherwise."""
    if not gpu_preset_on_cpu(preset, device):
        return ""
    return (f"The {preset} preset is sized for a GPU and this run is on the CPU: expect hours to days "
            "(the estimate follows after a few steps).")


def describe(seconds_per_step: float, steps: int, device_name: str, preset: str, device: str,
             what: str = "training") -> Estimate:
    """The estimate's words; `what` names the part timed ("training", or a latent run's first stage)."""
    total = seconds_per_step * steps
    where = "this CPU" if device == "cpu" else device_name
    text = (f"about {format_duration(total)} on {where} ({steps:,} steps × {seconds_per_step:.2f} s, "
            f"measured over {WARMUP_STEPS} warm-up steps)")
    warn = gpu_preset_on_cpu(preset, device)
    text = f"The {preset} preset is sized for a GPU: {what} will take {text}" if warn else \
        f"{what[0].upper()}{what[1:]} will take {text}"
    return Estimate(text, total, steps, seconds_per_step, warn)


class StepTimer:
    """Times the first steps of a run and reports the estimate once, through `report`.

    `sync` waits for queued device work (CUDA runs asynchronously), so that a step's time
    is its kernels' time and not their launch time.
    """

    def __init__(self, start: int, total: int, report: Callable[[float, int], None],
                 sync: Callable[[], None] = lambda: None) -> None:
        self.start, self.total, self.report, self.sync = start, total, report, sync
        self.marks: list[float] = []
        self.finished = total - start < 2  # one step alone gives nothing to time after the first

    def __call__(self, step: int) -> None:
        """Call after `step` (counted from 1) has finished."""
        if self.finished:
            return
        done = step - self.start
        if done == 1 or done == 1 + WARMUP_STEPS or step == self.total:
            self.sync()
            self.marks.append(time.perf_counter())
        if len(self.marks) == 2 or (step == self.total and self.marks):
            timed = min(WARMUP_STEPS, done - 1)
            if timed > 0:
                self.report((self.marks[-1] - self.marks[0]) / timed, self.total - self.start)
            self.finished = True
