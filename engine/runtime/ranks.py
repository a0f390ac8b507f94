"""This process among those a launcher started (`accelerate launch`, `torchrun`, `srun` running either): which one it
is, how many there are, and what they share — a sum, and an answer (or a refusal) from the main process.

The launchers say it in the environment (WORLD_SIZE, RANK, LOCAL_RANK); Accelerate's PartialState reads it, joins
the process group (gloo on the CPU, NCCL on GPUs) and puts each process on its own GPU. One process alone needs none
of it: every call below is then a plain local one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from engine.errors import InputError

T = TypeVar("T")


class PeerLost(RuntimeError):
    """A process of the run ended (killed, crashed) while the others waited for it in a collective call."""


def launched_processes() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def launched_rank() -> int:
    """This process's number among them (0, the main process, without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


class Ranks:
    """The launched processes, joined: `rank`, `size`, `main`; `all_sum` and `from_main` are collective (every
    process calls them, in the same order)."""

    def __init__(self, cpu: bool) -> None:
        self.rank, self.size = 0, 1
        self.device: Any = None
        if launched_processes() > 1:
            from accelerate import PartialState

            state = PartialState(cpu=cpu)
            self.rank, self.size, self.device = state.process_index, state.num_processes, state.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes."""
        if self.size == 1:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        try:
            dist.all_reduce(t)
        except RuntimeError as exc:  # gloo: "Connection closed by peer"; NCCL: an aborted communicator
            raise PeerLost(str(exc)) from exc
        return t.tolist()

    def close(self) -> None:
        """Every process waits for the others, then leaves the group. A process that exits while another is still
        in the group made gloo abort it at exit ("terminate called without an active exception", exit -6)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.barrier()
            except RuntimeError as exc:
                raise PeerLost(str(exc)) from exc
            finally:
                dist.destroy_process_group()

    def from_main(self, work: Callable[[], T]) -> T:
        """`work()` done by the main process alone, its answer given to every process; a refusal (InputError)
        there is the same refusal everywhere, any other failure a RuntimeError elsewhere, so no process waits
        for one that has given up."""
        if self.size == 1:
            return work()
        import torch.distributed as dist

        box: list[Any] = [None]
        failure: BaseException | None = None
        if self.main:
            try:
                box[0] = ("ok", work())
            except InputError as exc:
                box[0], failure = ("refused", exc.path, exc.fault), exc
            except Exception as exc:
                box[0], failure = ("failed", f"{type(exc).__name__}: {exc}"), exc
        try:
            dist.broadcast_object_list(box, src=0, device=self.device)
        except RuntimeError as exc:
            raise PeerLost(str(exc)) from exc
        kind, *rest = box[0]
        if failure is not None:
            raise failure
        if kind == "refused":
            raise InputError(*rest)
        if kind == "failed":
            raise RuntimeError(f"the main process failed: {rest[0]}")
        return rest[0]
