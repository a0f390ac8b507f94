"""The gallery flags a sample whose mask contradicts its class, where the class names are counts."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.evaluation.metrics.phantom_fidelity import lesion_count  # noqa: E402
from engine.io.medsynth_writer import write_image_set  # noqa: E402
from medsynth_gui.gallery import Gallery  # noqa: E402
from medsynth_gui.thumbnails import ThumbnailModel  # noqa: E402

AMBER = np.array([255, 176, 0])


def amber_pixels(img: QImage) -> int:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    buf = np.frombuffer(img.constBits(), np.uint8, count=img.sizeInBytes())
    rgb = buf.reshape(img.height(), img.bytesPerLine())[:, :3 * img.width()].reshape(img.height(), img.width(), 3)
    return int((np.abs(rgb.astype(int) - AMBER).max(axis=2) <= 30).sum())


def test_a_lesion_class_with_an_empty_mask_is_flagged(qtbot, tmp_path):
    data = make_phantoms(6, size=32, seed=3)
    # Classes from the masks' own lesion counts (two touching lesions would count as one), then one
    # sample's mask emptied: its class says "1 lesion" and its mask shows none.
    data.labels[:] = [lesion_count(m) for m in data.masks]
    target = 2
    data.labels[target] = 1
    data.masks[target] = 0
    g = Gallery()
    qtbot.addWidget(g)
    g.resize(700, 400)
    g.show()
    qtbot.waitExposed(g)
    assert g.open_file(write_image_set(tmp_path / "flags.h5", data))
    qtbot.waitUntil(lambda: g.pending_thumbnails() == 0 and g.screen_loaded(), timeout=10000)
    m = g.model
    flags = {m.sample_at(r): m.data(m.index(r), ThumbnailModel.MismatchRole) for r in range(m.rowCount())}
    assert flags[target] == "mask shows 0 lesions, class says 1"
    assert all(text == "" for s, text in flags.items() if s != target)
    tip = m.data(m.index(m.row_of(target)), Qt.ItemDataRole.ToolTipRole)
    assert "mask shows 0 lesions, class says 1" in tip
    # The marker is drawn on the flagged tile only.
    g.view.viewport().repaint()
    shot = g.view.viewport().grab().toImage()
    flagged = g.view.visualRect(m.index(m.row_of(target)))
    other = g.view.visualRect(m.index(0 if target else 1))
    assert amber_pixels(shot.copy(flagged)) > 10
    assert amber_pixels(shot.copy(other)) == 0
