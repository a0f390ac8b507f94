"""The bundled demo model reproduces the phantoms' known rules, and the app's demo path works."""

import json
from pathlib import Path

import numpy as np
import pytest

from engine.config import RESOURCES
from engine.data.phantoms import make_phantoms
from engine.metrics.phantom_fidelity import phantom_fidelity
from engine.sample import Generator

DEMO = RESOURCES / "demo"


@pytest.fixture(scope="module")
def generated():
    gen = Generator(DEMO / "run", device="cpu")
    seeds = list(range(32))
    labels = np.array([s % 4 for s in seeds])
    images, masks = gen.generate(seeds, labels.tolist(), "dpm", 25)
    return images, masks, labels


def test_bundled_demo_is_small_and_self_contained():
    files = [p for p in DEMO.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    state = json.loads(next(DEMO.glob("run/checkpoints/step_*/state.json")).read_text())
    assert state["config"]["train"]["prediction"] == "v_prediction"
    assert (DEMO / "phantoms.h5").exists()


def test_demo_model_reproduces_the_phantom_rules(generated):
    images, masks, labels = generated
    real = make_phantoms(64, 32, seed=5000)
    ref = phantom_fidelity(real.images, real.masks, real.labels)
    got = phantom_fidelity(images, masks, labels)
    # Lesions are drawn with the right sign of contrast for their label, as in the data.
    assert got["image_mask_agreement"] >= 0.85, got
    # Lesion area is the data's order of magnitude, not a mask flooding the image.
    assert ref["lesion_pixel_share"] / 3 < got["lesion_pixel_share"] < ref["lesion_pixel_share"] * 3, (got, ref)
    # Outside the body the images are dark, as in the data (units 0..1000).
    corners = np.concatenate([images[:, 0, :3, :3].ravel(), images[:, 0, -3:, -3:].ravel()])
    assert np.median(corners) < 100, np.median(corners)


def test_the_app_opens_the_demo_and_generates(qtbot, tmp_path, monkeypatch):
    pytest.importorskip("pytestqt")
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    monkeypatch.setenv("HOME", str(tmp_path))
    from medsynth_gui.main_window import MainWindow

    win = MainWindow()
    win.quiet_errors = True
    qtbot.addWidget(win)
    win.show()
    win.open_demo()
    assert win.gallery.count() == 512
    assert "4 classes" in win.generate.model_info.text()
    out = Path(win.generate.out_edit.text())
    assert out.parent == tmp_path / "MedSynth"
    win.generate.n_spin.setValue(8)
    with qtbot.waitSignal(win.generate.file_done, timeout=120_000):
        win.generate.start()
    assert win.gallery.count() == 8 and win.gallery.header.text().startswith(out.name)
