"""The 3D conformance corpus end to end: MSD and nnU-Net v2 raw folders (both dataset.json dialects, two
channels per case), NIfTI files in LPS / PIR order with anisotropic and oblique grids, and an oblique DICOM CT
series with a rescale intercept go through `medsynth info`, `train` (a tiny demo-3d), `sample` and `export`
back to their own format. Checked end to end: label values and their names, spacing, orientation (the
exported affine is RAS and the file's own), the value range in the source's units, and where an independent
implementation exists (nibabel's DICOM reader, nnU-Net's dataset rules) agreement with it."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from engine.io.load import load_images
from engine.io.volumes import VolumeOptions
from tests import corpus as C

SIZE = 16

KINDS = {
    "msd-dialect": (lambda d: C.msd_folder(d / "Task01_BrainTumour", "msd"), "nnunet"),
    "nnunet-dialect": (lambda d: C.msd_folder(d / "Dataset042_BraTS", "nnunet"), "nnunet"),
    "nifti-geometry": (lambda d: C.nifti_geometry(d / "nifti"), "nifti"),
    "dicom-oblique": (lambda d: C.dicom_series(d / "series")[0], "nifti"),
    "medmnist-3d": (lambda d: C.medmnist(d / "organmnist3d.npz", "3d"), "nifti"),
}
RAW = ["msd-dialect", "nnunet-dialect"]
MASKED = [*RAW, "nifti-geometry"]


@pytest.fixture(scope="module", params=list(KINDS))
def walked(request, tmp_path_factory) -> C.Walk:
    build, fmt = KINDS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    return C.walk(request.param, root, build(root), fmt, C.TINY_3D, "--preset", "demo-3d", "--size", str(SIZE), n=2)


def _native_spacings(walked: C.Walk) -> list[np.ndarray]:
    """Each case's voxel size in mm, read from the source files with nibabel / pydicom, not the engine."""
    path = walked.corpus.path
    if walked.kind == "dicom-oblique":
        return [np.array(C.DICOM_ZOOMS)]
    files = sorted(path.glob("imagesTr/*_0000.nii.gz")) if walked.kind in RAW else \
        [p for p in sorted(path.glob("*.nii.gz")) if not p.name.endswith("_seg.nii.gz")]
    return [np.array(nib.load(str(p)).header.get_zooms()[:3], float) for p in files]


# ---------------------------------------------------------------- info and training


def test_info_describes_the_source(walked):
    text = walked.output("info")
    if walked.kind in RAW:
        assert "edema" in text and "tumour" in text
    if walked.kind == "dicom-oblique":
        # Stored 0..4095 with intercept -1024: HU, not stored values.
        assert "CT" in text and "HU" in text and "-1024" in text and "3071" in text
    if walked.kind == "nifti-geometry":
        assert "mask" in text


def test_the_model_is_sized_by_what_the_data_holds(walked):
    config = walked.config()
    model = config["facts"]  # what training found in the data, apart from the user's settings
    assert model["spatial_dims"] == 3 and model["image_channels"] == 1 and config["model"]["image_size"] == SIZE
    assert model["mask_labels"] == (3 if walked.kind in MASKED else 0)
    assert model["num_classes"] == len(walked.corpus.class_names)  # MedMNIST3D's classes condition the volumes
    assert walked.arrays()["images"].shape == (2, 1, SIZE, SIZE, SIZE)


@pytest.mark.parametrize("walked", MASKED, indirect=True)
def test_label_values_and_names_survive_into_the_samples(walked):
    attrs, arrays = walked.attrs(), walked.arrays()
    assert arrays["masks"].shape == (2, SIZE, SIZE, SIZE) and arrays["masks"].max() <= 2
    names = {int(k): v for k, v in attrs["label_names"].items() if int(k) != 0}
    if walked.kind in RAW:
        assert names == {k: v for k, v in walked.corpus.label_names.items() if k}  # dataset.json's, either dialect
    else:
        assert set(names) == {1, 2}


@pytest.mark.parametrize("walked", [*MASKED, "dicom-oblique"], indirect=True)  # MedMNIST keeps no spacing
def test_spacing_is_one_isotropic_size_that_fits_the_data(walked):
    facts, attrs = walked.facts(), walked.attrs()
    spacing = np.asarray(facts["spacing"], float)
    assert spacing.shape == (3,) and np.allclose(spacing, spacing[0])
    finest = min(float(s.min()) for s in _native_spacings(walked))
    assert spacing[0] >= finest - 1e-6  # never finer than the data
    np.testing.assert_allclose(attrs["spacing"], spacing)
    affine = np.asarray(attrs["affine"], float)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), spacing, rtol=1e-6)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_samples_come_back_in_the_source_units(walked):
    attrs, images = walked.attrs(), walked.arrays()["images"]
    norm = attrs["normalisation"]
    if walked.kind == "dicom-oblique":
        assert norm["modality"] == "CT" and attrs["intensity_units"] == "HU"
        assert -1024.0 <= images.min() and images.max() <= 3071.0
        assert norm["lo"] < -500.0  # a HU window, not the stored 0..4095
    else:
        if walked.kind in RAW:
            assert norm["modality"] == "MR"  # dataset.json's "T1" channel
        lo, hi = walked.corpus.value_range
        assert lo - 0.05 * (hi - lo) <= images.min() and images.max() <= hi + 0.05 * (hi - lo)


