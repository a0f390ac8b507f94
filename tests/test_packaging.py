"""The packaged app, built by packaging/build.sh and run as a clinician's machine would: no Python, no source tree.

The archive is unpacked into another folder and every command runs the unpacked program with a clean environment
(`env -i`), from another working folder and, where the machine allows a private mount namespace, with the whole
checkout (its .venv included) hidden behind an empty folder, so that anything still taken from the repository fails
here. Deselect locally with `-m "not packaging"`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_MB = 400  # the largest single file: torch's CPU library, stripped, is ~330 MB
MAX_FOLDER_MB = 1000  # a naive build of torch + PySide6 was 1.1 GB


def _can_hide_checkout() -> bool:
    try:
        r = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


HIDE = _can_hide_checkout()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("build")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # before the build: a commit made while it runs is not in it
    env = dict(os.environ, DIST=str(out / "dist"), WORK=str(out / "work"))
    r = subprocess.run(["bash", str(ROOT / "packaging" / "build.sh")], env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (archive,) = (out / "dist").glob("medsynth-*.tar.gz")
    unpacked = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="tar")
    shutil.rmtree(out / "work")
    exe = unpacked / "medsynth" / "medsynth"
    assert exe.is_file() and os.access(exe, os.X_OK)
    return {"exe": exe, "archive": archive, "log": r.stdout, "folder": out / "dist" / "medsynth", "commit": commit}


@pytest.fixture(scope="module")
def app(built) -> Path:
    return built["exe"]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def untouched(app):
    """The app's folder as unpacked; the last test checks no run wrote into it."""
    return _snapshot(app.parent)


def command(exe: Path, home: Path, *args: str, **env: str) -> list[str]:
    """The argv that runs exe with nothing but HOME and a system PATH, the checkout hidden where possible."""
    home.mkdir(parents=True, exist_ok=True)
    clean = {"HOME": str(home), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **env}
    argv = ["env", "-i", *(f"{k}={v}" for k, v in clean.items()), str(exe), *args]
    if not HIDE:
        return argv
    empty = home.parent / "empty-checkout"
    empty.mkdir(exist_ok=True)
    # exec keeps one process from unshare to the app, so a signal sent to it reaches the app.
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", script, "sh", str(empty), str(ROOT), *argv]


def run_app(exe: Path, home: Path, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(exe, home, *args, **env), cwd=home, capture_output=True, text=True,
                          timeout=timeout)


def test_the_checkout_is_hidden_from_the_app(app, tmp_path):
    if not HIDE:
        pytest.skip("this machine allows no private mount namespace (unshare -rm); the checkout stays visible")
    argv = command(Path("/bin/ls"), tmp_path / "home", "-A", str(ROOT))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_version_names_the_build(built, app, tmp_path, untouched):
    r = run_app(app, tmp_path / "home", "--version")
    assert r.returncode == 0, r.stderr
    import torch

    commit = built["commit"]
    assert "medsynth 0.1.0 (packaged app)" in r.stdout
    assert f"torch {torch.__version__} (CPU)" in r.stdout and "built 20" in r.stdout
    if commit:
        assert commit in r.stdout
    info = json.loads((app.parent / "_internal" / "build-info.json").read_text())
    assert info["variant"] == "cpu" and info["torch"] == torch.__version__
    r = run_app(app, tmp_path / "home", "--help")
    assert r.returncode == 0 and "train" in r.stdout and "Traceback" not in r.stderr


def test_headless_demo_then_info(app, tmp_path, untouched):
    out = tmp_path / "demo"
    r = run_app(app, tmp_path / "home", "demo", "--out", str(out), "--steps", "12", "--n", "4")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with h5py.File(out / "synthetic.h5", "r") as f:
        assert f.attrs["format"] == "medsynth" and int(f.attrs["n_complete"]) == 4
        assert f["images"].shape[0] == 4 and f["masks"].shape[0] == 4 and "class_names" in f.attrs
    r = run_app(app, tmp_path / "home", "info", str(out / "synthetic.h5"))
    assert r.returncode == 0 and "4" in r.stdout and "Traceback" not in r.stderr


