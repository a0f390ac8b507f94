"""The engine never imports Qt, and every CLI subcommand runs without loading it."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QT = ("PySide6", "PyQt5", "PyQt6", "qtpy", "pyqtgraph", "shiboken6", "medsynth_gui")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_engine_module_imports_qt():
    offenders = {}
    for path in (ROOT / "engine").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.split(".")[0] in QT}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, offenders


def test_cli_runs_without_loading_qt():
    code = ("import sys\nimport medsynth.cli, engine.training.train, engine.inference.sample, engine.export\n"
            "import engine.info, engine.demo, engine.io.medsynth_h5\n"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {QT!r}]\nprint(bad)\nsys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_viewer_state_model_has_no_qt():
    bad = {m for m in imported_modules(ROOT / "medsynth_gui" / "viewer" / "state.py") if m.split(".")[0] in QT}
    assert not bad


def test_no_display_gives_one_clear_line(monkeypatch, capsys):
    import medsynth

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert medsynth.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no display" in err[0] and "medsynth demo" in err[0]


def test_the_in_memory_dataset_reads_no_file():
    """engine.data (ImageSet and what is done to it) lies below engine.io, which reads files into it: a module of
    data importing io would make the two one tangle again (lint-imports checks the same; this names the file)."""
    offenders = {}
    for path in (ROOT / "engine" / "data").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m == "engine.io" or m.startswith("engine.io.")}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, offenders
