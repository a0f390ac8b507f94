"""The app on real layouts: an nnU-Net image opens with its label, a label map opens as labels,
File ▸ Load segmentation…, and folders read without a copy in the shared temporary folder."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pytestqt")


from tests.conftest import open_main_window  # noqa: E402
from tests.test_partners import AFFINE, _save, _volume, make_raw_folder  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    return open_main_window(qtbot, tmp_path, monkeypatch, (1366, 768), show=True)


def _errors(window) -> list[str]:
    messages: list[str] = []
    window.show_error = messages.append
    return messages


def test_an_nnunet_image_opens_with_its_label_overlay(window, tmp_path):
    root = make_raw_folder(tmp_path / "Dataset501_BraTS", "nnunet")
    assert window.open_path(root / "imagesTr" / "BraTS_001_0000.nii.gz")
    shown = window.current
    _, labels = _volume(1)
    assert shown.mask is not None
    np.testing.assert_array_equal(shown.mask, labels)
    np.testing.assert_array_equal(window.viewer.state.mask, labels)
    assert shown.label_names == {0: "background", 1: "edema", 2: "tumor"}
    assert "BraTS_001.nii.gz" in shown.title
    ARTIFACTS.mkdir(exist_ok=True)
    window.grab().save(str(ARTIFACTS / "partners_nnunet_image_with_label.png"))


def test_a_label_file_opened_alone_opens_as_labels_with_its_image(window, tmp_path):
    root = make_raw_folder(tmp_path / "Dataset501_BraTS", "nnunet")
    assert window.open_path(root / "labelsTr" / "BraTS_002.nii.gz")
    image, labels = _volume(2)
    np.testing.assert_array_equal(window.current.mask, labels)
    np.testing.assert_allclose(window.current.image, image)  # the image it belongs to, not the labels as grey


def test_a_label_map_without_its_image_shows_coloured_labels_not_grey(window, tmp_path):
    _, labels = _volume(0)
    lone = _save(tmp_path / "liver_seg.nii.gz", labels)
    assert window.open_path(lone)
    shown = window.current
    np.testing.assert_array_equal(shown.mask, labels)
    assert not shown.image.any()  # a black canvas under the coloured labels, as Slicer shows a lone segmentation
    assert set(window.viewer.state.label_colors) == {1, 2}
    window.grab().save(str(ARTIFACTS / "partners_label_alone.png"))


def test_load_segmentation_puts_a_label_map_on_the_image_shown(window, tmp_path):
    image, labels = _volume(0)
    img = _save(tmp_path / "scan.nii.gz", image)
    seg = _save(tmp_path / "elsewhere" / "annotation from reader 2.nii.gz", labels)
    assert window.open_path(img) and window.current.mask is None
    window.viewer.state.cursor = (3, 4, 7)
    assert window.load_segmentation(seg)
    np.testing.assert_array_equal(window.viewer.state.mask, labels)
    assert window.viewer.state.cursor == (3, 4, 7)  # the reader keeps their place
    # A label map stored with its axes in another order (RAS) is the same segmentation.
    ras = nib.as_closest_canonical(nib.Nifti1Image(labels, AFFINE))
    nib.save(ras, tmp_path / "ras_seg.nii.gz")
    assert window.load_segmentation(tmp_path / "ras_seg.nii.gz")
    np.testing.assert_array_equal(window.viewer.state.mask, labels)
    assert window.current.title == "scan.nii.gz + ras_seg.nii.gz"  # one segmentation at a time
    from PySide6.QtGui import QAction

    assert "Load &segmentation…" in [a.text() for a in window.findChildren(QAction)]


def test_load_segmentation_that_does_not_fit_is_a_message(window, tmp_path):
    image, labels = _volume(0)
    assert window.open_path(_save(tmp_path / "scan.nii.gz", image))
    messages = _errors(window)
    small = _save(tmp_path / "other_seg.nii.gz", labels[:10])
    assert not window.load_segmentation(small)
    assert len(messages) == 1 and "other_seg.nii.gz" in messages[0] and "shape" in messages[0]
    moved = AFFINE.copy()
    moved[2, 3] += 30
    assert not window.load_segmentation(_save(tmp_path / "moved_seg.nii.gz", labels, moved))
    assert "moved_seg.nii.gz" in messages[1] and "30 mm" in messages[1]
    grey = _save(tmp_path / "not_labels.nii.gz", image)
    assert not window.load_segmentation(grey)
    assert "not a label map" in messages[2]
    assert window.current.mask is None and window.viewer.state.mask is None  # nothing changed


def test_an_image_whose_partner_does_not_fit_opens_alone_with_a_message(window, tmp_path):
    image, labels = _volume(0)
    _save(tmp_path / "scan_seg.nii.gz", labels[:, :, :5])
    messages = _errors(window)
    assert window.open_path(_save(tmp_path / "scan.nii.gz", image))
    assert window.current.mask is None
    assert len(messages) == 1 and "scan_seg.nii.gz" in messages[0]


def _temp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


@pytest.fixture
def system_tmp(tmp_path, monkeypatch):
    """The system temporary folder, made the test's own: other processes share the real one."""
    own = tmp_path / "system-tmp"
    own.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own))
    assert tempfile.gettempdir() == str(own)
    return own


