"""`python -m engine.runtime.launched_main JOB_FILE`: one of the processes of a job a front end launched on
several GPUs (engine/runtime/launched_job.py), started by Accelerate's launcher like `medsynth --num-processes`.

Every process builds the same job from the pickled recipe and runs it; the jobs themselves share the work out
(DDP for training, seeds for sampling). The main process reports to the front end over the job channel; a stop
arrives as a signal from the launcher, as under SLURM. The exit codes are the CLI's: 2 bad input, 130 stopped.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from collections.abc import Sequence

from engine.errors import InputError
from engine.jobs import Requests, execute
from engine.runtime import job_channel
from engine.runtime.launch import ERROR_PREFIX, EXIT_INPUT, EXIT_STOPPED, FAILED_PREFIX
from engine.runtime.stop_signals import stopping_on_signals

EXIT_FAILED = 1  # as `python -m` ends on an exception


def main(argv: Sequence[str] | None = None) -> int:
    job_file = (sys.argv[1:] if argv is None else list(argv))[0]
    end = job_channel.connect()
    requests = Requests()
    if end is not None:
        end.listen(requests)

    def nothing(what: object) -> None:
        """The other processes report nothing: the front end shows one run."""

    emit = end.send if end is not None else nothing
    try:
        # The front end asked for the stop, so it says so itself: nothing to tell it here.
        with stopping_on_signals(requests, nothing):
            with open(job_file, "rb") as f:
                recipe = pickle.load(f)  # written by the front end that launched this process, in its private folder
            done = execute(recipe(), emit, requests)
    except InputError as exc:
        print(f"{ERROR_PREFIX} {exc}", file=sys.stderr, flush=True)
        if end is not None:
            end.send(job_channel.Ended(input_fault=(exc.path, exc.fault)))
        return EXIT_INPUT
    except BaseException as exc:  # noqa: BLE001 — every failure must reach the front end, not only stderr
        details = traceback.format_exc()
        what = f"{type(exc).__name__}: {exc}".splitlines()[0]
        # One line first, which the front end finds whichever process failed; then the traceback, for its log.
        print(f"{FAILED_PREFIX} process {os.environ.get('RANK', '0')}: {what}", file=sys.stderr, flush=True)
        sys.stderr.write(details)
        if end is not None:
            end.send(job_channel.Ended(failure=what, details=details))
        return EXIT_FAILED
    if end is not None:
        end.send(job_channel.Ended(done=done))
    return EXIT_STOPPED if done.cancelled else 0


if __name__ == "__main__":
    sys.exit(main())
