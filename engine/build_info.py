"""What a MedSynth holds: its version, the torch build and CUDA it runs on, and the git commit it was made from.

A packaged app carries this as build-info.json, written by packaging/medsynth.spec at build time, since neither git nor
torch's package metadata travel with it; a source install works it out on the spot. `medsynth --version` prints it.
"""

from __future__ import annotations

import json
import platform
import runpy
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata, util
from pathlib import Path

from engine import __version__

FILE_NAME = "build-info.json"
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def packaged_path() -> Path | None:
    """build-info.json inside a PyInstaller app (beside its bundled modules); None when running from source."""
    base = getattr(sys, "_MEIPASS", None)
    return Path(base) / FILE_NAME if getattr(sys, "frozen", False) and base else None


def _torch_build() -> tuple[str, str | None]:
    """torch's version and CUDA release, read from torch/version.py without importing torch (seconds saved)."""
    spec = util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return "not installed", None
    values = runpy.run_path(str(Path(next(iter(spec.submodule_search_locations))) / "version.py"))
    return str(values.get("__version__", "unknown")), values.get("cuda")


def _git_commit(root: Path) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def collect(root: Path = SOURCE_ROOT) -> dict:
    """This install's facts, as the build records them."""
    torch_version, cuda = _torch_build()
    try:
        pyside = metadata.version("PySide6-Essentials")
    except metadata.PackageNotFoundError:
        pyside = None
    return {"medsynth": __version__, "torch": torch_version, "cuda": cuda,
            "variant": f"cuda{cuda}" if cuda else "cpu", "git_commit": _git_commit(root),
            "python": platform.python_version(), "pyside6": pyside,
            "platform": f"{sys.platform}-{platform.machine()}",
            "built": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def read() -> dict:
    """The packaged app's recorded facts, or this source install's."""
    path = packaged_path()
    if path is not None and path.is_file():
        return {**json.loads(path.read_text(encoding="utf-8")), "packaged": True}
    return {**collect(), "packaged": False, "built": None}


def version_text(info: dict | None = None) -> str:
    """The lines `medsynth --version` prints."""
    info = read() if info is None else info
    build = "CPU" if not info.get("cuda") else f"CUDA {info['cuda']}"
    where = "packaged app" if info.get("packaged") else "source install"
    lines = [f"medsynth {info['medsynth']} ({where})",
             f"torch {info['torch']} ({build}), Python {info['python']}, {info['platform']}",
             f"git commit {info.get('git_commit') or 'unknown'}"]
    if info.get("built"):
        lines.append(f"built {info['built']}")
    return "\n".join(lines)