def test_bad_input_is_one_line_and_exit_2(app, tmp_path, untouched):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"not a nifti file")
    r = run_app(app, tmp_path / "home", "info", str(bad))
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_no_display_is_said_in_one_line(app, tmp_path, untouched):
    r = run_app(app, tmp_path / "home")
    assert r.returncode == 2 and "no display" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _gui(app: Path, home: Path, *args: str, seconds: float = 15) -> tuple[str, list[Path]]:
    """The app offscreen for some seconds, then closed as a session manager closes it: output and log files."""
    proc = subprocess.Popen(command(app, home, *args, QT_QPA_PLATFORM="offscreen"), cwd=home,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)  # the window closes as Quit closes it
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err
    logs = list(home.rglob("*.log"))
    assert all("Traceback" not in p.read_text(errors="replace") for p in logs)
    return out + err, logs


def test_the_window_opens_and_closes(app, tmp_path, untouched):
    r = run_app(app, tmp_path / "home", "gui", "--check", QT_QPA_PLATFORM="offscreen", timeout=300)
    assert r.returncode == 0 and "medsynth: window shown" in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_the_app_opens_a_volume_offscreen_and_closes_cleanly(app, tmp_path, untouched):
    volume = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((24, 24, 16), dtype=np.float32),
                             np.diag([0.9, 0.9, 3.0, 1.0])), volume)
    _gui(app, tmp_path / "home", str(volume))  # as a file manager opens a file: the path alone


def test_the_first_start_keeps_its_files_in_the_users_folders(app, tmp_path, untouched):
    home = tmp_path / "home"
    _gui(app, home)
    written = {p.relative_to(home).parts[0] for p in home.rglob("*") if p.is_file()}
    # Settings in ~/.config, the log in ~/.local/share, caches in ~/.cache: nothing loose in the home folder.
    assert written <= {".config", ".local", ".cache", "MedSynth"}, written
    assert (home / ".config" / "MedSynth" / "MedSynth.conf").is_file()


def _quiet(r: subprocess.CompletedProcess) -> None:
    """A run that succeeded and said nothing alarming: no traceback, no word of the torchvision MedSynth leaves out."""
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "torchvision" not in r.stderr.lower(), r.stderr[-3000:]


def test_the_app_fine_tunes_a_stable_diffusion_model_and_samples_from_a_prompt(app, tmp_path, untouched):
    from engine.io import medsynth_h5
    from tests.sd_tiny import make_tiny_sd, write_single_file
    from tests.test_finetune import xray_folder

    model = make_tiny_sd(tmp_path)
    data = xray_folder(tmp_path / "cxr", n=4)
    home, run, out = tmp_path / "home", tmp_path / "run", tmp_path / "pneumonia.h5"
    _quiet(run_app(app, home, "train", str(data), "--from-pretrained", str(model), "--out", str(run), "--steps", "2",
                   "--batch", "2", "--lora", "4", "--prompt-template", "chest x-ray, {class}"))
    assert list(run.glob("checkpoints/*/model.safetensors")), sorted(run.rglob("*"))
    _quiet(run_app(app, home, "sample", str(run), "--prompt", "chest x-ray, pneumonia", "--n", "2", "--steps", "2",
                   "--out", str(out)))
    with medsynth_h5.open_file(out) as f:
        assert medsynth_h5.read_prompts(f) == ["chest x-ray, pneumonia"] * 2
        assert f["labels"][:].tolist() == [1, 1] and np.isfinite(f["images"][:]).all()
    # The single-file form (original key layout) loads through diffusers' pipeline, with the folder's configs.
    single, plain = write_single_file(model, tmp_path / "tiny.safetensors"), tmp_path / "plain.h5"
    _quiet(run_app(app, home, "sample", "--from-pretrained", str(single), "--pretrained-config", str(model),
                   "--prompt", "a chest x-ray", "--n", "1", "--steps", "2", "--out", str(plain)))
    with medsynth_h5.open_file(plain) as f:
        assert medsynth_h5.read_prompts(f) == ["a chest x-ray"] and f["images"].shape == (1, 3, 32, 32)


