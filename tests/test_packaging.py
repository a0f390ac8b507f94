"""The packaged app, built by packaging/build.sh and run as a clinician's machine would: no Python, no source tree.

Every command runs the built program with a clean environment (`env -i`), from another working folder, so that
anything still taken from the repository or its .venv fails here. Deselect locally with `-m "not packaging"`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_MB = 600  # the largest single file (torch's CPU library is ~400 MB)


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build")
    env = dict(os.environ, DIST=str(out / "dist"), WORK=str(out / "work"))
    r = subprocess.run(["bash", str(ROOT / "packaging" / "build.sh")], env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exe = out / "dist" / "medsynth" / "medsynth"
    assert exe.is_file() and os.access(exe, os.X_OK)
    return exe


def run_app(exe: Path, home: Path, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)
    clean = {"HOME": str(home), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in clean.items()), str(exe), *args], cwd=home,
                          capture_output=True, text=True, timeout=timeout)


def test_version_and_help(app, tmp_path):
    r = run_app(app, tmp_path / "home", "--version")
    assert r.returncode == 0 and "0.1.0" in r.stdout + r.stderr
    r = run_app(app, tmp_path / "home", "--help")
    assert r.returncode == 0 and "train" in r.stdout and "Traceback" not in r.stderr


def test_headless_demo_then_info(app, tmp_path):
    out = tmp_path / "demo"
    r = run_app(app, tmp_path / "home", "demo", "--out", str(out), "--steps", "12", "--n", "4")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with h5py.File(out / "synthetic.h5", "r") as f:
        assert f.attrs["format"] == "medsynth" and int(f.attrs["n_complete"]) == 4
        assert f["images"].shape[0] == 4 and f["masks"].shape[0] == 4 and "class_names" in f.attrs
    r = run_app(app, tmp_path / "home", "info", str(out / "synthetic.h5"))
    assert r.returncode == 0 and "4" in r.stdout and "Traceback" not in r.stderr


def test_the_app_opens_a_volume_offscreen_and_closes_cleanly(app, tmp_path):
    volume = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((24, 24, 16), dtype=np.float32),
                             np.diag([0.9, 0.9, 3.0, 1.0])), volume)
    home = tmp_path / "home"
    home.mkdir()
    clean = {"HOME": str(home), "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.Popen(["env", "-i", *(f"{k}={v}" for k, v in clean.items()), str(app), "gui", str(volume)],
                            cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(15)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)  # what a session manager sends: the window closes as Quit closes it
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err
    logs = list(home.rglob("*.log"))
    assert all("Traceback" not in p.read_text(errors="replace") for p in logs)


def test_the_folder_holds_no_torchvision_and_no_oversized_file(app):
    folder = app.parent
    # The torchvision package or its metadata; MONAI's own monai/networks/nets/torchvision_fc.py is not it.
    found = [p for p in folder.rglob("*") if p.name == "torchvision" or p.name.startswith("torchvision-")]
    assert not found, found
    assert (folder / "_internal" / "resources" / "presets" / "demo.toml").is_file()
    sizes = [(p.name, p.stat().st_size >> 20) for p in folder.rglob("*") if p.is_file()]
    big = [(name, mb) for name, mb in sizes if mb > MAX_FILE_MB]
    assert not big, big
