"""Jobs for tests/test_launched_job.py that each launched process imports (`tests.launched_jobs`): they fail on one
process as a real job can (a bug, a bad input found by one process) while the others wait for a stop."""

import os
import time

from engine.jobs import Cancelled, Emit, Requests


class FailsOnOneProcess:
    def __init__(self, rank: int, error: BaseException) -> None:
        self.rank, self.error = rank, error

    def run(self, emit: Emit, requests: Requests) -> dict:
        if int(os.environ.get("RANK", "0")) == self.rank:
            time.sleep(0.5)
            raise self.error
        deadline = time.monotonic() + 60
        while not requests.stop_asked():  # the launcher's stop, once the other process has failed
            if time.monotonic() > deadline:
                return {"waited": True}
            time.sleep(0.05)
        raise Cancelled("stopped", {"step": 0})