def test_a_run_on_two_processes_starts_from_the_packaged_program(app, tmp_path, untouched):
    """Accelerate's launcher and each of its processes are the packaged program itself (`-m MODULE`), with no Python
    on the machine: `--num-processes 2` trains on two processes, and the job the app hands its processes runs."""
    import functools
    import pickle

    from engine.config import resolve
    from engine.settings import overrides
    from engine.training.jobs import train_job
    from tests.conftest import tiny_cli_setup

    data, cfg = tiny_cli_setup(tmp_path, 32, "checkpoint_every = 100\nlog_every = 1")
    home, run = tmp_path / "home", tmp_path / "run"
    r = run_app(app, home, "train", str(data), "--out", str(run), "--config", str(cfg), "--steps", "3", "--device",
                "cpu", "--num-processes", "2")
    _quiet(r)
    assert r.stderr.count("global batch 8 = 2 processes × 4") == 1, r.stderr[-3000:]
    state = json.loads((run / "checkpoints" / "step_0000003" / "state.json").read_text())
    assert state["processes"] == 2 and state["step"] == 3
    # What the app's "All N GPUs" runs in each process (engine/runtime/launched_job.py), here as one process.
    recipe = functools.partial(train_job, resolve(None, cfg, overrides(data=str(data), steps=2, device="cpu")),
                               tmp_path / "app-run")
    job = tmp_path / "job.pickle"
    job.write_bytes(pickle.dumps(recipe))
    _quiet(run_app(app, home, "-u", "-m", "engine.runtime.launched_main", str(job)))
    assert (tmp_path / "app-run" / "checkpoints" / "step_0000002").is_dir()


def test_the_unpacked_folder_installs_its_desktop_entry(app, tmp_path, untouched):
    data = tmp_path / "data"
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "XDG_DATA_HOME": str(data)}
    r = subprocess.run([str(app.parent / "install-desktop-entry.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    entry = (data / "applications" / "medsynth.desktop").read_text()
    assert f'Exec="{app}" gui %f' in entry or f"Exec={app} gui %f" in entry, entry
    assert (data / "icons" / "hicolor" / "256x256" / "apps" / "medsynth.png").is_file()


def test_the_folder_is_trimmed_and_complete(built):
    folder = built["folder"]
    # The torchvision package or its metadata; MONAI's own monai/networks/nets/torchvision_fc.py is not it.
    left_out = ("torchvision", "tensorboard", "hf_xet")  # the packages or their metadata (name-version.dist-info)
    found = [p for p in folder.rglob("*") if p.name in left_out or p.name.startswith(tuple(f"{n}-" for n in left_out))]
    assert not found, found
    internal = folder / "_internal"
    for gone in ("torch/test", "torch/bin/test_api", "torch/bin/protoc", "torch/include", "PySide6/Qt/translations"):
        assert not (internal / gone).exists(), gone
    assert [p.name for p in (internal / "torch" / "bin").iterdir()] == ["torch_shm_manager"]
    assert not list(folder.rglob("*.a")) and not list(folder.rglob("*.h"))
    assert not [p for p in folder.rglob("*") if "cuda" in p.name.lower() and p.suffix == ".so"]  # the CPU variant
    for needed in ("PySide6/Qt/plugins/platforms/libqxcb.so", "PySide6/Qt/plugins/platforms/libqoffscreen.so",
                   "engine/resources/presets/demo.toml", "engine/resources/demo/phantoms.h5",
                   "medsynth_gui/icons/medsynth.png", "transformers/models/clip/modeling_clip.py"):
        assert (internal / needed).is_file(), needed
    # Of transformers' hundreds of model packages, only the few fine-tuning reaches travel.
    assert len([p for p in (internal / "transformers" / "models").iterdir() if p.is_dir()]) < 12
    assert (folder / "install-desktop-entry.sh").is_file() and (folder / "share" / "medsynth.desktop").is_file()
    # Symbolic links (PyInstaller links a library's versioned names) would count their target twice.
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    sizes = {str(p.relative_to(folder)): p.stat().st_size >> 20 for p in files}
    big = {name: mb for name, mb in sizes.items() if mb > MAX_FILE_MB}
    assert not big, big
    total = sum(p.stat().st_size for p in files) >> 20
    assert total < MAX_FOLDER_MB, total
    # The build says how large the folder and the archive are.
    said = re.search(r"built .*: (\d+) MB", built["log"]), re.search(r"archive .*\.tar\.gz: (\d+) MB", built["log"])
    assert all(said), built["log"]
    assert abs(int(said[0][1]) - total) <= 0.05 * total
    assert abs(int(said[1][1]) - (built["archive"].stat().st_size >> 20)) <= 1
    assert built["archive"].name == "medsynth-0.1.0-linux-x86_64-cpu.tar.gz"


def test_zz_no_run_wrote_into_the_apps_folder(app, untouched):
    """Named to run last in this module: every run above left the unpacked folder as it was."""
    assert _snapshot(app.parent) == untouched
