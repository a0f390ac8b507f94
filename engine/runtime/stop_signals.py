"""Which signals stop a job cleanly, and the handlers that turn them into a stop request (one home for the CLI
and for the processes the app launches).

SIGTERM is what SLURM, systemd and a launcher passing on a stop send before they kill; SIGUSR1 is what
`#SBATCH --signal=USR1@120` sends ahead of a pre-emption. Both stop after the current step and keep what is done.
The first SIGINT (Ctrl-C) does the same; a second one aborts without saving.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from engine.jobs import Requests

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1) if hasattr(signal, "SIGUSR1") \
    else (signal.SIGTERM,)
# The exit codes of a launcher that passed one of these on to its processes, which stopped and saved.
STOPPED_LAUNCHER_CODES = frozenset(128 + sig for sig in (signal.SIGINT, *STOP_SIGNALS))


@contextlib.contextmanager
def stopping_on_signals(requests: Requests, say: Callable[[str], None]) -> Iterator[None]:
    """While inside, the stop signals and a first Ctrl-C ask `requests` to stop; `say` tells the user so."""

    def on_sigint(signum: int, frame: Any) -> None:
        if requests.stop_asked():
            raise KeyboardInterrupt
        requests.stop()
        say("stopping after this step (Ctrl-C again to abort without saving)...")

    def on_stop(signum: int, frame: Any) -> None:
        requests.stop()
        say("terminated: stopping after this step and keeping what is done...")

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, on_sigint)}
    previous.update({sig: signal.signal(sig, on_stop) for sig in STOP_SIGNALS})
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
