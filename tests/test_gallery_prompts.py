"""The gallery on a file with prompts (issue 17): hovering a thumbnail shows its prompt beside its class and seed,
the class filter and a growing file keep each prompt on its own sample, and a file without prompts shows none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtGui  # noqa: E402
from PySide6.QtCore import QEvent, QPoint, Qt  # noqa: E402
from PySide6.QtGui import QHelpEvent, QPainter  # noqa: E402
from PySide6.QtWidgets import QApplication, QToolTip  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.io.medsynth_writer import SampleWriter, write_image_set  # noqa: E402
from medsynth_gui.gallery import Gallery  # noqa: E402
from medsynth_gui.thumbnails import PROMPT_CHARS  # noqa: E402

SHOTS = Path("/tmp/shots")
FINDINGS = ["chest x-ray, pneumonia", "Pleuraerguss, rechts", "胸部X線", "chest x-ray, normal"]


def prompted_phantoms(n: int = 24, size: int = 48):
    s = make_phantoms(n, size, seed=7)
    s.kind = "synthetic"
    # Each class its own finding, and sample 5 a prompt that looks like markup: it must show as typed.
    s.prompts = [f"{FINDINGS[int(c)]} #{i}" for i, c in enumerate(s.labels)]
    s.prompts[5] = "<b>bold?</b> no"
    return s


def tooltip(g: Gallery, row: int) -> str:
    return g.model.data(g.model.index(row), Qt.ItemDataRole.ToolTipRole)


def test_the_tooltip_shows_the_prompt_beside_class_and_seed(gallery, tmp_path):
    s = prompted_phantoms()
    assert gallery.open_file(write_image_set(tmp_path / "prompted.h5", s))
    assert "hover to read it" in gallery.details.text()
    for row in range(len(s)):
        text = tooltip(gallery, row)
        lines = text.splitlines()
        assert lines[0] == f"Sample #{row}"
        assert f"Class: {s.class_names[s.labels[row]]}" in lines
        assert f"Prompt: “{s.prompts[row]}”" in lines
        assert f"Seed: {row}" in lines  # write_image_set numbers the seeds
    # Qt shows a tooltip as markup when it looks like markup: a prompt's "<b>" must show as typed.
    assert not QtGui.Qt.mightBeRichText(tooltip(gallery, 5)) and "Prompt: “<b>bold?</b> no”" in tooltip(gallery, 5)
    assert "Prompt: “胸部X線 #" in "\n".join(tooltip(gallery, r) for r in range(len(s)) if s.labels[r] == 2)


def test_the_class_filter_keeps_each_prompt_on_its_sample(gallery, tmp_path):
    s = prompted_phantoms()
    gallery.open_file(write_image_set(tmp_path / "prompted.h5", s))
    for k in range(len(s.class_names)):
        gallery.set_class_filter(k)
        wanted = np.flatnonzero(s.labels == k)
        assert gallery.count() == len(wanted)
        for row, sample in enumerate(wanted):
            assert f"Prompt: “{s.prompts[sample]}”" in tooltip(gallery, row)
            if sample != 5:
                assert FINDINGS[k] in tooltip(gallery, row)
    gallery.set_class_filter(None)
    assert gallery.count() == len(s)


def test_a_file_being_written_shows_the_new_samples_prompts(gallery, tmp_path):
    s = prompted_phantoms(12)
    w = SampleWriter(tmp_path / "live.h5", 12, s.images.shape[1:], masks=True, labels=True, prompts=True,
                     kind="synthetic", class_names=s.class_names, label_names=s.label_names)
    try:
        w.append(s.images[:4], np.arange(4), s.masks[:4], s.labels[:4], prompts=s.prompts[:4])
        gallery.open_file(w.writing)
        assert gallery.count() == 4 and gallery.model.prompts == s.prompts[:4]
        w.append(s.images[4:12], np.arange(4, 12), s.masks[4:12], s.labels[4:12], prompts=s.prompts[4:12])
        gallery.refresh()
        assert gallery.count() == 12 and gallery.model.prompts == s.prompts
        assert f"Prompt: “{s.prompts[11]}”" in tooltip(gallery, 11)
    finally:
        w.close()


def test_a_file_without_prompts_shows_none_and_a_long_prompt_is_cut(gallery, tmp_path):
    plain = make_phantoms(6, 32, seed=1)
    gallery.open_file(write_image_set(tmp_path / "plain.h5", plain))
    assert gallery.model.prompts is None and "Prompt" not in tooltip(gallery, 0)
    assert "hover to read it" not in gallery.details.text()
    report = make_phantoms(2, 32, seed=1)
    report.prompts = ["word " * 500, ""]
    gallery.open_file(write_image_set(tmp_path / "report.h5", report))
    long_text = tooltip(gallery, 0)
    assert "Prompt: “word word" in long_text and "…”" in long_text and len(long_text) < PROMPT_CHARS + 200
    assert max(len(line) for line in long_text.splitlines()) <= 60  # wrapped, not a screen-wide line
    assert "Prompt: (empty)" in tooltip(gallery, 1)


def test_hovering_shows_the_prompt_and_a_screenshot(gallery, qtbot, tmp_path):
    """The user's path: a tooltip event over a thumbnail shows the real tooltip window with the prompt."""
    s = prompted_phantoms()
    gallery.open_file(write_image_set(tmp_path / "prompted.h5", s))
    qtbot.waitUntil(lambda: gallery.pending_thumbnails() == 0 and gallery.screen_loaded(), timeout=10000)
    view = gallery.view
    # A "Pleuraerguss, rechts" sample: this machine has no CJK font, so "胸部X線" would be drawn as boxes here
    # (its text is checked above); a user's system font draws it.
    row = int(np.flatnonzero(s.labels == 1)[0])
    rect = view.visualRect(gallery.model.index(row))
    pos = rect.center()
    QApplication.sendEvent(view.viewport(), QHelpEvent(QEvent.Type.ToolTip, pos, view.viewport().mapToGlobal(pos)))
    qtbot.waitUntil(QToolTip.isVisible, timeout=3000)
    assert QToolTip.text() == tooltip(gallery, row)
    assert f"Prompt: “{s.prompts[row]}”" in QToolTip.text()
    tip = next(w for w in QApplication.topLevelWidgets() if w.metaObject().className() == "QTipLabel" and w.isVisible())
    # The tooltip is its own window: drawn onto the gallery's picture where it stands, for one screenshot.
    shot = gallery.grab()
    where = gallery.mapFromGlobal(tip.mapToGlobal(QPoint(0, 0)))
    where = QPoint(min(max(where.x(), 0), max(0, shot.width() - tip.width())),
                   min(max(where.y(), 0), max(0, shot.height() - tip.height())))
    painter = QPainter(shot)
    painter.drawPixmap(where, tip.grab())
    painter.end()
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert shot.save(str(SHOTS / "gallery_prompts.png"))
    QToolTip.hideText()


def test_a_file_with_numbers_for_prompts_is_reported_not_raised(gallery, qtbot, tmp_path):
    import h5py

    path = write_image_set(tmp_path / "hostile.h5", prompted_phantoms(6))
    with h5py.File(path, "r+") as f:
        del f["prompts"]
        f["prompts"] = np.arange(6.0)
    with qtbot.waitSignal(gallery.failed, timeout=2000) as message:
        assert not gallery.open_file(path)
    assert str(path) in message.args[0] and "/prompts holds float64 values" in message.args[0]
    assert gallery.count() == 0
