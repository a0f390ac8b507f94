"""The `medsynth` entry point: the desktop app when asked for it, the engine's CLI otherwise.

Qt is imported only on the `gui` path, so every other subcommand runs on a
headless node without Qt libraries.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] == "gui":
        if importlib.util.find_spec("medsynth_gui") is None:
            # Until the desktop app lands, no arguments runs the headless demo.
            from engine.cli import main as cli_main

            return cli_main(["demo"] if not args else ["--help"])
        from medsynth_gui.app import main as gui_main

        return gui_main(args[1:])
    from engine.cli import main as cli_main

    return cli_main(args)
