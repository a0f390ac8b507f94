"""The main window: opens, shows files, runs the demo path, guards closing mid-training."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pytestqt")


from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.io.medsynth_writer import write_image_set  # noqa: E402
from tests.conftest import open_main_window  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    return open_main_window(qtbot, tmp_path, monkeypatch, (1500, 900), show=True)


def test_window_opens_on_the_welcome_page(window):
    assert window.stack.currentWidget() is window.welcome
    assert window.windowTitle().startswith("MedSynth")
    menus = [a.text() for a in window.menuBar().actions()]
    assert menus == ["&File", "&View", "&Help"]
    ARTIFACTS.mkdir(exist_ok=True)
    window.grab().save(str(ARTIFACTS / "main_window_welcome.png"))


def test_h5_opens_in_gallery_and_a_sample_in_the_viewer(window, tmp_path, qtbot):
    path = write_image_set(tmp_path / "p.h5", make_phantoms(12, 32))
    assert window.open_path(path)
    assert window.tabs.currentWidget() is window.gallery and window.gallery.count() == 12
    window.open_sample(str(path), 3)
    assert window.tabs.currentWidget() is window.viewer and window.current_ref == (str(path), 3)
    assert "#3" in window.current.title
    assert str(path) in window._recent()


def test_nifti_volume_with_mask_opens_in_the_viewer(window, tmp_path):
    s = make_phantoms(1, size=32, dims=3)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(s.images[0, 0], affine), tmp_path / "case.nii.gz")
    nib.save(nib.Nifti1Image(s.masks[0], affine), tmp_path / "case_seg.nii.gz")
    assert window.open_path(tmp_path / "case.nii.gz")
    assert window.current.mask is not None and window.current.image.shape == (32, 32, 32)
    np.testing.assert_allclose(window.current.affine, affine)
    window.grab().save(str(ARTIFACTS / "main_window_volume.png"))


def test_a_bad_file_shows_one_message_and_nothing_breaks(window, tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"nope")
    messages = []
    window.show_error = messages.append
    assert not window.open_path(bad)
    assert len(messages) == 1 and "broken.h5" in messages[0]


def test_closing_mid_training_asks_then_saves_a_checkpoint(window, tmp_path, qtbot):
    data = write_image_set(tmp_path / "d.h5", make_phantoms(16, 16))
    panel = window.train
    panel.data_edit.setText(str(data))
    panel.run_edit.setText(str(tmp_path / "run"))
    panel.steps_spin.setValue(100_000)
    panel.batch_spin.setValue(4)
    panel.size_spin.setValue(16)
    panel.start()
    qtbot.waitUntil(lambda: panel.progress.value() >= 2, timeout=120_000)
    asked = []
    window.confirm = lambda title, text: asked.append(title) or False
    assert not window.close()  # the user said no: still training
    assert panel.runner.running
    window.confirm = lambda title, text: True
    window.close()  # stops training, then closes itself once the checkpoint is saved
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=60_000)
    assert asked == ["Training is running"] and not panel.runner.running
    assert list((tmp_path / "run" / "checkpoints").glob("step_*"))
