"""The gallery widget on small MedSynth files: counts, filter, activation, pixels, growth, errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.io.medsynth_writer import SampleWriter, write_image_set  # noqa: E402
from medsynth_gui.gallery import Gallery  # noqa: E402
from medsynth_gui.thumbnails import LABEL_COLOURS  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def phantoms32():
    return make_phantoms(64, size=32, seed=5)


def double_click(qtbot, view, pos) -> None:
    # Qt 6's item views act on a double-click only after a press on the same item.
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)


def settle(qtbot, g: Gallery) -> None:
    """Let the view paint and the lazy loader drain."""
    qtbot.wait(10)
    # Painting requests the thumbnails; on a busy machine the first paint can come late.
    qtbot.waitUntil(lambda: g.pending_thumbnails() == 0 and g.screen_loaded(), timeout=10000)


def pixels(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    buf = np.frombuffer(img.constBits(), np.uint8, count=img.sizeInBytes())
    rows = buf.reshape(img.height(), img.bytesPerLine())[:, :3 * img.width()]
    return rows.reshape(img.height(), img.width(), 3).copy()  # copy: the buffer dies with img


def coloured(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(rgb.astype(int) - np.array(colour)).max(axis=2) <= tol).sum())


def test_shows_every_sample_with_a_header(gallery, qtbot, tmp_path, phantoms32):
    path = write_image_set(tmp_path / "ph.h5", phantoms32)
    assert gallery.open_file(path)
    assert gallery.count() == 64
    assert gallery.header.text() == "ph.h5 — 64 samples (64 complete)"
    assert not gallery.poll_timer.isActive()


def test_thumbnails_load_lazily(gallery, qtbot, tmp_path):
    s = make_phantoms(20, size=16, seed=1)
    for name in ("images", "masks", "labels"):
        setattr(s, name, np.concatenate([getattr(s, name)] * 25))
    gallery.open_file(write_image_set(tmp_path / "many.h5", s))
    assert gallery.count() == 500
    settle(qtbot, gallery)
    assert gallery.screen_loaded()
    qtbot.wait(300)  # idle: the gallery prefetches a page below and above, no more
    shown = len(gallery.visible_rows())
    assert shown <= gallery.model.cached() <= 3 * shown < 500


def test_class_filter_counts_and_filtering(gallery, tmp_path, phantoms32):
    gallery.open_file(write_image_set(tmp_path / "ph.h5", phantoms32))
    counts = np.bincount(phantoms32.labels, minlength=4)
    combo = gallery.class_combo
    assert combo.itemText(0) == "All classes (64)"
    for k, name in enumerate(phantoms32.class_names):
        assert combo.itemText(k + 1) == f"{name} ({counts[k]})"
    for k in range(4):
        gallery.set_class_filter(k)
        assert gallery.count() == counts[k]
        assert combo.currentIndex() == k + 1
    combo.setCurrentIndex(2)  # the user's path: picking in the combo box
    assert gallery.count() == counts[1]
    gallery.set_class_filter(None)
    assert gallery.count() == 64 and combo.currentIndex() == 0
    with pytest.raises(ValueError):
        gallery.set_class_filter(9)


def test_double_click_and_enter_emit_the_file_index(gallery, qtbot, tmp_path, phantoms32):
    path = write_image_set(tmp_path / "ph.h5", phantoms32)
    gallery.open_file(path)
    settle(qtbot, gallery)
    view = gallery.view
    rect = view.visualRect(gallery.model.index(5))
    with qtbot.waitSignal(gallery.sample_activated) as sig:
        double_click(qtbot, view, rect.center())
    assert sig.args == [str(path), 5]

    gallery.set_class_filter(2)
    wanted = int(np.flatnonzero(phantoms32.labels == 2)[3])
    settle(qtbot, gallery)
    rect = view.visualRect(gallery.model.index(3))
    with qtbot.waitSignal(gallery.sample_activated) as sig:
        double_click(qtbot, view, rect.center())
    assert sig.args == [str(path), wanted]

    last = int(np.flatnonzero(phantoms32.labels == 2)[-1])
    view.setCurrentIndex(gallery.model.index(gallery.count() - 1))
    with qtbot.waitSignal(gallery.sample_activated) as sig:
        qtbot.keyClick(view, Qt.Key.Key_Return)
    assert sig.args == [str(path), last]


def test_thumbnail_brightness_follows_the_sample(gallery, tmp_path, phantoms32):
    s = make_phantoms(4, size=32, seed=5)
    s.images[0] *= 0.3
    gallery.open_file(write_image_set(tmp_path / "dim.h5", s))
    dim, bright = (pixels(gallery.thumbnail(i)).mean() for i in (0, 1))
    assert dim < 0.6 * bright
    assert gallery.thumbnail(0).width() == gallery.model.size


def test_mask_outlines_in_label_colours(gallery, tmp_path, phantoms32):
    gallery.open_file(write_image_set(tmp_path / "ph.h5", phantoms32))
    masks = phantoms32.masks
    first, second = LABEL_COLOURS[0], LABEL_COLOURS[1]
    only1 = next(i for i in range(64) if set(np.unique(masks[i])) == {0, 1})
    only2 = next(i for i in range(64) if set(np.unique(masks[i])) == {0, 2})
    empty = next(i for i in range(64) if not masks[i].any())
    rgb1, rgb2, rgb0 = (pixels(gallery.thumbnail(i)) for i in (only1, only2, empty))
    assert coloured(rgb1, first) > 5 and coloured(rgb1, second) == 0
    assert coloured(rgb2, second) > 5 and coloured(rgb2, first) == 0
    spread = rgb0.astype(int).max(axis=2) - rgb0.astype(int).min(axis=2)
    assert spread.max() < 10  # a sample without lesions stays pure grey


def test_volumes_show_the_central_slice_and_rgb_stays_colour(gallery, tmp_path):
    vol = make_phantoms(3, size=16, dims=3, seed=2)
    gallery.open_file(write_image_set(tmp_path / "vol.h5", vol))
    assert gallery.count() == 3 and "3D volumes" in gallery.details.text()
    img = pixels(gallery.thumbnail(0))
    assert img.shape[:2] == (gallery.model.size, gallery.model.size) and img.mean() > 20

    rgb = make_phantoms(3, size=16, seed=2)
    rgb.images = np.concatenate([rgb.images, 0.2 * rgb.images, 0.2 * rgb.images], axis=1)
    gallery.open_file(write_image_set(tmp_path / "rgb.h5", rgb))
    px = pixels(gallery.thumbnail(1)).astype(int)
    assert px[..., 0].mean() > 2 * px[..., 1].mean()  # red stays red


def test_a_file_being_written_grows(gallery, qtbot, tmp_path, phantoms32):
    s = phantoms32
    w = SampleWriter(tmp_path / "live.h5", 20, s.images.shape[1:], masks=True, labels=True,
                     kind="synthetic", class_names=s.class_names, label_names=s.label_names)
    try:
        w.append(s.images[:8], np.arange(8), s.masks[:8], s.labels[:8])
        gallery.open_file(w.writing)  # the file a writer fills, beside the name it will have when done
        assert gallery.count() == 8
        assert gallery.header.text() == "live.h5.partial — 20 samples (8 complete)"
        assert gallery.poll_timer.isActive() and "still being written" in gallery.details.text()
        gallery.set_class_filter(1)
        w.append(s.images[8:14], np.arange(8, 14), s.masks[8:14], s.labels[8:14])
        gallery.refresh()
        assert gallery.count() == int((s.labels[:14] == 1).sum())
        gallery.set_class_filter(None)
        assert gallery.count() == 14
        assert gallery.class_combo.itemText(0) == "All classes (14)"
        w.append(s.images[14:20], np.arange(14, 20), s.masks[14:20], s.labels[14:20])
        # The poll timer picks the rest up by itself and stops once the file is complete.
        qtbot.waitUntil(lambda: gallery.count() == 20, timeout=3000)
        assert not gallery.poll_timer.isActive()
        assert gallery.header.text() == "live.h5.partial — 20 samples (20 complete)"
    finally:
        w.close()


def test_a_replaced_or_deleted_file_is_handled(gallery, qtbot, tmp_path, phantoms32):
    path = write_image_set(tmp_path / "run.h5", phantoms32)
    gallery.open_file(path)
    gallery.set_class_filter(1)
    path.unlink()  # a new run writes a shorter file under the same name
    write_image_set(path, make_phantoms(5, size=32, seed=9))
    gallery.refresh()
    assert gallery.count() == 5 and gallery.class_combo.currentIndex() == 0
    assert gallery.header.text() == "run.h5 — 5 samples (5 complete)"
    path.unlink()
    with qtbot.waitSignal(gallery.failed) as sig:
        gallery.refresh()
    assert "run.h5" in sig.args[0] and "does not exist" in sig.args[0]
    gallery.close_file()
    assert gallery.count() == 0 and gallery.header.text() == "No file open"


def test_bad_files_are_reported_not_raised(gallery, qtbot, tmp_path, phantoms32):
    good = write_image_set(tmp_path / "ph.h5", phantoms32)
    gallery.open_file(good)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    for bad, words in ((plain, "not a MedSynth file"), (junk, "not a readable HDF5"),
                       (tmp_path / "gone.h5", "does not exist")):
        with qtbot.waitSignal(gallery.failed) as sig:
            assert gallery.open_file(bad) is False
        assert bad.name in sig.args[0] and words in sig.args[0]
    # What was shown stays shown and usable.
    assert gallery.count() == 64 and gallery.path() == str(good)


def test_thumbnail_size_slider(gallery, qtbot, tmp_path, phantoms32):
    gallery.open_file(write_image_set(tmp_path / "ph.h5", phantoms32))
    gallery.set_thumbnail_size(160)
    assert gallery.thumbnail(0).width() == 160
    assert gallery.view.gridSize().width() >= 160
    settle(qtbot, gallery)


def test_screenshot_of_64_phantoms(qtbot, tmp_path):
    s = make_phantoms(64, size=64, seed=3)
    g = Gallery()
    qtbot.addWidget(g)
    g.resize(1000, 700)
    g.show()
    qtbot.waitExposed(g)
    g.open_file(write_image_set(tmp_path / "phantoms.h5", s))
    g.view.setCurrentIndex(g.model.index(9))
    settle(qtbot, g)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = g.grab()
    assert shot.save(str(ARTIFACTS / "gallery.png"))
    assert pixels(shot.toImage()).std() > 10


def test_the_gallery_holds_no_handle_between_event_loop_turns(gallery, qtbot, tmp_path, phantoms32):
    """HDF5 refuses a read-write open of a file this process holds read-only: an evaluation of the file
    shown writes its figures while the gallery is open, so the gallery must let go after each read."""
    path = write_image_set(tmp_path / "ph.h5", phantoms32)
    gallery.open_file(path)
    settle(qtbot, gallery)
    gallery.view.scrollToBottom()
    settle(qtbot, gallery)
    with h5py.File(path, "r+", locking=False) as f:
        f.require_group("metrics").attrs["frd"] = 1.0
        # A writer holding the file does not block the gallery: its reads share the writer's handle.
        gallery.set_thumbnail_size(128)
        settle(qtbot, gallery)
        assert gallery.thumbnail(3).width() == 128
        gallery.refresh()
    assert gallery.count() == 64 and gallery.model.file is None


def test_a_live_file_renamed_onto_its_name_before_it_opens_is_no_fault(gallery, tmp_path):
    """A short run's .partial can be renamed onto its name between "file started" and the gallery's open: that is
    the run finishing, not a fault to show; a missing file of the user's own still is one."""
    failures: list[str] = []
    gallery.failed.connect(failures.append)
    assert not gallery.open_file(tmp_path / "s.h5.partial") and failures == []
    assert not gallery.open_file(tmp_path / "s.h5") and "does not exist" in failures[0]
