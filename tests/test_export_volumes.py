"""Volumes out: NIfTI and nnU-Net exports keep data, affine and spacing; info and the viewer agree on orientation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.io.medsynth_writer import SampleWriter
from engine.io.sources.msd import read_msd
from medsynth.cli import main

SPACING = (1.5, 1.0, 2.0)  # x, y, z in mm
SHAPE = (12, 16, 20)  # stored (D, H, W); NIfTI (x, y, z) = (20, 16, 12)
MARKER = 3000.0


def _affine(kind: str) -> np.ndarray | None:
    if kind == "none":
        return None
    signs = (1.0, 1.0, 1.0) if kind == "ras" else (-1.0, -1.0, 1.0)  # "lps": x and y reversed, as DICOM stores
    a = np.diag([*(s * v for s, v in zip(signs, SPACING)), 1.0])
    a[:3, 3] = (-14.0, 22.5, 7.0)
    return a


def _ras_corner(affine: np.ndarray) -> tuple[int, int, int]:
    """The (x, y, z) voxel furthest to the patient's right, anterior and superior."""
    ornt = nib.orientations.io_orientation(affine)
    size = SHAPE[::-1]
    return tuple(size[axis] - 1 if sign > 0 else 0 for axis, (_, sign) in enumerate(ornt))


def make_h5(path: Path, kind: str = "ras", channels: int = 1, masks: bool = True, n: int = 3,
            written: int | None = None) -> Path:
    rng = np.random.default_rng(1)
    images = rng.uniform(-1000, 1000, (n, channels, *SHAPE)).astype(np.float32)
    mask = np.zeros((n, *SHAPE), np.uint8)
    mask[:, :, 4:9, 5:12] = 1  # every slice holds foreground, so the MSD reader keeps them all
    mask[:, 3:7, 10:13, 2:6] = 2
    affine = _affine(kind)
    x, y, z = _ras_corner(affine if affine is not None else np.diag([*SPACING, 1.0]))
    images[:, :, z, y, x] = MARKER
    with SampleWriter(path, n, (channels, *SHAPE), masks=masks, labels=True, class_names=["a", "b", "c"],
                      label_names={1: "lesion", 2: "cyst"}, spacing=SPACING, affine=affine, intensity_units="HU",
                      normalisation={"modality": "CT", "lo": -1000.0, "hi": 1000.0}) as w:
        k = n if written is None else written
        if k:
            w.append(images[:k], np.arange(7, 7 + k), mask[:k] if masks else None, np.arange(k) % 3)
    return path


def stored(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path) as f:
        return f["images"][:], f["masks"][:]


def export(h5: Path, out: Path, fmt: str) -> None:
    assert main(["export", str(h5), "--to", str(out), "--format", fmt]) == 0


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("kind", ["ras", "lps", "none"])
def test_nifti_export_keeps_data_affine_and_spacing(tmp_path, kind):
    h5 = make_h5(tmp_path / "v.h5", kind)
    export(h5, tmp_path / "out", "nifti")
    images, masks = stored(h5)
    # A file without an affine still places its voxels at their true size.
    want_affine = _affine(kind) if kind != "none" else np.diag([*SPACING, 1.0])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["samples.csv"] + [f"synth_{i:05d}{s}.nii.gz" for i in range(3) for s in ("", "_seg")]
    for i in range(3):
        img = nib.load(tmp_path / "out" / f"synth_{i:05d}.nii.gz")
        seg = nib.load(tmp_path / "out" / f"synth_{i:05d}_seg.nii.gz")
        for nii in (img, seg):
            np.testing.assert_allclose(nii.affine, want_affine)
            # Both forms set and equal, so Slicer / ITK-SNAP (qform) and FSL (sform) agree.
            assert int(nii.header["sform_code"]) == int(nii.header["qform_code"]) == 1
            np.testing.assert_allclose(nii.get_qform(), want_affine, atol=1e-5)
            assert nii.header.get_zooms() == pytest.approx(SPACING)
        assert img.get_data_dtype() == np.float32 and seg.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(img.dataobj), images[i, 0].transpose(2, 1, 0))
        np.testing.assert_array_equal(np.asarray(seg.dataobj), masks[i].transpose(2, 1, 0))
    rows = list(csv.DictReader((tmp_path / "out" / "samples.csv").open()))
    assert rows[1] == {"file": "synth_00001.nii.gz", "mask": "synth_00001_seg.nii.gz", "seed": "8",
                       "class_index": "1", "class_name": "b"}


