"""The one error type users see: a bad input, named with its file and fault."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input. The CLI prints it as one line and exits with code 2.

    The message always names the file (when there is one) so that a user with a
    folder of hundreds of cases knows which one to fix.
    """

    def __init__(self, path: str | Path | None, fault: str) -> None:
        self.path = None if path is None else str(path)
        self.fault = fault
        super().__init__(f"{self.path}: {fault}" if self.path else fault)

    def __reduce__(self) -> tuple[type, tuple[str | None, str]]:
        # Rebuilt from its two parts when it crosses to another process (the default passes the message alone).
        return type(self), (self.path, self.fault)
