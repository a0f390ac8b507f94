"""Processes on this machine: how many a job runs as, how many local devices there are, and the command that
starts a job on several of them under Accelerate's launcher.

The launcher is Accelerate's (`accelerate launch`), run as `python -m accelerate.commands.launch` so that it is
the launcher of the same Python the user runs. Several processes on the CPU (a laptop, a test) go through its
multi-process path too: Accelerate's `--cpu` path starts several processes only under MPI, so a CPU run is launched
like a multi-GPU one and each process puts itself on the CPU (TrainJob's Accelerator(cpu=True) gives gloo).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence

from engine.errors import InputError

# Set by torchrun / accelerate launch (and by srun when the user exports it): the processes of one job.
WORLD_ENV = "WORLD_SIZE"


def world_size() -> int:
    """How many processes this job runs as: 1 outside a launcher."""
    try:
        return max(1, int(os.environ.get(WORLD_ENV, "1")))
    except ValueError:
        return 1


def under_launcher() -> bool:
    return WORLD_ENV in os.environ


# Set in each process by `accelerate launch` when the user's Accelerate config shards the model.
SHARDING_ENV = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def check_replicated() -> None:
    """MedSynth trains with DDP: each process holds the whole model, and the main process alone saves it, previews
    and keeps the EMA. A launch whose Accelerate config shards the model (FSDP, DeepSpeed) is refused before any
    work: the main process saving alone would wait forever for the others' shards."""
    for name, what in SHARDING_ENV.items():
        if os.environ.get(name, "false").lower() == "true":
            raise InputError(None, f"your Accelerate config asks for {what}, which MedSynth does not train with (each "
                                   "process holds the whole model, as under DDP); launch with `accelerate launch "
                                   "--multi_gpu`, or `medsynth train --num-processes N`")


def local_gpus() -> int:
    """CUDA devices this process can see (0 on a machine without one)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def on_cpu(device: str, gpus: int) -> bool:
    """Whether a launch of `device` ("auto", "cpu", "cuda") puts its processes on the CPU: asked to, or "auto" on
    a machine without a GPU. "cuda" never does (without a GPU it is refused)."""
    return device == "cpu" or (device != "cuda" and gpus == 0)


def check_processes(n: int, device: str, gpus: int) -> None:
    """A launch asks for no more processes than the GPUs it would run on (one GPU each); on the CPU any count."""
    if n < 1:
        raise InputError(None, f"{n} processes; give 1 or more")
    if under_launcher():
        raise InputError(None, f"already one of {world_size()} launched processes; leave out the process count "
                               "when starting medsynth under accelerate launch, torchrun or srun")
    if not on_cpu(device, gpus) and n > gpus:
        raise InputError(None, f"{n} processes asked for, but this machine has {gpus} GPU{'s' if gpus != 1 else ''}"
                               f" (one process per GPU: give at most {gpus}, or --device cpu)")


def free_port() -> int:
    """A TCP port free now on this machine, for the processes' rendezvous: two launches at once must not meet."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(n: int, module_args: Sequence[str], *, cpu: bool, module: str = "medsynth",
                   port: int | None = None) -> list[str]:
    """The command that runs `python -m module *module_args` as `n` processes on this machine's devices."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port or free_port())]
    if n > 1:
        cmd.append("--multi_gpu")  # the multi-process path (torchrun); on the CPU each process then chooses gloo
    elif cpu:
        cmd.append("--cpu")
    return [*cmd, "-m", module, *module_args]


# The launcher passes a stop on to its processes and gives them this long to save before it kills them: the
# torch default (30 s) is short for a large model's checkpoint on a shared file system.
SHUTDOWN_SECONDS = 110  # within the 120 s of `#SBATCH --signal=USR1@120`
# Signals the launcher passes on: its own four, and SIGUSR1, SLURM's warning before a pre-emption.
LAUNCHER_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def launch_environment(cpu: bool) -> dict[str, str]:
    """The environment of a launch: on the CPU, no process sees a GPU, so none of them takes one."""
    env = dict(os.environ)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_SECONDS))
    env.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", LAUNCHER_SIGNALS)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


_LOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")  # torch elastic's own log lines
_ROOT_CAUSE = re.compile(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", re.DOTALL)
ERROR_PREFIX = "medsynth: error:"
# What a process launched for the app says, in one line, before the traceback of a failure (a bug, not bad input).
FAILED_PREFIX = "medsynth: failed in"
# How a MedSynth process ends (the CLI, each launched process): bad input it said in one line, stopped and saved.
EXIT_INPUT, EXIT_STOPPED = 2, 130
# A process's own ending that it has already told the user about.
SAID = (EXIT_INPUT, EXIT_STOPPED)


class LauncherOutput:
    """The launched processes' stderr as the user should see it: what the processes say, once, without the
    launcher's own log lines, and without its traceback when a process ended in a way it already said in one line
    (bad input, a stop). Progress bars (lines redrawn with \\r) pass through as they come."""

    def __init__(self) -> None:
        self.line = ""  # the line being received
        self.written = 0  # how much of it has already been passed on
        self.held: list[str] | None = None  # a traceback being received, decided on at the end
        self.errors: set[str] = set()

    def feed(self, text: str) -> str:
        """What to show now of the next piece of output."""
        out = []
        for piece in text.splitlines(keepends=True):
            self.line += piece
            if self.line.endswith("\n"):
                out.append(self._complete(self.line)[self.written:])
                self.line, self.written = "", 0
            elif "\r" in self.line and self.held is None:
                out.append(self.line[self.written:])
                self.written = len(self.line)
        return "".join(out)

    def _complete(self, line: str) -> str:
        if self.held is not None:
            self.held.append(line)
            return ""
        if self.written == 0 and line.startswith("Traceback (most recent call last)"):
            self.held = [line]
            return ""
        if _LOG_LINE.match(line):
            return ""
        if line.startswith(ERROR_PREFIX):
            if line in self.errors:  # every process refuses the same input: said once
                return ""
            self.errors.add(line)
        return line

    def finish(self, rc: int) -> tuple[str, int]:
        """What is left to show at the end, and the exit code of the run: the processes' own where they said it."""
        rest = self.feed("\n") if self.line else ""
        held = "".join(self.held or [])
        if "ChildFailedError" in held and (found := _ROOT_CAUSE.search(held)) and int(found.group(1)) in SAID:
            return rest, int(found.group(1))
        return rest + held, rc
