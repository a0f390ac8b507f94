import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from engine.data.phantoms import make_phantoms
from engine.io.medsynth_writer import write_image_set
from medsynth.cli import main
from tests.conftest import tiny_cli_setup

ROOT = Path(__file__).resolve().parents[1]


def medsynth(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsynth", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Each bad input a user can hand `train`, with the file the error must name."""
    cases: dict[str, tuple[Path, str]] = {}
    nan = tmp / "nan.npz"
    images = np.zeros((4, 8, 8), np.float32)
    images[1, 2, 2] = np.nan
    np.savez(nan, train_images=images, train_labels=np.zeros((4, 1)))
    cases["nan"] = (nan, "nan.npz")
    empty = tmp / "empty"
    empty.mkdir()
    cases["empty folder"] = (empty, "empty")
    cases["missing"] = (tmp / "nope.npz", "nope.npz")
    pairs = tmp / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pairs / "images" / "a.png")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(pairs / "masks" / "a.png")
    cases["shape mismatch"] = (pairs, "a.png")
    trunc = tmp / "trunc.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), trunc)
    trunc.write_bytes(trunc.read_bytes()[:40])
    cases["truncated"] = (trunc, "trunc.nii.gz")
    four_d = tmp / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), four_d)
    cases["4D"] = (four_d, "four.nii.gz")
    msd = tmp / "msd"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    (msd / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "tumour"},
                                                  "modality": {"0": "MR"}}))
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), msd / "imagesTr" / "c1.nii.gz")
    label = np.zeros((8, 8, 4), np.uint8)
    label[2, 2, 1] = 5
    nib.save(nib.Nifti1Image(label, np.eye(4)), msd / "labelsTr" / "c1.nii.gz")
    cases["label not in dataset.json"] = (msd, "c1.nii.gz")
    return cases


def test_every_bad_input_gives_one_line_naming_the_file_and_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    for name, (path, shown) in bad_inputs(tmp_path).items():
        code = main(["train", str(path), "--out", str(out), "--steps", "1"])
        line = error_line(capsys)
        assert code == 2, name
        assert line.startswith("medsynth: error: ") and shown in line, (name, line)
        assert not out.exists(), f"{name}: something was written"


def test_bad_options_are_one_line_too(tiny_run, tmp_path, capsys):
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in error_line(capsys)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[train]\nsteps = 'many'\nwho = 1\n")
    data = write_image_set(tmp_path / "d.h5", make_phantoms(4, 16))
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--config", str(bad_toml)]) == 2
    assert "bad.toml: unknown setting train.who" in error_line(capsys)
    assert main(["sample", str(tmp_path / "norun"), "--n", "2", "--out", str(tmp_path / "x.h5")]) == 2
    assert "norun: does not exist" in error_line(capsys)
    assert main(["sample", str(tiny_run), "--n", "2", "--out", str(tmp_path / "x.h5"), "--class", "7"]) == 2
    assert "class 7 was asked for; the model has classes 0..3" in error_line(capsys)


def test_info_describes_files_and_runs(tiny_run, tmp_path, capsys):
    assert main(["info", str(tiny_run)]) == 0
    text = capsys.readouterr().out
    assert "training run" in text and "step 20 of 20" in text and "4 classes" in text
    data = tmp_path / "p.npz"
    np.savez(data, train_images=np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8),
             train_labels=np.array([[0], [1], [1], [2], [0]]))
    assert main(["info", str(data)]) == 0
    assert "5 image(s) of 28x28 px, 1 channel(s)" in capsys.readouterr().out


def test_export_png_and_nnunet(tiny_run, tmp_path, capsys):
    h5 = tmp_path / "s.h5"
    assert main(["sample", str(tiny_run), "--n", "3", "--steps", "3", "--out", str(h5)]) == 0
    assert main(["info", str(h5)]) == 0
    assert "3 of 3 samples complete" in capsys.readouterr().out
    assert main(["export", str(h5), "--to", str(tmp_path / "png"), "--format", "png"]) == 0
    pngs = sorted((tmp_path / "png" / "images").glob("*.png"))
    assert len(pngs) == 3 and len(list((tmp_path / "png" / "masks").glob("*.png"))) == 3
    assert np.asarray(Image.open(pngs[0])).dtype == np.uint16  # gray exports keep 16 bits
    assert main(["export", str(h5), "--to", str(tmp_path / "nn"), "--format", "nnunet"]) == 0
    nn = tmp_path / "nn" / "Dataset501_MedSynth"
    ds = json.loads((nn / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "bright lesion": 1, "dark lesion": 2} and ds["numTraining"] == 3
    img = nib.load(nn / "imagesTr" / "synth_00000_0000.nii.gz")
    lab = nib.load(nn / "labelsTr" / "synth_00000.nii.gz")
    assert img.shape == lab.shape == (16, 16, 1)
    with h5py.File(h5) as f:
        # Top row of the picture = highest y, so NIfTI viewers show it upright.
        np.testing.assert_array_equal(np.asarray(lab.dataobj)[:, :, 0].T[::-1], f["masks"][0])
    capsys.readouterr()
    assert main(["export", str(h5), "--to", str(nn), "--format", "nnunet"]) == 2
    assert "not empty" in error_line(capsys)


@pytest.mark.slow
def test_demo_end_to_end_through_the_console_script(tmp_path):
    r = medsynth("demo", "--out", str(tmp_path / "demo"), "--steps", "10", "--n", "6")
    assert r.returncode == 0, r.stderr
    assert "demo done: 6 synthetic images" in r.stdout
    with h5py.File(tmp_path / "demo" / "synthetic.h5") as f:
        assert {"images", "masks", "labels", "seeds"} <= set(f)
        assert f.attrs["n_complete"] == 6


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    data, cfg = tiny_cli_setup(tmp_path, 16, "checkpoint_every = 100000\nlog_every = 1")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "medsynth", "train", str(data), "--out", str(run),
                             "--config", str(cfg), "--steps", "100000"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "loss.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "medsynth train --resume" in out
    steps = sorted(run.glob("checkpoints/step_*"))
    assert len(steps) == 1 and int(steps[0].name.split("_")[1]) >= 3