@pytest.mark.parametrize("walked", ["dicom-oblique"], indirect=True)
def test_no_patient_tag_or_absolute_path_leaves_with_the_samples(walked):
    text = json.dumps(walked.attrs(), default=str) + (walked.run / "run.json").read_text()
    assert "Doe" not in text and "MRN-0042" not in text
    assert str(walked.corpus.path) not in json.dumps(walked.attrs()["config"])


# ---------------------------------------------------------------- exports


@pytest.mark.parametrize("walked", ["nifti-geometry", "dicom-oblique", "medmnist-3d"], indirect=True)
def test_nifti_export_is_ras_with_the_file_s_affine(walked):
    walked.output("export")
    affine = np.asarray(walked.attrs()["affine"], float)
    images = walked.arrays()["images"]
    for i in range(2):
        img = nib.load(str(walked.export / f"synth_{i:05d}.nii.gz"))
        assert img.shape == (SIZE, SIZE, SIZE)
        for form, code in (img.get_sform(coded=True), img.get_qform(coded=True)):
            assert code > 0
            np.testing.assert_allclose(form, affine, atol=1e-4)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), np.linalg.norm(affine[:3, :3], axis=0), rtol=1e-5)
        data = np.asarray(img.dataobj)
        np.testing.assert_allclose(data, images[i, 0].transpose(2, 1, 0), atol=1e-3)  # same units, (x, y, z)
        if walked.kind == "nifti-geometry":
            seg = nib.load(str(walked.export / f"synth_{i:05d}_seg.nii.gz"))
            np.testing.assert_allclose(seg.affine, img.affine)
            assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("walked", RAW, indirect=True)
def test_nnunet_export_is_a_dataset_nnunet_accepts(walked):
    dataset, meta = C.exported_nnunet_dataset(walked)
    assert meta["labels"] == {"background": 0, "edema": 1, "tumour": 2}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["channel_names"]["0"] in ("T1", "MR", "MRI")  # a name that gives nnU-Net's z-score, not CT's
    # The provenance table sits beside the dataset, where nnU-Net's planner does not read it.
    assert not list(dataset.rglob("*.csv")) and list(walked.export.glob("*samples.csv"))
    affine = np.asarray(walked.attrs()["affine"], float)
    lab = nib.load(str(dataset / "labelsTr" / "synth_00000.nii.gz"))
    np.testing.assert_allclose(lab.affine, affine, atol=1e-4)
    assert nib.aff2axcodes(lab.affine) == ("R", "A", "S")


# ---------------------------------------------------------------- the geometry the model learns from


