"""Arrays to pixels, in the one place the app does it: the training previews and the evaluation's closest pairs."""

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from engine.evaluation.figures import picture  # noqa: E402
from medsynth_gui.images import picture_pixmap, to_pixmap, to_uint8  # noqa: E402


def grey_at(pix, x: int, y: int) -> int:
    return pix.toImage().pixelColor(x, y).red()


def test_an_evaluation_picture_keeps_its_grey_levels_and_its_colours(qtbot):
    grey = picture(np.array([[[0.0, 0.5], [1.0, 2.0]]], np.float32))  # one channel in [0, 1]: stays float
    pix = picture_pixmap(grey)
    assert (pix.width(), pix.height()) == (2, 2)
    assert [grey_at(pix, 0, 0), grey_at(pix, 1, 0), grey_at(pix, 0, 1), grey_at(pix, 1, 1)] == [0, 128, 255, 255]
    rgb = picture(np.stack([np.full((3, 4), v, np.float32) for v in (1.0, 0.0, 0.2)]))  # three channels: uint8
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 4, 3)
    colour = picture_pixmap(rgb, 8).toImage().pixelColor(0, 0)
    assert (colour.red(), colour.green(), colour.blue()) == (255, 0, 51)
    assert picture_pixmap(rgb, 8).width() == 8  # fitted into the cell, shape kept


def test_a_preview_spans_its_window_to_the_nearest_level(qtbot):
    image = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    assert to_uint8(image, 0.0, 4.0).tolist() == [[0, 64], [128, 255]]
    assert to_uint8(np.zeros((3, 2, 5)), 0.0, 1.0).shape == (2, 5, 3)  # channels first in, last out
    assert grey_at(to_pixmap(image, 0.0, 4.0), 1, 1) == 255
