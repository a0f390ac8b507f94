"""A sampling job under several processes (`accelerate launch`, `torchrun`, `srun`), and any resumed one.

The run's batches (samples lo..hi-1, as one process would draw them) are dealt out in turn: batch k to process
k mod P. Each process writes the batches it drew to its own shard; when all are drawn the main process merges the
shards into the one file asked for (engine/io/shards.py: where shards lie, and why a merge). Sample i is drawn from
seed SEED + i whichever process draws it, in a batch of the same samples, so the file equals one process's.

Every round the processes sum two numbers: a stop asked of any of them (Ctrl-C, SIGTERM, the app's Stop) and the
samples drawn, so all stop after the same round, keeping what they drew, and the main process alone reports
progress. A resume (also on another number of processes, or of one process's unfinished file) reads what the
earlier attempts left, draws only the batches still missing and merges everything.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from engine.io import destination, shards
from engine.io.medsynth_writer import SampleWriter
from engine.jobs import Cancelled, Emit, Message, Progress, Requests
from engine.runtime.ranks import PeerLost, Ranks


@dataclass
class Plan:
    """What the main process found: the attempt's number, the batches still to draw, how many were drawn
    before; `whole` when the file asked for is already complete."""

    attempt: int
    todo: list[tuple[int, int]]
    done_before: int
    whole: bool = False


def _silent(ev: Any) -> None:
    """Processes other than the main one report nothing: the console shows one run."""


class ShardedRun:
    """`job` (a SampleJob) run by this process as one of `ranks`."""

    def __init__(self, job: Any, ranks: Ranks) -> None:
        self.job, self.ranks = job, ranks

    def run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        job, ranks = self.job, self.ranks
        emit = emit if ranks.main else _silent
        with contextlib.ExitStack() as held:
            # One lock for the file, its partial file and its shards, held by the main process for the whole run.
            ranks.from_main(lambda: held.enter_context(destination.writer_lock(job.out)))
            d = job.prepare()
            identity = job.identity(d)
            plan = ranks.from_main(lambda: self._plan(identity))
            t0 = time.perf_counter()
            result = {"out": str(job.out), "n": job.n, "checkpoint": str(d.gen.ckpt), "processes": ranks.size,
                      "main_process": ranks.main}
            if plan.whole:
                emit(Message(f"{job.out} already holds all {job.n} samples"))
                ranks.close()
                return {**result, "seconds": 0.0}
            emit(job.start_message(d, ranks.size))
            if plan.done_before:
                emit(Message(f"resuming: {plan.done_before} of {job.n} samples were drawn before; drawing the "
                             f"{job.n - plan.done_before} missing"))
            try:
                drawn, stopped, redrawn, still_wrong = self._draw(d, identity, plan, emit, requests, t0)
            except PeerLost:
                # What this process drew is kept (its shard is closed whole); the others' shards say theirs.
                emit(Message("a process of this run ended unexpectedly; the samples drawn are kept for a resume"))
                raise Cancelled("a process of this run was lost",
                                {**result, "n": None, "lost": True, "shards": str(shards.folder(job.out))}) from None
            result.update(seconds=time.perf_counter() - t0, drawn=drawn)
            held = plan.done_before + drawn
            stopped = stopped and held < job.n  # a stop after the last batch ends the run

            def merge() -> int:
                """FILE.h5 from the shards: all of it; after a stop, the samples drawn from the first without a gap
                (every one drawn when all processes stopped after the same batch: then the shards go too), as a
                single process's stopped file, which a resume continues."""
                found = shards.pieces(job.out, identity, job.seeds_fit)
                upto = shards.prefix(job.n, found) if stopped else None
                if upto != 0:
                    shards.merge(job.out, job.n, d.image_shape, job.header(d.gen), found, masks=d.masks,
                                 labels=d.labels is not None, prompts=d.texts is not None, batch=job.batch,
                                 progress=lambda k: emit(Progress("merge", k, upto or job.n, {})), upto=upto,
                                 job=identity, keep_shards=upto is not None and upto < held)
                return job.n if upto is None else upto

            in_file = ranks.from_main(merge)
            if stopped:
                kept = in_file < held or not in_file
                result.update(n=held, in_file=in_file, shards=str(shards.folder(job.out)) if kept else None)
                job.finish(d, result, redrawn, still_wrong, emit)
                ranks.close()
                raise Cancelled("sampling stopped", result)
            result["seconds"] = time.perf_counter() - t0
            done = job.finish(d, result, redrawn, still_wrong, emit)
            ranks.close()
            return done

    def _plan(self, identity: dict[str, Any]) -> Plan:
        """The main process's look at what earlier attempts left (a resume), or a clean start."""
        job = self.job
        if not job.resume:
            if job.overwrite:
                shards.remove(job.out)
            else:
                shards.check_clear(job.out)
            return Plan(shards.next_attempt(job.out), shards.missing(job.n, job.batch, []), 0)
        if shards.whole(job.out, job.n):
            shards.remove(job.out)  # a merge killed after its rename left it
            return Plan(0, [], job.n, whole=True)
        shards.adopt_partial(job.out)
        found = shards.pieces(job.out, identity, job.seeds_fit)
        todo = shards.missing(job.n, job.batch, found)
        return Plan(shards.next_attempt(job.out), todo, job.n - sum(hi - lo for lo, hi in todo))

    def _draw(self, d: Any, identity: dict[str, Any], plan: Plan, emit: Emit, requests: Requests,
              t0: float) -> tuple[int, bool, int, int]:
        """This process's share of the missing batches into its shard: (samples all processes drew, stopped,
        redrawn, still contradicting), the same answer in every process."""
        job, ranks = self.job, self.ranks
        mine = plan.todo[ranks.rank::ranks.size]
        rounds = -(-len(plan.todo) // ranks.size)
        writer = SampleWriter(shards.shard_path(job.out, plan.attempt, ranks.rank), sum(hi - lo for lo, hi in mine),
                              d.image_shape, masks=d.masks, labels=d.labels is not None, prompts=d.texts is not None,
                              header=job.header(d.gen), lock=False, attrs=shards.shard_attrs(identity, mine),
                              keep_on_error=True) if mine else contextlib.nullcontext()
        drawn = redrawn = still_wrong = 0
        with writer as w:
            for r in range(rounds + 1):
                # Every process takes part in every round, with a batch or without: the sums never wait.
                stop, everyone = ranks.all_sum([float(requests.stop_asked()), float(drawn)])
                if r:
                    done = plan.done_before + int(everyone)
                    # No file to watch: a shard's rows are not the run's sample numbers; FILE.h5 comes at the merge.
                    emit(Progress("sample", done, job.n,
                                  {"per_sample_s": (time.perf_counter() - t0) / max(1, int(everyone)), "file": ""}))
                if stop or r == rounds:
                    break
                if r < len(mine):
                    lo, hi = mine[r]
                    try:
                        b = job.draw(d, lo, hi, requests)
                    except Cancelled:
                        continue  # the stop asked here reaches the others at the next sum
                    w.append(b.images, b.seeds, b.masks, b.labels, prompts=b.prompts)
                    drawn += hi - lo
                    redrawn += b.redrawn
                    still_wrong += b.still_wrong
        everyone, redrawn, still_wrong = ranks.all_sum([float(drawn), float(redrawn), float(still_wrong)])
        return int(everyone), bool(stop), int(redrawn), int(still_wrong)
