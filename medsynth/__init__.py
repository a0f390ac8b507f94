"""The `medsynth` entry point: the desktop app when asked for it, the engine's CLI otherwise.

Qt is imported only on the `gui` path, so every other subcommand runs on a
headless node without Qt libraries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def _no_display() -> bool:
    """On Linux without X11/Wayland, Qt aborts the process; say so plainly instead."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _opens_a_file(args: list[str]) -> bool:
    """`medsynth scan.nii.gz`: what a file manager or a double-click on a file runs; the app opens it."""
    if len(args) != 1 or args[0].startswith("-") or not os.path.exists(args[0]):
        return False
    from medsynth.cli import build_parser

    commands = next(a.choices for a in build_parser()._actions if a.dest == "command")
    return args[0] not in commands  # a folder called `demo` in the working folder is still the subcommand


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if _opens_a_file(args):
        args = ["gui", *args]
    if not args or args[0] == "gui":
        if _no_display():
            print("medsynth: error: no display found (DISPLAY / WAYLAND_DISPLAY unset); the desktop app needs "
                  "one. Run `medsynth demo` for the headless demo, or `medsynth --help`.", file=sys.stderr)
            return 2
        from medsynth_gui.app import main as gui_main

        return gui_main(args[1:])
    from medsynth.cli import main as cli_main

    return cli_main(args)