def test_a_folder_opens_without_a_copy_in_the_shared_temp_and_is_titled_by_its_name(window, tmp_path, qtbot,
                                                                                     system_tmp):
    root = make_raw_folder(tmp_path / "BraTS_subset", "nnunet")
    before = _temp_entries()
    assert before == set()
    assert window.open_path(root)
    assert _temp_entries() == before
    header = window.gallery.header.text()
    assert header.startswith("BraTS_subset (nnU-Net folder, 3 cases")
    # The copy is the user's own: a private folder, named by a hash, not by the (patient) folder name.
    cached = Path(window.gallery.path())
    assert cached.parent == tmp_path / "home" / ".cache" / "medsynth" / "views"
    assert "BraTS" not in cached.name
    assert stat.S_IMODE(cached.parent.stat().st_mode) == 0o700
    assert not stat.S_IMODE(cached.stat().st_mode) & 0o077
    # Two folders of the same name never overwrite each other's copy.
    other = make_raw_folder(tmp_path / "elsewhere" / "BraTS_subset", "msd", cases=2)
    assert window.open_path(other)
    assert Path(window.gallery.path()) != cached and cached.exists()
    # Captions say which case and slice each thumbnail is.
    names = window.gallery.delegate.names
    assert names is not None and names[0].startswith("hippocampus_000 · z ")
    window.open_sample(window.gallery.path(), 3)
    assert window.current.title.startswith("BraTS_subset (MSD folder, 2 cases")
    assert names[3] in window.current.title
    window.tabs.setCurrentWidget(window.gallery)
    window.gallery.set_thumbnail_size(128)
    qtbot.waitUntil(window.gallery.screen_loaded, timeout=10000)
    window.grab().save(str(ARTIFACTS / "partners_folder_in_gallery.png"))
    window.close()
    assert not list((tmp_path / "home" / ".cache" / "medsynth" / "views").glob("*.h5"))
    assert _temp_entries() == before


def test_gallery_captions_show_case_and_slice(window, tmp_path, qtbot):
    from PySide6.QtCore import QRect
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtWidgets import QStyleOptionViewItem

    root = make_raw_folder(tmp_path / "Task04_Hippocampus", "msd", cases=2)
    assert window.open_path(root)
    gallery = window.gallery
    assert gallery.count() > 0
    assert gallery.delegate.names[0].startswith("hippocampus_000 · z ")
    # What the delegate really draws for the first cell.
    painted: list[str] = []
    canvas = QImage(200, 200, QImage.Format.Format_RGB32)
    painter = QPainter(canvas)
    painter.drawText = lambda rect, flags, text: painted.append(text)  # noqa: ARG005
    option = QStyleOptionViewItem()
    option.rect = QRect(0, 0, 400, 200)
    option.font = gallery.view.font()
    option.fontMetrics = gallery.view.fontMetrics()
    gallery.delegate.paint(painter, option, gallery.model.index(0))
    painter.end()
    assert painted == [gallery.delegate.names[0]] and "#" not in painted[0]


def test_view_cache_removes_copies_a_crashed_session_left_behind(tmp_path):
    from medsynth_gui.loaders import ViewCache

    root = tmp_path / "views"
    root.mkdir()
    old, part, fresh = root / "0a1b.h5", root / "2c3d.h5.part", root / "4e5f.h5"
    for f in (old, part, fresh):
        f.write_bytes(b"x")
    for f in (old, part):
        os.utime(f, (0, 0))
    ViewCache(root)
    assert not old.exists() and not part.exists() and fresh.exists()
