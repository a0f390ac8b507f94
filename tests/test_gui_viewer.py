"""The slice viewer: right slice in each pane for any affine, cursor, keys, mouse, presets, linking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from medsynth_gui.viewer import CompareView, Viewer, ViewState  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ROOT = Path(__file__).resolve().parent.parent
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def phantom():
    ds = make_phantoms(1, size=32, dims=3)
    return ds.images[0, 0], ds.masks[0], ds.label_names


@pytest.fixture
def make_viewer(qtbot):
    def make(layout: str = "row", size: tuple[int, int] = (1200, 440)) -> Viewer:
        v = Viewer(layout=layout)
        qtbot.addWidget(v)
        v.resize(*size)
        v.show()
        qtbot.waitExposed(v)
        return v
    return make


def expected_ras(vol: np.ndarray, i: int, j: int, k: int) -> list[np.ndarray]:
    """What Slicer shows for an RAS volume, in pyqtgraph order [column, row-from-bottom]:
    axial and coronal put the patient's right (high x index) on the left; sagittal puts
    anterior (high y index) on the left; superior and anterior are up."""
    return [vol[::-1, :, k], vol[::-1, j, :], vol[i, ::-1, :]]


def shown(viewer: Viewer) -> list[np.ndarray]:
    return [np.asarray(p.image_item.image) for p in viewer.slice_views]


def letters(viewer: Viewer) -> list[str]:
    return ["".join(p.letters[e].text() for e in ("left", "right", "top", "bottom"))
            for p in viewer.slice_views]


def viewport_pos(pane, index) -> QPoint:
    return pane.mapFromScene(pane.scene_pos_of(index))


def wheel(pane, notches: int, mods=Qt.KeyboardModifier.NoModifier) -> None:
    vp = pane.viewport()
    pos = QPointF(vp.rect().center())
    ev = QWheelEvent(pos, QPointF(vp.mapToGlobal(pos.toPoint())), QPoint(0, 0), QPoint(0, 120 * notches),
                     Qt.MouseButton.NoButton, mods, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(vp, ev)


def drag(qtbot, pane, button, start: QPoint, delta: QPoint, steps: int = 5) -> None:
    vp = pane.viewport()
    qtbot.mousePress(vp, button, pos=start)
    for step in range(1, steps + 1):
        qtbot.wait(15)  # pyqtgraph drops mouse moves closer together than its rate limit
        qtbot.mouseMove(vp, start + delta * step / steps)
    qtbot.mouseRelease(vp, button, pos=start + delta)


def width(pane) -> float:
    (x0, x1), _ = pane.vb.viewRange()
    return x1 - x0


def test_state_model_needs_no_qt():
    code = ("import sys; from medsynth_gui.viewer.state import ViewState; import numpy as np; "
            "s = ViewState(); s.set_image(np.zeros((4, 5, 6), np.float32)); "
            "assert s.cursor == (2, 2, 3) and [p.name for p in s.planes] == ['Axial', 'Coronal', 'Sagittal']; "
            "assert not any(m.startswith(('PySide6', 'pyqtgraph')) for m in sys.modules), 'Qt was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_state_notifies_only_on_real_change(phantom):
    vol, mask, names = phantom
    st = ViewState()
    st.set_image(vol, mask=mask, label_names=names)
    seen: list = []
    st.subscribe("cursor", seen.append)
    st.subscribe("mask_opacity", seen.append)
    st.cursor = st.cursor
    st.mask_opacity = st.mask_opacity
    assert seen == []
    st.cursor = (1, 2, 3)
    st.cursor = (1, 2, 3)
    st.cursor = (99, -5, 3)  # clipped into the volume
    st.mask_opacity = 7.0  # clamped to 1
    assert seen == [(1, 2, 3), (31, 0, 3), 1.0]
    with pytest.raises(ValueError, match="mask shape"):
        st.set_image(vol[:, :, :5], mask=mask)
    assert st.volume is vol and st.spatial_shape == (32, 32, 32)  # a refused load changes nothing


def test_each_pane_shows_its_slice_with_overlay(make_viewer, phantom):
    vol, mask, names = phantom
    v = make_viewer()
    v.set_image(vol, mask=mask, label_names=names, title="phantom")
    assert [p.plane.name for p in v.slice_views] == ["Axial", "Coronal", "Sagittal"]
    i, j, k = (int(x) for x in np.argwhere(mask > 0)[0])
    v.state.cursor = (i, j, k)
    for pane, want, want_mask in zip(v.slice_views, expected_ras(vol, i, j, k), expected_ras(mask, i, j, k)):
        np.testing.assert_array_equal(pane.image_item.image, want)
        np.testing.assert_array_equal(pane.displayed_mask(), want_mask)
        assert pane.mask_item.isVisible()
        # The overlay lies exactly on the image: same pixel grid, same place.
        overlay = pane.mask_item.mapRectToParent(pane.mask_item.boundingRect())
        assert overlay == pane.image_item.mapRectToParent(pane.image_item.boundingRect())
        # Painting is clipped to the labels' box, which holds every label on the slice.
        rows, cols = np.nonzero(want_mask)
        clip = pane.mask_item.clip
        assert clip.left() < rows.min() and clip.right() > rows.max() + 1
        assert clip.top() < cols.min() and clip.bottom() > cols.max() + 1
    # A slice with no labels draws no overlay at all.
    empty = int(np.flatnonzero(~mask.any(axis=(0, 1)))[0])
    v.state.cursor = (i, j, empty)
    assert not v.slice_views[0].mask_item.isVisible() and v.slice_views[0].displayed_mask() is None
    assert letters(v) == ["RLAP", "RLSI", "APSI"]
    # Not square voxels: the picture keeps its shape in millimetres.
    v.set_image(vol, spacing=(0.5, 1.0, 3.0))
    rect = v.slice_views[1].image_item.mapRectToParent(v.slice_views[1].image_item.boundingRect())
    assert (rect.width(), rect.height()) == pytest.approx((16.0, 96.0))


def test_panes_follow_the_affine_not_the_array_axes(make_viewer):
    rng = np.random.default_rng(0)
    vol = rng.random((5, 6, 7), dtype=np.float32)  # unequal sides catch a swapped axis
    v = make_viewer()
    v.set_image(vol)
    v.state.cursor = (1, 2, 3)
    ras = shown(v)
    for a, b in zip(ras, expected_ras(vol, 1, 2, 3)):
        np.testing.assert_array_equal(a, b)

    # The same anatomy stored LPS (x and y reversed) must look exactly the same.
    lps = LPS.copy()
    lps[:3, 3] = (4, 5, 0)
    v.set_image(vol[::-1, ::-1, :], affine=lps)
    assert letters(v) == ["RLAP", "RLSI", "APSI"]
    v.state.set_cursor_world((1, 2, 3))
    assert v.state.cursor == (3, 3, 3)
    for a, b in zip(shown(v), ras):
        np.testing.assert_array_equal(a, b)

    # And stored slice-first (Z, X, Y) with a permuting affine.
    perm = np.zeros((4, 4))
    perm[0, 1] = perm[1, 2] = perm[2, 0] = perm[3, 3] = 1.0
    v.set_image(np.ascontiguousarray(vol.transpose(2, 0, 1)), affine=perm)
    v.state.set_cursor_world((1, 2, 3))
    assert v.state.cursor == (3, 1, 2)
    for a, b in zip(shown(v), ras):
        np.testing.assert_array_equal(a, b)


def test_plain_lps_affine_letters(make_viewer, phantom):
    vol, _, _ = phantom
    v = make_viewer(layout="grid", size=(800, 800))
    v.set_image(vol, affine=LPS)
    axial = v.slice_views[0]
    assert (axial.plane.h_flip, axial.plane.v_flip) == (False, True)  # L already runs to the right
    assert letters(v) == ["RLAP", "RLSI", "APSI"]
    assert "voxel axes point LPS" in v.info.text() and v.info.isVisible()
    assert v.legend.entries() == []  # no mask, no legend


def test_cursor_click_wheel_and_keys(make_viewer, qtbot, phantom):
    vol, mask, names = phantom
    v = make_viewer()
    v.set_image(vol, mask=mask, label_names=names)
    axial, coronal, sagittal = v.slice_views

    # A click in the axial pane moves the crosshair everywhere and the other panes' slices.
    qtbot.mouseClick(axial.viewport(), Qt.MouseButton.LeftButton, pos=viewport_pos(axial, (7, 25, 16)))
    assert v.state.cursor == (7, 25, 16)
    np.testing.assert_array_equal(coronal.image_item.image, vol[::-1, 25, :])
    np.testing.assert_array_equal(sagittal.image_item.image, vol[7, ::-1, :])
    assert axial.v_line.value() == pytest.approx(31 - 7 + 0.5)
    assert coronal.h_line.value() == pytest.approx(16.5)

    wheel(axial, 2)
    assert v.state.cursor == (7, 25, 18)
    np.testing.assert_array_equal(axial.image_item.image, vol[::-1, :, 18])
    qtbot.keyClick(axial, Qt.Key.Key_Down)
    qtbot.keyClick(coronal, Qt.Key.Key_PageUp)
    assert v.state.cursor == (7, 31, 17)  # PageUp jumps 10 slices, clipped at the edge
    # Sagittal steps towards R; with an LPS file that is a falling index.
    v.set_image(vol, affine=LPS)
    before = v.state.cursor
    qtbot.keyClick(v.slice_views[2], Qt.Key.Key_Up)
    assert v.state.cursor == (before[0] - 1, *before[1:])

    # Ctrl+wheel zooms that pane only; R fits it again.
    full, other = axial.vb.viewRange(), width(coronal)
    wheel(axial, 2, Qt.KeyboardModifier.ControlModifier)
    assert width(axial) < 0.8 * (full[0][1] - full[0][0])
    assert width(coronal) == pytest.approx(other)
    assert v.state.cursor == (before[0] - 1, *before[1:])
    # Middle-drag pans without touching the crosshair.
    x0 = axial.vb.viewRange()[0][0]
    drag(qtbot, axial, Qt.MouseButton.MiddleButton, axial.viewport().rect().center(), QPoint(60, 0))
    assert axial.vb.viewRange()[0][0] < x0 - 1
    assert v.state.cursor == (before[0] - 1, *before[1:])
    qtbot.keyClick(axial, Qt.Key.Key_R)
    assert axial.vb.viewRange()[0] == pytest.approx(full[0], abs=0.5)
    # With zoom linked, the other panes follow.
    v.controls.zoom_button.setChecked(True)
    assert v.state.link_zoom
    wheel(axial, 2, Qt.KeyboardModifier.ControlModifier)
    assert width(coronal) == pytest.approx(other * width(axial) / (full[0][1] - full[0][0]), rel=0.02)


def test_window_level_presets_drag_and_mask_key(make_viewer, qtbot, phantom):
    vol, mask, names = phantom
    v = make_viewer()
    v.set_image(vol, mask=mask, label_names=names, units="HU")
    axial = v.slice_views[0]
    assert v.controls.preset.currentText() == "CT abdomen"
    assert tuple(axial.image_item.levels) == pytest.approx((40 - 175, 40 + 175))

    combo = v.controls.preset
    combo.setCurrentText("CT lung")
    combo.activated.emit(combo.currentIndex())
    assert all(tuple(p.image_item.levels) == pytest.approx((-1200, 200)) for p in v.slice_views)
    combo.setCurrentText("MRI auto")
    combo.activated.emit(combo.currentIndex())
    lo, hi = np.percentile(vol, [0.1, 99.9])
    assert tuple(axial.image_item.levels) == pytest.approx((lo, hi), rel=1e-4)

    # Right-drag: right widens the window, down raises the level; the crosshair stays.
    w0, l0 = v.state.window_level
    cursor = v.state.cursor
    centre = axial.viewport().rect().center()
    drag(qtbot, axial, Qt.MouseButton.RightButton, centre, QPoint(60, 40))
    w1, l1 = v.state.window_level
    assert w1 > w0 and l1 > l0 and v.state.cursor == cursor
    assert combo.currentText() == "Custom"
    assert axial.wl_text.text().startswith("W ")

    i, j, k = (int(x) for x in np.argwhere(mask > 0)[-1])
    v.state.cursor = (i, j, k - 1)
    qtbot.keyClick(axial, Qt.Key.Key_G)
    assert not v.state.mask_visible and not v.controls.mask_box.isChecked()
    assert not any(p.mask_item.isVisible() for p in v.slice_views)
    qtbot.keyClick(axial, Qt.Key.Key_Up)  # scrolling while hidden, then showing again
    v.controls.mask_box.setChecked(True)
    assert all(p.mask_item.isVisible() for p in v.slice_views)
    np.testing.assert_array_equal(axial.displayed_mask(), mask[::-1, :, k])
    v.controls.opacity.setValue(80)
    assert v.state.mask_opacity == pytest.approx(0.8)
    assert axial.mask_item.lut[1, 3] == 204  # opacity lives in the overlay's colour table
    qtbot.keyClick(axial, Qt.Key.Key_W)
    assert v.state.wl_mode and v.controls.wl_button.isChecked()
    # In W/L mode a left-drag to the left narrows the window instead of moving the crosshair.
    cursor = v.state.cursor
    drag(qtbot, axial, Qt.MouseButton.LeftButton, centre, QPoint(-50, 0))
    assert v.state.window_level[0] < w1 and v.state.cursor == cursor
    assert v.legend.entries() == ["bright lesion", "dark lesion"]


def test_hover_readout(make_viewer, qtbot, phantom):
    vol, mask, names = phantom
    v = make_viewer()
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = (-8, -8, 10)
    v.set_image(vol, mask=mask, label_names=names, affine=affine, units="a.u.")
    i, j, k = (int(x) for x in np.argwhere(mask == 1)[0])
    v.state.cursor = (0, 0, k)
    axial = v.slice_views[0]
    with qtbot.waitSignal(v.readout, timeout=2000) as got:
        qtbot.mouseMove(axial.viewport(), viewport_pos(axial, (i, j, k)))
    text = got.args[0]
    x, y, z = affine[:3, :3] @ (i, j, k) + affine[:3, 3]
    assert text.startswith("Axial")
    assert f"({x:.1f}, {y:.1f}, {z:.1f}) mm" in text
    assert f"voxel [{i}, {j}, {k}]" in text
    assert f"value {vol[i, j, k]:.4g} a.u." in text
    assert "label 1 bright lesion" in text
    assert v.state.cursor == (0, 0, k)  # hovering alone leaves the crosshair


def test_compare_links_location_and_display(qtbot, phantom):
    vol, mask, names = phantom
    c = CompareView()
    qtbot.addWidget(c)
    c.resize(1500, 720)
    c.show()
    qtbot.waitExposed(c)
    c.set_left(vol, mask=mask, label_names=names, title="real")
    # The right image is half the resolution and stored LPS: linking goes through millimetres.
    small = vol[::2, ::2, ::2][::-1, ::-1, :].copy()
    aff = np.diag([-2.0, -2.0, 2.0, 1.0])
    aff[:3, 3] = (30, 30, 0)
    c.set_right(small, mask=mask[::2, ::2, ::2][::-1, ::-1, :].copy(), affine=aff, label_names=names, title="synthetic")
    L, R = c.left.state, c.right.state
    assert c.link_location.isChecked() and not c.link_display.isChecked()

    L.cursor = (10, 20, 6)
    assert R.cursor == (10, 5, 3)
    np.testing.assert_allclose(R.cursor_world, L.cursor_world)
    R.cursor = (2, 2, 2)
    assert L.cursor == (26, 26, 4)

    L.window_level = (123.0, 45.0)
    assert R.window_level != (123.0, 45.0)
    c.link_display.setChecked(True)
    assert R.window_level == (123.0, 45.0)
    R.mask_opacity = 0.9
    R.mask_visible = False
    assert (L.mask_opacity, L.mask_visible) == (0.9, False)
    assert not c.left.slice_views[0].mask_item.isVisible()

    c.link_location.setChecked(False)
    c.link_display.setChecked(False)
    L.cursor = (0, 0, 0)
    L.window_level = (10.0, 5.0)
    assert R.cursor == (2, 2, 2) and R.window_level == (123.0, 45.0)

    ARTIFACTS.mkdir(exist_ok=True)
    c.link_location.setChecked(True)
    c.link_display.setChecked(True)
    L.cursor = tuple(int(x) for x in np.argwhere(mask == 1).mean(axis=0))
    L.window_level = L.presets["MRI auto"]
    L.mask_visible, L.mask_opacity = True, 0.5
    assert c.left.legend.entries() == ["bright lesion", "dark lesion"]
    qtbot.wait(30)  # let pending layout requests run, as they would before a user sees it
    assert c.grab().save(str(ARTIFACTS / "compare.png"))


def test_2d_and_colour_images_show_one_pane(make_viewer):
    v = make_viewer()
    img = np.random.default_rng(1).random((20, 30), dtype=np.float32)
    mask = (img > 0.8).astype(np.uint8)
    v.set_image(img, mask=mask, label_names={1: "bright"})
    assert len(v.slice_views) == 1 and v.slice_views[0].plane.name == "Image"
    assert sum(p.isVisible() for p in v._panes) == 1
    # Row 0 at the top, column 0 at the left, as in any picture viewer.
    np.testing.assert_array_equal(v.slice_views[0].image_item.image, img.T[:, ::-1])
    assert v.state.describe("Image", (3, 4)).startswith("Image  (4.0, 3.0) mm  voxel [3, 4]")
    rgb = np.random.default_rng(2).random((3, 20, 30), dtype=np.float32)
    v.set_image(rgb)
    assert len(v.slice_views) == 1 and v.slice_views[0].image_item.image.shape == (30, 20, 3)
    assert v.controls.preset.currentText() == "Full range"
    v.set_image(np.zeros((4, 5, 6), np.float32))
    assert len(v.slice_views) == 3


def test_screenshot_of_3d_viewer(make_viewer, qtbot, phantom):
    vol, mask, names = phantom
    v = make_viewer(size=(1200, 440))
    v.set_image(vol, mask=mask, label_names=names, title="phantom 32³")
    i, j, k = (int(x) for x in np.argwhere(mask == 1).mean(axis=0))
    v.state.cursor = (i, j, k)
    ARTIFACTS.mkdir(exist_ok=True)
    qtbot.wait(30)
    assert v.grab().save(str(ARTIFACTS / "viewer_3d.png"))
