"""The line between a front end and the main process of a job it launched as several processes.

The front end listens on a local port (`Listener`) and hands the address and a one-time key to the processes in
their environment; the main process (rank 0) connects (`connect`) and sends its events and, at the end, how it
ended; the front end sends it the one-shot requests (save now, preview now). A stop does not travel here: the front
end signals the launcher, which passes the stop on to every process (engine/runtime/stop_signals.py), as SLURM's
does; only a front end gone (the line closed) is a stop here. Messages are pickled over an authenticated
multiprocessing connection on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection
from multiprocessing.connection import Listener as _Listener
from typing import Any

from engine.jobs import Done, Event, Requests

ADDRESS_ENV = "MEDSYNTH_JOB_CHANNEL"
KEY_ENV = "MEDSYNTH_JOB_CHANNEL_KEY"

SAVE_NOW, PREVIEW_NOW = "save_now", "preview_now"


@dataclass
class Ended:
    """How the main process's job ended: done (finished or stopped), or refused its input, or failed."""

    done: Done | None = None
    input_fault: tuple[str | None, str] | None = None  # InputError's (path, fault)
    failure: str | None = None  # one line
    details: str = ""  # the failure's traceback, for the log


class Listener:
    """The front end's end: listens, accepts the main process when it connects, and talks to it."""

    def __init__(self) -> None:
        self.key = secrets.token_bytes(32)
        self._listener = _Listener(("127.0.0.1", 0), authkey=self.key)
        self._conn: Connection | None = None
        self._accepted = threading.Event()
        threading.Thread(target=self._accept, name="job-channel-accept", daemon=True).start()

    def environment(self) -> dict[str, str]:
        """What the launched processes need in their environment to connect."""
        host, port = self._listener.address
        return {ADDRESS_ENV: f"{host}:{port}", KEY_ENV: self.key.hex()}

    def _accept(self) -> None:
        try:
            self._conn = self._listener.accept()
        except (OSError, EOFError):  # closed before anyone connected, or a stranger without the key
            return
        self._accepted.set()

    def receive(self, timeout: float) -> list[Any]:
        """What the main process sent within `timeout` seconds (events, then an Ended); [] when nothing came."""
        if not self._accepted.wait(timeout) or self._conn is None:
            return []
        out: list[Any] = []
        try:
            if self._conn.poll(timeout):
                while True:
                    out.append(self._conn.recv())
                    if not self._conn.poll(0):
                        break
        except (EOFError, OSError):
            self._conn = None  # the main process has gone; what it sent is in `out`
        return out

    def request(self, what: str) -> None:
        if self._conn is not None:
            try:
                self._conn.send(what)
            except OSError:
                pass  # the main process is ending: the request has nothing left to reach

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._listener.close()


class MainEnd:
    """The main process's end: sends events and how the job ended; passes requests on to its Requests."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def listen(self, requests: Requests) -> None:
        """Take the front end's save-now and preview-now into `requests` from now on (a daemon thread). A front
        end that goes away (the app closed, or killed) is a stop: the run keeps what it did and frees its GPUs."""

        def read() -> None:
            try:
                while True:
                    what = self._conn.recv()
                    if what == SAVE_NOW:
                        requests.save_now()
                    elif what == PREVIEW_NOW:
                        requests.preview_now()
            except (EOFError, OSError):
                requests.stop()

        threading.Thread(target=read, name="job-channel-requests", daemon=True).start()

    def send(self, message: Event | Ended) -> None:
        with self._lock:
            try:
                self._conn.send(message)
            except OSError:
                pass  # the front end has gone: the job goes on, and keeps what it does, without it


def connect() -> MainEnd | None:
    """This process's line to the front end that launched it: None unless it is the main process of such a
    launch."""
    address = os.environ.get(ADDRESS_ENV)
    if not address or os.environ.get("RANK", "0") != "0":
        return None
    host, port = address.rsplit(":", 1)
    return MainEnd(Client((host, int(port)), authkey=bytes.fromhex(os.environ[KEY_ENV])))