def _world_centroid(cube: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Centroid (RAS mm) of a boolean (D, H, W) cube whose voxel (x, y, z) = (W, H, D) maps through `affine`."""
    zyx = np.argwhere(cube).mean(axis=0)
    return nib.affines.apply_affine(affine, zyx[::-1])


@pytest.mark.parametrize("spacing", [None, (2.0, 2.5, 3.0)], ids=["auto", "x2-y2.5-z3"])
def test_every_orientation_puts_the_anatomy_the_same_way_round(tmp_path, spacing):
    """LPS-oblique, PIR and RAS files of one anatomy: in every training cube the lesion lies right, anterior
    and superior of the body's centre by the distance it has in the world, at the automatic spacing and at a
    given anisotropic one (x, y, z in that order, as `--spacing X Y Z` and the README have it)."""
    corpus = C.nifti_geometry(tmp_path / "nifti")
    s = load_images(corpus.path, volumes=VolumeOptions(size=32, spacing=spacing))
    assert len(s) == 3 and s.masks is not None
    if spacing is not None:
        np.testing.assert_allclose(s.spacing, spacing)
        np.testing.assert_allclose(np.linalg.norm(s.affine[:3, :3], axis=0), spacing)
        assert nib.aff2axcodes(s.affine) == ("R", "A", "S")
    step = float(max(s.spacing))
    for i in range(len(s)):
        body = _world_centroid(s.images[i, 0] > 250.0, s.affine)
        lesion = _world_centroid(s.masks[i] > 0, s.affine)
        offset = lesion - body
        assert np.all(np.sign(offset) == 1), (i, offset)
        # The body's centroid moves a little towards the lesion (it is part of the body); allow for it.
        np.testing.assert_allclose(offset, C.LESION_OFFSET, atol=1.5 * step + 1.0)
        # Physical size survives resampling: the lesion's volume in mm^3 within a quarter.
        volume = float((s.masks[i] > 0).sum()) * float(np.prod(s.spacing))
        assert 0.75 < volume / (4 / 3 * np.pi * C.LESION_RADIUS ** 3) < 1.33, volume


def test_dicom_geometry_and_units_agree_with_nibabel(tmp_path):
    """The engine's reading of an oblique, rescaled series against nibabel's own DICOM reader, slice by slice."""
    from engine.io.dicom import LPS_TO_RAS, read_dicom_series

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM readers experimental (for Siemens mosaics)
        from nibabel.nicom import dicomwrappers

    corpus, hu = C.dicom_series(tmp_path / "series")
    vol = read_dicom_series(corpus.path)
    wrappers = [dicomwrappers.wrapper_from_file(str(p)) for p in corpus.path.iterdir()]
    # nibabel's rotation matrix is (column direction, row direction, their cross product), so its own
    # slice_indicator runs against DICOM's row x column normal; sort along the DICOM normal.
    r = wrappers[0].rotation_matrix
    normal = np.cross(r[:, 1], r[:, 0])
    wrappers.sort(key=lambda w: float(np.asarray(w.image_position) @ normal))
    assert vol.array.shape == (*wrappers[0].get_data().T.shape, len(wrappers)) == hu.shape
    for k, w in enumerate(wrappers):
        # nibabel's data are (rows, columns) in HU after RescaleSlope / RescaleIntercept; the engine's (x, y).
        np.testing.assert_allclose(vol.array[:, :, k], w.get_data().T, atol=1e-3)
    np.testing.assert_allclose(vol.array, hu, atol=1e-3)
    first = wrappers[0].affine  # LPS; columns: row index, column index, slice
    lps = np.linalg.inv(LPS_TO_RAS) @ vol.affine
    np.testing.assert_allclose(lps[:3, 0], first[:3, 1], atol=1e-4)  # along a row: the column index, x
    np.testing.assert_allclose(lps[:3, 1], first[:3, 0], atol=1e-4)
    np.testing.assert_allclose(lps[:3, 3], first[:3, 3], atol=1e-4)
    np.testing.assert_allclose(lps[:3, 2], np.asarray(wrappers[1].image_position) - first[:3, 3], atol=1e-4)
    np.testing.assert_allclose(lps[:3, 2], C.DICOM_ZOOMS[2] * normal, atol=1e-4)  # slices along the normal
    assert vol.units == "HU" and vol.array.min() == -1024.0 and vol.array.max() == 3071.0
    # In the training cube (RAS) the bone, drawn on the high row side (posterior in LPS's +y), is posterior.
    s = load_images(corpus.path, volumes=VolumeOptions(size=32))
    body = _world_centroid(s.images[0, 0] > -500.0, s.affine)
    bone = _world_centroid(s.images[0, 0] > 500.0, s.affine)
    rows_towards = LPS_TO_RAS[:3, :3] @ C.dicom_orientation()[:, 1]  # the column direction (rows grow) in RAS
    assert float((bone - body) @ rows_towards) > 2.0
    assert s.images.min() >= -1024.0 - 1e-3  # air in HU, padding never below it


@pytest.mark.parametrize("walked", ["nifti-geometry", "dicom-oblique", "medmnist-3d"], indirect=True)
def test_the_nifti_export_reads_back_as_the_samples(walked):
    """Export, then read the exported folder the way training reads a source: the same cubes on the same grid."""
    walked.output("export")
    attrs, arrays = walked.attrs(), walked.arrays()
    spacing = tuple(float(v) for v in attrs["spacing"])
    s = load_images(walked.export, volumes=VolumeOptions(size=SIZE, spacing=spacing, crop="center"))
    assert len(s) == 2
    np.testing.assert_allclose(s.spacing, spacing)
    np.testing.assert_allclose(s.images, arrays["images"], atol=1e-3)
    if "masks" in arrays:
        assert np.array_equal(s.masks, arrays["masks"])


@pytest.mark.parametrize("walked", RAW, indirect=True)
def test_the_nnunet_export_reads_back_with_its_label_names(walked):
    walked.output("export")
    dataset = walked.export / C.NNUNET_DATASET
    spacing = tuple(float(v) for v in walked.attrs()["spacing"])
    s = load_images(dataset, volumes=VolumeOptions(size=SIZE, spacing=spacing, crop="center"))
    assert len(s) == 2 and s.label_names.get(1) == "edema" and s.label_names.get(2) == "tumour"
    assert np.array_equal(s.masks, walked.arrays()["masks"])
