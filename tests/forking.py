"""Run a piece of a test in a forked child: killed with SIGKILL at a chosen moment, or given a small disk of its own.

A fresh `python -m medsynth` pays for importing torch each time (seconds, tens of them on a busy machine); a fork
of the test process has it all imported already, and is still a separate process that the kernel kills for
real, with its files, locks and HDF5 handles left exactly as a kill leaves them.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_REC, MS_PRIVATE, MS_RDONLY, MS_REMOUNT = 0x4000, 0x40000, 0x1, 0x20


@dataclass
class Ending:
    """How the child ended: `signal` (e.g. SIGKILL, SIGSEGV) or `code`, and what it sent back (JSON)."""

    code: int | None
    signal: int | None
    result: Any

    @property
    def killed(self) -> bool:
        return self.signal == signal.SIGKILL


def kill_me() -> None:
    """What a fault-injection point does: the kernel's kill -9 of this process, here and now."""
    os.kill(os.getpid(), signal.SIGKILL)


def cli(argv: list[str]) -> dict:
    """`medsynth ARGV` in this process: its exit code, stderr (one line per refusal) and stdout."""
    from medsynth.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            return {"rc": 1, "stderr": err.getvalue() + traceback.format_exc(), "stdout": out.getvalue()}
    return {"rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue()}


def _own_tmpfs(folder: Path, size: str) -> None:
    """Make this (single-threaded, freshly forked) process the root of its own user and mount namespace,
    with a tmpfs of `size` at `folder`: a disk that fills up, seen by this process alone."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        raise PermissionError(os.strerror(ctypes.get_errno()))
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    if libc.mount(b"tmpfs", str(folder).encode(), b"tmpfs", 0, f"size={size}".encode()) != 0:
        raise PermissionError(os.strerror(ctypes.get_errno()))


def remount_read_only(folder: Path) -> None:
    """In a child given `tmpfs=`: make its disk read-only (EROFS from now on)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tmpfs", str(folder).encode(), b"tmpfs", MS_REMOUNT | MS_RDONLY, None) != 0:
        raise PermissionError(os.strerror(ctypes.get_errno()))


def in_child(work: Callable[[], Any], *, timeout: float = 60.0, tmpfs: tuple[Path, str] | None = None,
             kill_when: Callable[[], bool] | None = None) -> Ending:
    """Run `work()` in a forked child and return how it ended; its return value comes back as JSON.

    `kill_when`, polled by the parent every few milliseconds, sends SIGKILL from outside once it is true
    (a kill at a moment the child does not choose).

    With `tmpfs=(folder, size)` the child first mounts a tmpfs of that size at `folder`, visible to it alone
    (so `work` checks what it left there itself). Where user namespaces are not allowed the result is
    {"skip": reason}.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read)
            with contextlib.suppress(Exception):
                import torch

                torch.set_num_threads(1)
            try:
                if tmpfs is not None:
                    _own_tmpfs(*tmpfs)
            except (PermissionError, OSError) as exc:
                out: Any = {"skip": f"cannot mount a tmpfs here ({exc})"}
            else:
                out = work()
            os.write(write, json.dumps(out).encode())
        except BaseException:
            with contextlib.suppress(Exception):
                os.write(write, json.dumps({"error": traceback.format_exc()}).encode())
            code = 70
        finally:
            # What the interpreter's exit would do to HDF5 objects left over (where a full disk used to crash
            # it), done before the hard exit that keeps pytest's own exit handlers out of the child.
            with contextlib.suppress(Exception):
                import gc

                gc.collect()
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            raise TimeoutError(f"the child ran past {timeout} s")
        if kill_when is not None and kill_when():
            os.kill(pid, signal.SIGKILL)
            kill_when = None
        ready, _, _ = select.select([read], [], [], min(left, 0.005 if kill_when is not None else 0.5))
        if ready:
            chunk = os.read(read, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    result = json.loads(text) if text else None
    if os.WIFSIGNALED(status):
        return Ending(None, os.WTERMSIG(status), result)
    return Ending(os.WEXITSTATUS(status), None, result)
