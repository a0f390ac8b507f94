"""What a training loop reports as it goes: Progress each step, and per logging window the mean loss
and images/s, as a Loss event and a row of the run folder's loss log."""

from __future__ import annotations

import time
from typing import Any

import torch

from engine.config import TrainConfig
from engine.jobs import Emit, Loss, Progress
from engine.training.run_dir import LossLog


class TrainMeter:
    """The loss and images/s of each logging window, sent as events and written to the loss log."""

    def __init__(self, acc: Any, tc: TrainConfig, start: int, log: LossLog | None) -> None:
        self.acc, self.tc, self.log = acc, tc, log
        self.world = acc.num_processes
        # A short run still draws a curve: at least about twenty points whatever the preset's interval.
        self.every = max(1, min(tc.log_every, tc.steps // 20))
        self.running = torch.zeros((), device=acc.device)
        self.t0 = self.t_last = time.perf_counter()
        self.step_last = start
        self.loss = self.images_per_s = float("nan")
        cuda = acc.device.type == "cuda"
        self.device_name = torch.cuda.get_device_name(acc.device) if cuda else "CPU"

    def after(self, step: int, loss: torch.Tensor, lr: float, emit: Emit) -> None:
        """Count a finished step; at the end of a window, report and log its mean loss and images/s."""
        self.running += loss.detach()
        if step % self.every == 0 or step == self.tc.steps:
            self._window(step, lr, emit)
        info = {"loss": self.loss, "images_per_s": self.images_per_s, "device": self.device_name}
        if self.acc.device.type == "cuda":
            info["gpu_mem_gib"] = torch.cuda.memory_allocated() / 2**30
        emit(Progress("train", step, self.tc.steps, info))

    def _window(self, step: int, lr: float, emit: Emit) -> None:
        mean = self.acc.reduce(self.running, "mean") if self.world > 1 else self.running
        self.loss = float(mean.item()) / max(1, step - self.step_last)
        self.running.zero_()
        now = time.perf_counter()
        self.images_per_s = (step - self.step_last) * self.tc.batch * self.world / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step
        emit(Loss(step, self.loss, lr))
        if self.log is not None:
            self.log.write({"step": step, "loss": round(self.loss, 6), "lr": lr,
                            "images_per_s": round(self.images_per_s, 2), "time": round(now - self.t0, 3)})