def test_several_channels_give_one_3d_file_each(tmp_path):
    h5 = make_h5(tmp_path / "v.h5", channels=2, n=1)
    export(h5, tmp_path / "out", "nifti")
    images, _ = stored(h5)
    for c in range(2):
        img = nib.load(tmp_path / "out" / f"synth_00000_{c:04d}.nii.gz")
        assert img.shape == SHAPE[::-1]
        np.testing.assert_array_equal(np.asarray(img.dataobj), images[0, c].transpose(2, 1, 0))
    assert (tmp_path / "out" / "synth_00000_seg.nii.gz").exists()


@pytest.mark.parametrize("kind", ["ras", "lps"])
def test_nnunet_export_layout_dataset_json_and_read_back(tmp_path, kind):
    h5 = make_h5(tmp_path / "v.h5", kind)
    out = tmp_path / "Dataset001_Synth"
    export(h5, out, "nnunet")
    images, masks = stored(h5)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"synth_{i:05d}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"synth_{i:05d}.nii.gz" for i in range(3)]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "lesion": 1, "cyst": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    img = nib.load(out / "imagesTr" / "synth_00002_0000.nii.gz")
    lab = nib.load(out / "labelsTr" / "synth_00002.nii.gz")
    np.testing.assert_allclose(img.affine, _affine(kind))
    np.testing.assert_allclose(lab.affine, _affine(kind))
    np.testing.assert_array_equal(np.asarray(img.dataobj), images[2, 0].transpose(2, 1, 0))
    np.testing.assert_array_equal(np.asarray(lab.dataobj), masks[2].transpose(2, 1, 0))

    # The engine's own reader takes the dataset back: every axial slice of every case, upright.
    s = read_msd(out)
    assert s.images.shape == (3 * SHAPE[0], 1, SHAPE[1], SHAPE[2]) and s.modality == "CT"
    assert s.label_names == {0: "background", 1: "lesion", 2: "cyst"}
    assert s.spacing == pytest.approx(SPACING[:2])  # (x, y) of each axial slice
    # RAS: anterior (high y) goes to the top row; LPS: the reader turns x round to canonical R.
    upright = (lambda a: a[::-1, :]) if kind == "ras" else (lambda a: a[:, ::-1])
    np.testing.assert_array_equal(s.images[SHAPE[0] + 5, 0], upright(images[1, 0, 5]))
    np.testing.assert_array_equal(s.masks[SHAPE[0] + 5], upright(masks[1, 5]))


def test_2d_file_exports_as_nifti_and_nnunet(tmp_path):
    h5 = tmp_path / "flat.h5"
    rng = np.random.default_rng(0)
    images = rng.random((2, 1, 8, 10)).astype(np.float32)
    masks = (images[:, 0] > 0.5).astype(np.uint8)
    with SampleWriter(h5, 2, (1, 8, 10), masks=True, labels=False, spacing=(0.5, 0.8),
                      label_names={1: "polyp"}) as w:
        w.append(images, np.arange(2), masks)
    export(h5, tmp_path / "nii", "nifti")
    img = nib.load(tmp_path / "nii" / "synth_00001.nii.gz")
    # 2D spacing is (x, y), x along the columns, as NIfTI's x runs.
    assert img.shape == (10, 8, 1) and img.header.get_zooms() == pytest.approx((0.5, 0.8, 1.0))
    # The picture's top row is the highest y, so viewers show it upright.
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0], images[1, 0][::-1].T)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "nii" / "synth_00001_seg.nii.gz").dataobj)[:, :, 0],
                                  masks[1][::-1].T)
    export(h5, tmp_path / "nn", "nnunet")
    s = read_msd(tmp_path / "nn" / "Dataset501_MedSynth")
    assert s.images.shape == (2, 1, 8, 10) and s.spacing == pytest.approx((0.5, 0.8))
    # Read back by the engine's own reader, the dataset is the samples as they were.
    np.testing.assert_array_equal(s.images[:, 0], images[:, 0])
    np.testing.assert_array_equal(s.masks, masks)
    assert json.loads((tmp_path / "nn" / "Dataset501_MedSynth" / "dataset.json").read_text())["labels"] == \
        {"background": 0, "polyp": 1}


