"""What the frozen app runs: the same entry point as the `medsynth` console script, and, for a run on several GPUs,
the Python interpreter that Accelerate's launcher and torchrun take `sys.executable` to be. They start
`sys.executable [-u] -m MODULE ARGS` (the launcher itself, then each process); in the packaged app
`sys.executable` is this program, so it runs MODULE as `python -m` would."""

import runpy
import sys
import traceback

from medsynth import main


def _as_python(argv: list[str]) -> tuple[str, list[str]] | None:
    """(MODULE, ARGS) for `[-u] -m MODULE ARGS`; None for a MedSynth command line (which has no -m)."""
    args = list(argv)
    if args[:1] == ["-u"]:
        args.pop(0)
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.reconfigure(write_through=True)  # what -u asks: the launcher reads the output as it comes
    if len(args) >= 2 and args[0] == "-m":
        return args[1], args[2:]
    return None


if __name__ == "__main__":
    module = _as_python(sys.argv[1:]) if getattr(sys, "frozen", False) else None
    if module is not None:
        name, args = module
        sys.argv = [name, *args]
        try:
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        except Exception:  # noqa: BLE001 — as `python -m` ends: the traceback (which the caller may keep to itself), 1
            traceback.print_exc()
            sys.exit(1)
        sys.exit(0)
    sys.exit(main())
