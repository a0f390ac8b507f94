"""Presets, the demo and the icons travel as package data: a wheel installed outside the checkout finds them through
importlib.resources, as the packaged app does. And `medsynth --version` says what build it is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine import build_info

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the checkout's files: an in-tree build would leave build/lib behind, whose stale
    # modules a later wheel would carry.
    source = tmp_path_factory.mktemp("source")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("medsynth-*.whl")
    return whl


def test_the_wheel_carries_presets_demo_and_icons(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in (ROOT / "engine" / "resources" / "presets").glob("*.toml"):
        assert f"engine/resources/presets/{preset.name}" in names
    assert "engine/resources/demo/phantoms.h5" in names
    assert any(n.startswith("engine/resources/demo/run/checkpoints/") and n.endswith("ema.safetensors")
               for n in names)
    assert "engine/resources/demo/run/config.json" in names
    assert {"medsynth_gui/icons/medsynth.png", "medsynth_gui/icons/medsynth.svg"} <= names
    assert not any(n.startswith("tests/") for n in names)
    # Only modules the checkout has: nothing stale from an earlier build.
    assert all((ROOT / n).exists() for n in names if n.endswith(".py"))


def test_an_installed_wheel_finds_presets_and_the_demo_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    probe = ("import json, engine, engine.config as c; "
             "print(json.dumps({'engine': engine.__file__, 'presets': c.preset_names(), "
             "'demo_model': sorted(p.name for p in (c.RESOURCES / 'demo' / 'run' / 'checkpoints').glob('*/*')), "
             "'steps': c.load_preset('demo').train.steps}))")
    # The checkout's editable install sits behind PYTHONPATH, so the wheel's copy is the one imported.
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr[-2000:]
    found = json.loads(r.stdout)
    assert Path(found["engine"]).is_relative_to(site)
    assert {"demo", "demo-3d", "medmnist-28"} <= set(found["presets"])
    assert {"ema.safetensors", "state.json"} <= set(found["demo_model"])
    assert found["steps"] > 0


def test_version_names_the_torch_build_and_the_commit():
    r = subprocess.run([sys.executable, "-m", "medsynth", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import torch

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    assert "medsynth 0.1.0 (source install)" in r.stdout
    assert f"torch {torch.__version__}" in r.stdout
    assert ("CPU" if torch.version.cuda is None else f"CUDA {torch.version.cuda}") in r.stdout
    if commit:
        assert commit in r.stdout


def test_a_packaged_build_info_file_is_what_version_prints(tmp_path, monkeypatch):
    info = {**build_info.collect(), "torch": "2.13.0+cu126", "cuda": "12.6", "git_commit": "abc123def456"}
    (tmp_path / build_info.FILE_NAME).write_text(json.dumps(info))
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    text = build_info.version_text()
    assert "(packaged app)" in text and "torch 2.13.0+cu126 (CUDA 12.6)" in text
    assert "git commit abc123def456" in text and f"built {info['built']}" in text