@pytest.mark.parametrize("case", ["format", "not-empty", "no-complete", "missing", "no-masks", "png-of-volumes"])
def test_bad_inputs_give_one_line_exit_2_and_write_nothing(tmp_path, capsys, case):
    h5 = tmp_path / "v.h5"
    out = tmp_path / "out"
    fmt = "nifti"
    named = h5
    if case == "format":
        make_h5(h5, n=1)
        fmt = "dicom"
    elif case == "not-empty":
        make_h5(h5, n=1)
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        named = out
    elif case == "no-complete":
        make_h5(h5, n=2, written=0)
    elif case == "missing":
        h5 = named = tmp_path / "nope.h5"
    elif case == "no-masks":
        make_h5(h5, n=1, masks=False)
        fmt = "nnunet"
    else:
        make_h5(h5, n=1)
        fmt = "png"
    assert main(["export", str(h5), "--to", str(out), "--format", fmt]) == 2
    line = error_line(capsys)
    assert str(named) in line, line
    if case == "not-empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


@pytest.mark.parametrize(("kind", "letters", "origin"), [("lps", "LPS", "-14, 22.5, 7"), ("none", "RAS", "0, 0, 0")])
def test_info_shows_orientation_and_spacing(tmp_path, capsys, kind, letters, origin):
    h5 = make_h5(tmp_path / "v.h5", kind, n=1)
    assert main(["info", str(h5)]) == 0
    out = capsys.readouterr().out
    assert f"orientation: {letters} (voxel x, y, z = stored W, H, D), origin ({origin}) mm" in out
    assert "spacing: [1.5, 1.0, 2.0]" in out


# -- the viewer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ras", "lps"])
def test_exported_nifti_opens_in_the_viewer_like_the_h5_sample(tmp_path, qtbot, kind):
    pytest.importorskip("PySide6")
    from engine.io.sources.h5 import sample_view
    from engine.io.sources.nifti_view import nifti_view
    from medsynth_gui.viewer import Viewer

    h5 = make_h5(tmp_path / "v.h5", kind, n=2)
    export(h5, tmp_path / "out", "nifti")
    a, b = sample_view(h5, 1), nifti_view(tmp_path / "out" / "synth_00001.nii.gz")
    assert nib.aff2axcodes(a.affine) == nib.aff2axcodes(b.affine) == (("R", "A", "S") if kind == "ras"
                                                                       else ("L", "P", "S"))
    np.testing.assert_allclose(b.affine, a.affine)
    np.testing.assert_array_equal(b.image, a.image)
    np.testing.assert_array_equal(b.mask, a.mask)  # found through the _seg partner
    # NIfTI has no unit field: the loader knows HU from air at -1000, which the data has.
    assert b.spacing == pytest.approx(a.spacing) and b.units == a.units == "HU"

    v = Viewer()
    qtbot.addWidget(v)
    v.resize(900, 320)
    v.show()
    qtbot.waitExposed(v)
    for shown in (a, b):
        v.set_image(shown.image, mask=shown.mask, affine=shown.affine, spacing=shown.spacing, units=shown.units)
        panes = v.slice_views
        assert ["".join(p.letters[e].text() for e in ("left", "right", "top", "bottom")) for p in panes] == \
               ["RLAP", "RLSI", "APSI"]
        # The voxel furthest right, anterior and superior sits where the letters say: top left in every pane
        # (axial R|A, coronal R|S, sagittal A|S). Pictures are [column, row-from-bottom].
        v.state.cursor = _ras_corner(shown.affine)
        for pane in panes:
            picture = np.asarray(pane.image_item.image)
            assert picture[0, -1] == MARKER and (picture == MARKER).sum() == 1, pane.plane.name


def test_a_degenerate_affine_shows_question_marks_instead_of_crashing():
    from medsynth_gui.viewer.orientation import planes_for

    # A zero column (a header with pixdim 0): nibabel gives NaN rows, not an error.
    planes = planes_for(np.diag([1.0, 1.0, 0.0, 1.0]), (4, 5, 6))
    assert [p.normal for p in planes] == [2, 1, 0]
    assert all(set(p.letters.values()) == {"?"} for p in planes)
