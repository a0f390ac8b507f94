"""Where the app's tracebacks go: a log file in the user's application-data folder.

A bad input is the user's to fix and shows as one line in the app; a traceback is a bug
report for developers, so it goes to this file, and the app shows only where it is.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import TracebackType

from PySide6.QtCore import QStandardPaths

from engine.errors import InputError

log = logging.getLogger("medsynth_gui")
_handler: RotatingFileHandler | None = None


def log_path() -> Path:
    """medsynth.log under the platform's per-user application-data folder (XDG_DATA_HOME on Linux)."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppLocalDataLocation)
    return Path(base or Path(tempfile.gettempdir()) / "medsynth") / "log" / "medsynth.log"


def install() -> Path:
    """Send the process's log records to the log file (once; again if the folder changed); its path."""
    global _handler
    path = log_path()
    if _handler is not None and Path(_handler.baseFilename) == path.absolute():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.mkdtemp(prefix="medsynth-log-")) / "medsynth.log"  # a read-only home folder
    handler = RotatingFileHandler(path, maxBytes=2_000_000, backupCount=2, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    root.addHandler(handler)
    _handler = handler
    return path


def record_failure(exc: BaseException, what: str) -> Path:
    """Write exc's traceback to the log file; the file's path, for the message the user sees."""
    path = install()
    log.error("%s", what, exc_info=(type(exc), exc, exc.__traceback__))
    if _handler is not None:
        _handler.flush()
    return path


def install_excepthook(show: Callable[[str], None] | None = None) -> None:
    """An exception escaping a Qt slot: a bad input is shown as its line; a bug is logged with its traceback
    and shown with where the log is, and the terminal gets one line."""

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        if isinstance(exc, InputError):
            text = str(exc)
        else:
            path = record_failure(exc.with_traceback(tb), "uncaught exception")
            text = f"Unexpected error {kind.__name__}: {exc} (details in {path})"
            sys.stderr.write(f"medsynth: {text}\n")
        if show is not None:
            try:
                show(text)
            except Exception:  # noqa: BLE001 — the window may be half torn down; the log has it
                log.exception("could not show an error")

    sys.excepthook = hook
