"""A newcomer's first hour, walked in one window at a laptop's 1366 × 768 and a desktop's 1600 × 1000.

First start → demo → Generate → Gallery → Evaluate (the Gallery still holding the file) → Viewer on an
nnU-Net case with its label → Train on grey-level PNG pairs with Stop / Resume → Reader study. Each step
saves a screenshot to tests/artifacts/newcomer-WxH/ (look at them: a test can pass on a broken screen) and
checks what a newcomer would meet there: no traceback, no flag name, the window still fits the screen.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PIL import Image  # noqa: E402
from PySide6.QtWidgets import QAbstractButton, QApplication, QLabel, QWidget  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from tests.conftest import open_main_window  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def visible_texts(root: QWidget) -> list[str]:
    """Every text a user can read: labels, buttons, the status bar."""
    out = []
    for w in root.findChildren(QWidget):
        if not w.isVisible():
            continue
        if isinstance(w, QLabel | QAbstractButton):
            out.append(w.text())
    if hasattr(root, "statusBar"):
        out.append(root.statusBar().currentMessage())
    return [t for t in out if t]


def check_screen(win, name: str) -> None:
    QApplication.processEvents()
    screen = win.screen_size
    shots = ARTIFACTS / f"newcomer-{screen[0]}x{screen[1]}"
    shots.mkdir(parents=True, exist_ok=True)
    win.grab().save(str(shots / f"{name}.png"))
    assert win.width() <= screen[0] and win.height() <= screen[1], f"{name}: window grew to {win.size()}"
    hint = win.minimumSizeHint()
    assert hint.width() <= screen[0] and hint.height() <= screen[1], f"{name}: minimum size {hint}"
    texts = visible_texts(win)
    flags = [t for t in texts if FLAG.search(t)]
    assert not flags, f"{name}: the app speaks command line: {flags}"
    assert not [t for t in texts if "Traceback" in t], f"{name}: a traceback on screen"


def grey_level_pairs(root: Path, n: int = 24, size: int = 32) -> Path:
    """Image/mask PNG pairs whose masks code two labels as grey levels 127 and 254."""
    s = make_phantoms(n, size=size, seed=3)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = np.clip(s.images[i, 0] / s.images.max() * 255, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"slice_{i:03d}.png")
        Image.fromarray((s.masks[i] * 127).astype(np.uint8)).save(root / "masks" / f"slice_{i:03d}.png")
    return root


def nnunet_case(root: Path) -> Path:
    """imagesTr/brain_001_0000.nii.gz + labelsTr/brain_001.nii.gz + dataset.json, anisotropic."""
    s = make_phantoms(1, size=32, dims=3, seed=4)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(s.images[0, 0], affine), root / "imagesTr" / "brain_001_0000.nii.gz")
    nib.save(nib.Nifti1Image(s.masks[0].astype(np.uint8), affine), root / "labelsTr" / "brain_001.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "bright": 1, "dark": 2},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    return root / "imagesTr" / "brain_001_0000.nii.gz"


@pytest.fixture(params=[(1366, 768), (1600, 1000)], ids=["1366x768", "1600x1000"])
def window(request, qtbot, tmp_path, monkeypatch):
    win = open_main_window(qtbot, tmp_path, monkeypatch, request.param, show=True)
    win.screen_size = request.param
    return win


@pytest.mark.slow
def test_newcomer_path(window, qtbot, tmp_path, capfd):
    errors: list[str] = []
    shown_error = window.show_error
    window.show_error = lambda text: (errors.append(text), shown_error(text))
    check_screen(window, "01_first_start")

    # Demo → Generate: a few samples, few sampler steps, so the walk stays short on a CPU.
    window.open_demo()
    check_screen(window, "02_demo_gallery")
    gen = window.generate
    gen.n_spin.setValue(8)
    gen.steps_spin.setValue(10)
    out = gen.out_edit.text()
    gen.start()
    qtbot.waitUntil(lambda: not gen.runner.running, timeout=300_000)
    assert gen.out_edit.text() != out  # generating again writes a new file, not over this one
    assert Path(out).is_file() and not errors, errors
    assert window.gallery.path() == out and window.gallery.count() == 8
    check_screen(window, "03_generated_gallery")

    # Evaluate the file the Gallery still holds open: real and training data come from the demo itself.
    ev = window.evaluate
    window.tabs.setCurrentWidget(ev)
    assert ev.synth_edit.text() == out
    ev.utility_check.setChecked(False)
    ev.max_samples.setValue(64)
    ev.start()
    qtbot.waitUntil(lambda: not ev.runner.running, timeout=300_000)
    assert not errors, errors
    answers = dict(zip(("like", "diverse", "copies", "helps"), ev.answer_texts))
    assert answers["helps"] == "not measured: switched off"
    assert all(a and "not measured" not in a for k, a in answers.items() if k != "helps"), answers
    check_screen(window, "04_evaluate")
    assert window.gallery.count() == 8  # the gallery still reads the file

    # An nnU-Net case: the image finds its label.
    image = nnunet_case(tmp_path / "Dataset042_Brain")
    assert window.open_path(image)
    assert window.current.mask is not None
    assert set(np.unique(window.current.mask).tolist()) <= {0, 1, 2}
    check_screen(window, "05_viewer_nnunet_case")

    # Train on grey-level PNG pairs; stop part-way, resume to the end.
    data = grey_level_pairs(tmp_path / "pairs")
    train = window.train
    window.train_dock.raise_()
    train.data_edit.setText(str(data))
    train.run_edit.setText(str(tmp_path / "pairs-run"))
    train.steps_spin.setValue(40)
    train.batch_spin.setValue(4)
    train.size_spin.setValue(16)
    train.start()
    qtbot.waitUntil(lambda: train.progress.value() >= 3, timeout=300_000)
    check_screen(window, "06_training")
    train.stop()
    qtbot.waitUntil(lambda: not train.runner.running, timeout=120_000)
    train.resume()
    qtbot.waitUntil(lambda: not train.runner.running and train.progress.value() >= 40, timeout=600_000)
    config = json.loads((tmp_path / "pairs-run" / "config.json").read_text())
    assert config["facts"]["in_channels"] < 10, "grey levels became labels"
    check_screen(window, "07_trained")

    # Reader study: real demo phantoms against the generated file.
    from medsynth_gui.main_window import DEMO_DIR

    study = tmp_path / "study"
    rs = window.reader_study
    window.tabs.setCurrentWidget(rs)
    created = rs.new_study(DEMO_DIR / "phantoms.h5", out, study, 4, 4, 0)
    assert created and not created.key.is_relative_to(study)
    check_screen(window, "08_reader_study_created")
    assert rs.open_study(study, "jdoe")
    check_screen(window, "09_reader_study_item")
    shown = " ".join(visible_texts(window))
    assert "demo-synthetic" not in shown and "phantoms" not in shown  # nothing names the source while reading
    assert not window.generate_dock.isVisible() and not window.tabs.isTabEnabled(window.tabs.indexOf(window.gallery))
    assert rs.answer("fake")
    check_screen(window, "10_reader_study_next_item")
    rs.stop()
    assert window.generate_dock.isVisible() or window.train_dock.isVisible()
    assert window.tabs.isTabEnabled(window.tabs.indexOf(window.gallery))
    assert not errors, errors
    assert "Traceback" not in capfd.readouterr().err
