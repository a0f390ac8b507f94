"""The registry of data sources (engine/io/sources): each public data set's layout is claimed by exactly one
source class, and the engine's loader, `medsynth info` and the app's loader say the same thing about it (its
description, counts, shape and spacing). A path no source claims is one InputError line naming it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.info import describe
from engine.io.load import load_images
from engine.io.medsynth_h5 import read_image_set
from engine.io.medsynth_writer import write_image_set
from engine.io.sources import (
    SOURCES,
    DicomFolder,
    ImageFolder,
    MedMNISTFile,
    MedSynthFile,
    NiftiFile,
    NiftiFolder,
    RawDataset,
    source_for,
)
from engine.io.volumes import VolumeOptions, read_volumes
from medsynth.cli import main
from medsynth_gui.loaders import ViewCache, dataset_view, opened_as
from tests import corpus as C
from tests.test_partners import make_raw_folder

ROOT = Path(__file__).resolve().parents[1]
NIFTI_ZOOMS = (0.8, 0.9, 2.5)


def _nifti_pair(root: Path) -> Path:
    """A single RAS NIfTI volume with its `_seg` partner, the layout of most research exports."""
    root.mkdir(parents=True)
    shape = (20, 18, 8)
    image = np.random.default_rng(3).normal(100.0, 10.0, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[6:12, 5:11, 2:6] = 1
    affine = np.diag([*NIFTI_ZOOMS, 1.0])
    nib.save(nib.Nifti1Image(image, affine), root / "case.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "case_seg.nii.gz")
    return root / "case.nii.gz"


def _medsynth(root: Path) -> Path:
    root.mkdir(parents=True)
    return write_image_set(root / "synth.h5", make_phantoms(5, 16))


# layout: (builder, the source class that must claim it, its description before reading)
LAYOUTS = {
    "kvasir-jpeg": (lambda d: C.kvasir(d / "kvasir").path, ImageFolder, "image/mask folder"),
    "grey-png-masks": (lambda d: C.grey_masks(d / "grey", (0, 127, 254)).path, ImageFolder, "image/mask folder"),
    "palette-png-masks": (lambda d: C.palette_masks(d / "voc").path, ImageFolder, "image/mask folder"),
    "medmnist-npz": (lambda d: C.medmnist(d / "organ.npz").path, MedMNISTFile, "MedMNIST file"),
    "msd-folder": (lambda d: make_raw_folder(d / "Task04_Hippocampus", "msd"), RawDataset, "MSD folder, 3 cases"),
    "nnunet-folder": (lambda d: C.msd_folder(d / "Dataset042_BraTS", "nnunet").path, RawDataset,
                      "nnU-Net folder, 3 cases"),
    "nifti-with-seg": (lambda d: _nifti_pair(d / "nifti"), NiftiFile, "NIfTI file"),
    "nifti-folder": (lambda d: C.nifti_geometry(d / "grids").path, NiftiFolder, "NIfTI folder, 3 cases"),
    "dicom-series": (lambda d: C.dicom_series(d / "patient" / "series")[0].path, DicomFolder, "DICOM series"),
    "dicom-folder-of-series": (lambda d: C.dicom_series(d / "patient" / "series")[0].path.parent, DicomFolder,
                               "DICOM folder, 1 series"),
    "medsynth-h5": (lambda d: _medsynth(d / "out"), MedSynthFile, "MedSynth file, 5 samples"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_public_layout_is_claimed_by_exactly_one_source(layout, tmp_path):
    build, kind, description = LAYOUTS[layout]
    path = build(tmp_path)
    claimed = [type(s) for s in SOURCES if s.claims(path)]
    assert claimed == [kind], claimed
    assert isinstance(source_for(path), kind)
    assert source_for(path).describe(path) == description


def test_a_label_map_given_alone_is_a_nifti_file_too(tmp_path):
    image = _nifti_pair(tmp_path / "nifti")
    seg = image.with_name("case_seg.nii.gz")
    assert [type(s) for s in SOURCES if s.claims(seg)] == [NiftiFile]
    # Read as the pair it belongs to, everywhere.
    assert load_images(seg).names == load_images(image).names
    assert opened_as(seg)[1].image.shape == opened_as(image)[1].image.shape


SETS = ["kvasir-jpeg", "grey-png-masks", "palette-png-masks", "medmnist-npz", "msd-folder", "nnunet-folder",
        "nifti-with-seg", "nifti-folder"]


@pytest.mark.parametrize("layout", SETS)
def test_the_engine_info_and_the_app_agree_on_a_set(layout, tmp_path):
    build, _, _ = LAYOUTS[layout]
    path = build(tmp_path)
    data = load_images(path)
    summary = source_for(path).describe(path, data)
    assert summary.startswith(LAYOUTS[layout][2]) and str(len(data)) in summary
    # `medsynth info`
    text = describe(path)
    assert f"{path}: {len(data)} image(s) of {data.size[0]}x{data.size[1]} px, {data.channels} channel(s)" in text
    assert f"  source: {summary}" in text.splitlines()
    if data.spacing:
        assert f"spacing: {tuple(round(v, 4) for v in data.spacing)}" in text
    # The app: a set is read into the gallery's cache, titled by the same words, holding the same images.
    how, view = opened_as(path)
    assert (how, view) == ("dataset", None) or layout == "nifti-with-seg"
    cached, title = dataset_view(path, ViewCache(tmp_path / "cache"))
    assert title == f"{path.name} ({summary})"
    copy = read_image_set(cached)
    assert copy.images.shape == data.images.shape and len(copy.names or []) == len(data.names or [])
    if data.spacing:
        assert copy.spacing == pytest.approx(data.spacing)
    assert (copy.masks is None) == (data.masks is None)


def test_the_engine_info_and_the_viewer_agree_on_a_nifti_volume(tmp_path):
    path = _nifti_pair(tmp_path / "nifti")
    how, view = opened_as(path)
    assert how == "viewer" and view.image.shape == (20, 18, 8) and view.mask is not None
    assert view.spacing == pytest.approx(NIFTI_ZOOMS)
    data = load_images(path)
    assert data.spacing == pytest.approx(NIFTI_ZOOMS[:2])  # slices keep the volume's in-plane spacing
    assert data.size == (18, 20)  # axial slices shown upright: rows along y, columns along x
    assert "label map: " + str(path.with_name("case_seg.nii.gz")) in describe(path)
    cube = load_images(path, volumes=VolumeOptions(size=8))
    assert cube.images.shape == (1, 1, 8, 8, 8) and cube.masks is not None


def test_the_engine_info_and_the_viewer_agree_on_a_dicom_series(tmp_path):
    corpus, hu = C.dicom_series(tmp_path / "patient" / "series")
    path = corpus.path
    how, view = opened_as(path)
    assert how == "viewer" and view.units == "HU" and view.image.shape == hu.shape
    assert view.spacing == pytest.approx(C.DICOM_ZOOMS)
    np.testing.assert_allclose(view.image, hu)  # the rescale intercept applied
    text = describe(path)
    assert text.startswith(f"{path}: DICOM series (CT), volume {hu.shape} voxels of "
                           f"{tuple(round(s, 3) for s in C.DICOM_ZOOMS)} mm")
    cube = load_images(path, volumes=VolumeOptions(size=8))
    assert cube.images.shape == (1, 1, 8, 8, 8) and cube.modality == "CT"
    # The folder of series is one case per series for the 3D reader, and the app reads it as a set.
    assert len(read_volumes(path.parent, VolumeOptions(size=8))) == 1
    assert opened_as(path.parent) == ("dataset", None)
    with pytest.raises(InputError, match="3D preset"):
        load_images(path)


def test_a_medsynth_file_opens_in_the_gallery_as_it_is(tmp_path):
    path = _medsynth(tmp_path / "out")
    assert opened_as(path) == ("gallery", None)
    assert len(load_images(path)) == 5
    assert describe(path).startswith(f"{path}: MedSynth HDF5 v1 (") and "5 of 5 samples complete" in describe(path)


def test_an_unknown_file_is_one_input_error_naming_it(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    for path in (notes, folder):
        for read in (source_for, load_images, describe, opened_as, lambda p: read_volumes(p, VolumeOptions(size=8)),
                     lambda p: load_images(p, volumes=VolumeOptions(size=8))):
            with pytest.raises(InputError) as err:
                read(path)
            assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
        assert main(["info", str(path)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0]


def test_asking_what_a_path_is_reads_no_image_library(tmp_path):
    """Claims look at names and DICOM headers only: `medsynth info` on a MedSynth file, and the app's opening of
    one, do not pay for nibabel, PIL or scipy."""
    paths = []
    for name, (build, _, _) in LAYOUTS.items():
        (tmp_path / name).mkdir()
        paths.append(build(tmp_path / name))
    code = ("import sys\nfrom pathlib import Path\nfrom engine.io.sources import SOURCES\n"
            f"paths = [Path(p) for p in {[str(p) for p in paths]!r}]\n"
            "claims = [[type(s).__name__ for s in SOURCES if s.claims(p)] for p in paths]\n"
            "assert all(len(c) == 1 for c in claims), claims\n"
            "print(sorted(m for m in ('nibabel', 'PIL', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_engine_module_imports_a_private_name_from_another():
    """volumes.py took eight private names from readers.py; each shared piece now has one public home."""
    bad = []
    for path in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                bad += [f"{path.relative_to(ROOT)}: {name}" for name in private]
    assert bad == []
