"""How many CPU threads torch uses for a job: the cores that other processes leave free.

torch starts one thread per core. When other processes already keep cores busy, its
threads wait for each other at every operation while one of them is descheduled: on a
2-core machine with a load of 3-4, generating 16 demo samples took 16-48 s with two
threads and 7-8 s with one, training steps likewise. So a job on the CPU takes the
cores that are idle when it starts (at least one), unless the user fixed the count with
OMP_NUM_THREADS or MEDSYNTH_THREADS.
"""

from __future__ import annotations

import os


def threads_for(cores: int, load: float, default: int) -> int:
    """Threads for `cores` cores of which `load` (the 1-minute load average) are busy, at most `default`."""
    return max(1, min(default, cores - int(load + 0.5)))


_TORCH_DEFAULT: list[int] = []  # torch's own count, read before this module first changes it


def use_free_cores() -> int:
    """Set torch's thread count for a CPU job from the machine's load now; returns the count."""
    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(torch.get_num_threads())
    fixed = os.environ.get("MEDSYNTH_THREADS")
    if fixed:
        torch.set_num_threads(max(1, int(fixed)))
    elif "OMP_NUM_THREADS" not in os.environ and hasattr(os, "getloadavg"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(threads_for(cores, os.getloadavg()[0], _TORCH_DEFAULT[0]))
    return torch.get_num_threads()
