"""An evaluation across the processes of a launch (`accelerate launch`, `torchrun`, `srun`): which images
this process measures, and how the parts become the whole.

The per-image work of an evaluation — Inception or a user's network's features, radiomic features, each
sample's nearest training image — is split by image index into one contiguous block per process; every
process computes its block and the blocks are gathered, in rank order, on every process. The whole is then
the array one process would have computed, row for row, and every figure built on it equals one process's:
exactly where a block's rows are computed as one process computes them (blocks that start on a batch
boundary of a batched network; radiomics, which is per image), to float rounding where a matrix product of
another shape may round differently (the nearest-training correlations, ~1e-7).

What does not pay to split is not split. Every process reads the sets, and computes the distances on the
gathered features and the MS-SSIM diversity (a fixed 200 pairs, seconds) as the main process does, so that
no process waits for another between the per-image stages; each process's copy is the same. The stages
through the nearest-training search (`TOGETHER`) are the only ones the other processes take part in: they
end there, writing nothing. The label and utility training (a few hundred steps of small networks, which
run last), the results in the file and the report are the main process's alone: training them on every
process would only repeat one answer.

Every process must read the same files (a shared file system, as the launch's other jobs need). A stop asked
of any process stops all of them at the same point (`Shards.checker`): a process that stopped alone would
leave the others waiting for its block.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from math import lcm
from typing import Any

import numpy as np

from engine.evaluation.stages import Stage
from engine.jobs import Cancelled, Requests

# The stages every process takes part in: the first ones, so that after the last the others have nothing left.
TOGETHER = (Stage.LOAD, Stage.FID, Stage.FEATURES, Stage.RADIOMICS, Stage.DIVERSITY, Stage.MEMORIZATION)


def main_process() -> bool:
    """Whether this process speaks for the launch: outside a launcher, or its first process (rank 0)."""
    return os.environ.get("RANK", "0") == "0"


class Shards:
    """This process's place in the launch: `rank` of `world`, and the device it computes on."""

    def __init__(self, rank: int = 0, world: int = 1, device: str = "cpu") -> None:
        self.rank, self.world, self.device = rank, world, device

    @classmethod
    def of_launch(cls, device: str) -> Shards:
        """The launch this process belongs to (one process alone outside a launcher); joining it starts the
        process group (gloo on the CPU, NCCL on GPUs) through Accelerate, once per process."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(device=device)
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        # On GPUs each process takes its own (cuda:LOCAL_RANK), which Accelerate has chosen.
        return cls(state.process_index, state.num_processes, str(state.device) if device != "cpu" else device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def takes_part(self, stage: Stage) -> bool:
        return self.main or stage in TOGETHER

    def block(self, n: int, align: int = 1) -> slice:
        """This process's rows of `n`: contiguous, in rank order, starting on a multiple of `align` (a batch
        size), so that every batch is the one a single process would run. Some processes may get none."""
        units = -(-n // align)
        start, stop = (units * self.rank // self.world) * align, (units * (self.rank + 1) // self.world) * align
        return slice(min(start, n), min(stop, n))

    def rows(self, fn: Callable[[Any], Any], items: Any, align: int = 1) -> Any:
        """`fn(items)` computed by blocks across the processes: `fn` maps items (a sequence of images) to rows
        in their order — an array, or a dict or tuple of arrays — and every process gets the whole."""
        if self.world == 1 or len(items) == 0:
            return fn(items)
        part = self.block(len(items), align)
        mine = fn(items[part]) if part.stop > part.start else None
        return _joined([p for p in self._gather(mine) if p is not None])

    def image_rows(self, fn: Callable[[np.ndarray], Any], images: np.ndarray, batch: int, per_image: int = 1) -> Any:
        """`rows` for a network that takes `batch` rows at a time, each image giving `per_image` rows (slices of
        a volume): blocks of whole images whose rows start on a batch boundary."""
        return self.rows(fn, images, align=lcm(per_image, batch) // per_image)

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any process (every process must ask, the same number of times)."""
        if self.world == 1:
            return flag
        return any(self._gather(bool(flag)))

    def checker(self, requests: Requests, stage: Stage) -> Callable[[], None]:
        """The stop check (raises Cancelled) for a stage: in the stages the processes share, one that stops every
        process at the same point when any was asked to; in the main process's own, its own requests'."""
        if self.world == 1 or stage not in TOGETHER:
            return requests.check

        def check() -> None:
            if self.any(requests.stop_asked()):
                raise Cancelled("stopped")

        return check

    def leave(self) -> None:
        """Leave the process group after the last stage the processes share. The main process then runs on
        alone, and MONAI's metrics (a Dice) must not wait for the others to add theirs: they sync whenever a
        process group exists."""
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def _gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _joined(parts: list[Any]) -> Any:
    """Row blocks (arrays, or dicts or tuples of them, alike in every block) joined in order."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: _joined([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(_joined([p[i] for p in parts]) for i in range(len(first)))
    return np.concatenate(parts)
