"""The 2D conformance corpus end to end: data laid out like the public sets users bring (tests/corpus.py) go
through `medsynth info`, `train`, `sample` and `export` back to their own format, and the numbers that must
survive are checked at every step: the label values and names, the class names, the spacing in (x, y) order,
the channel count, the bit depth and the value range in the source's units."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests import corpus as C

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16  # the tiny model's training size

# kind: (builder, export format)
KINDS = {
    "kvasir-jpeg": (lambda d: C.kvasir(d / "kvasir"), "png"),
    "grey-0-127-254": (lambda d: C.grey_masks(d / "grey3", (0, 127, 254)), "png"),
    "grey-0-85-170-255": (lambda d: C.grey_masks(d / "grey4", (0, 85, 170, 255)), "png"),
    "voc-palette": (lambda d: C.palette_masks(d / "voc"), "png"),
    "xray-png16": (lambda d: C.xray16(d / "xray_png"), "png"),
    "xray-tiff16": (lambda d: C.xray16(d / "xray_tif", ".tif", 65535), "png"),
    "medmnist-gray": (lambda d: C.medmnist(d / "pneumoniamnist.npz", "gray"), "png"),
    "medmnist-rgb": (lambda d: C.medmnist(d / "dermamnist.npz", "rgb"), "png"),
    "medmnist-3d": (lambda d: C.medmnist(d / "organmnist3d.npz", "3d"), "png"),
    "nifti-pir": (lambda d: C.nifti_pir_file(d / "pir"), "nifti"),
    "msd-slices": (lambda d: C.msd_folder(d / "Task01_BrainTumour", "msd"), "nnunet"),
}
MASKED = [k for k in KINDS if k not in ("xray-png16", "xray-tiff16") and not k.startswith("medmnist")]
PICTURES = [k for k, (_, fmt) in KINDS.items() if fmt == "png"]


@pytest.fixture(scope="module", params=list(KINDS))
def walked(request, tmp_path_factory) -> C.Walk:
    build, fmt = KINDS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    return C.walk(request.param, root, build(root), fmt, C.TINY_2D)


def _label_values(walked: C.Walk) -> set[int]:
    """The source's mask values that are labels (0 included): all of them but VOC's void border, which takes the
    label of the nearest labelled pixel (a generator cannot leave pixels unlabelled)."""
    return {v for v in walked.corpus.mask_values if not (walked.kind == "voc-palette" and v == C.VOC_VOID)}


# ---------------------------------------------------------------- every kind


def test_info_describes_the_source(walked):
    text = walked.output("info")
    assert f"{walked.corpus.channels} channel(s)" in text
    if walked.kind in PICTURES:
        assert f"{walked.corpus.n} image(s)" in text  # MedMNIST: the train split only, not val / test


def test_the_model_is_sized_by_what_the_data_holds(walked):
    model = walked.config()["facts"]  # what training found in the data, apart from the user's settings
    c = walked.corpus
    assert model["image_channels"] == c.channels
    assert model["num_classes"] == len(c.class_names)
    if c.mask_values:
        # One label per distinct mask value, however the source codes them (0/255, grey levels, palette):
        # never one per grey level up to the highest value.
        assert model["mask_labels"] == len(_label_values(walked)), model
    else:
        assert model["mask_labels"] == 0


def test_samples_hold_known_labels_classes_and_source_units(walked):
    arrays, attrs, model = walked.arrays(), walked.attrs(), walked.config()["facts"]
    images = arrays["images"]
    assert images.shape == (3, walked.corpus.channels, SIZE, SIZE)
    lo, hi = walked.corpus.value_range
    span = hi - lo
    assert images.min() >= lo - 0.01 * span and images.max() <= hi + 0.01 * span, (images.min(), images.max())
    if walked.corpus.mask_values:
        assert arrays["masks"].max() < model["mask_labels"]
        assert set(int(k) for k in attrs["label_names"]) | {0} == set(range(model["mask_labels"]))
    if walked.corpus.class_names:
        assert attrs["class_names"] == walked.corpus.class_names
        assert set(arrays["labels"].tolist()) <= set(range(len(walked.corpus.class_names)))


# ---------------------------------------------------------------- picture folders and .npz → PNG


@pytest.mark.parametrize("walked", PICTURES, indirect=True)
def test_png_export_keeps_bit_depth_channels_and_units(walked):
    walked.output("export")
    c = walked.corpus
    files = sorted((walked.export / "images").glob("*.png"))
    assert len(files) == 3
    lo, hi = c.value_range
    for p in files:
        with Image.open(p) as img:
            mode = img.mode
            pixels = np.asarray(img)
        if c.channels == 3:
            assert mode == "RGB"
        elif c.bits == 16:
            assert mode.startswith("I"), mode  # 16-bit in, 16-bit out
            assert pixels.dtype in (np.uint16, np.int32, np.uint32)
        else:
            assert mode == "L", f"{p.name}: 8-bit source written as {mode}"
        # In the source's units: a 12-bit X-ray stays 0..4095, it is not stretched over 0..65535.
        assert lo - 1 <= pixels.min() and pixels.max() <= hi + 1, (p.name, mode, pixels.min(), pixels.max())


@pytest.mark.parametrize("walked", [k for k in PICTURES if k in MASKED], indirect=True)
def test_png_masks_come_back_in_the_source_coding(walked):
    walked.output("export")
    seen: set[int] = set()
    for p in sorted((walked.export / "masks").glob("*.png")):
        with Image.open(p) as img:
            seen |= set(np.unique(np.asarray(img)).tolist())
    # 0/255 masks come back 0/255, {0,127,254} as {0,127,254}, palette indices as palette indices.
    assert seen <= _label_values(walked), seen


@pytest.mark.parametrize("walked", ["grey-0-127-254"], indirect=True)
def test_grey_level_masks_are_announced_before_training(walked):
    log = walked.output("train")
    assert _announces_two_grey_labels(log), log


def _announces_two_grey_labels(log: str) -> bool:
    """A line like the issue's "2 labels: 127 → 1, 254 → 2" (wording free, numbers not)."""
    return any(re.search(r"\b2 (mask )?labels\b", line) and re.search(r"\b127\D+1\b", line)
               and re.search(r"\b254\D+2\b", line) for line in log.splitlines())


# ---------------------------------------------------------------- NIfTI / MSD slices: spacing in (x, y)


def _resized_spacing(walked: C.Walk) -> tuple[float, float]:
    """(x, y) mm of a training pixel: the source's pixel size times source pixels per training pixel."""
    from engine.io.load import load_images

    s = load_images(walked.corpus.path)
    h, w = s.size
    # The source's own pixel size, read independently of the engine from the file's header.
    path = walked.corpus.path
    first = path if path.is_file() else sorted((path / "imagesTr").glob("*_0000.nii.gz"))[0]
    canon = nib.as_closest_canonical(nib.load(str(first)))
    sx, sy = (float(z) for z in canon.header.get_zooms()[:2])
    return sx * w / SIZE, sy * h / SIZE


@pytest.mark.parametrize("walked", ["nifti-pir", "msd-slices"], indirect=True)
def test_2d_samples_carry_the_spacing_of_what_was_generated(walked):
    attrs = walked.attrs()
    x, y = _resized_spacing(walked)
    # PIR with 3 mm sagittal slices: axial pixels are 3 mm wide (x) and 0.9 mm tall (y) before resizing.
    np.testing.assert_allclose(attrs["spacing"][:2], [x, y], rtol=1e-4)
    affine = np.asarray(attrs["affine"], float)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :2], axis=0), [x, y], rtol=1e-4)


@pytest.mark.parametrize("walked", ["nifti-pir"], indirect=True)
def test_2d_nifti_export_matches_the_file(walked):
    walked.output("export")
    x, y = _resized_spacing(walked)
    img = nib.load(str(walked.export / "synth_00000.nii.gz"))
    seg = nib.load(str(walked.export / "synth_00000_seg.nii.gz"))
    assert img.shape[:2] == (SIZE, SIZE)
    np.testing.assert_allclose(img.header.get_zooms()[:2], [x, y], rtol=1e-4)
    np.testing.assert_allclose(seg.affine, img.affine)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("walked", ["msd-slices"], indirect=True)
def test_2d_nnunet_export_is_a_dataset_nnunet_accepts(walked):
    dataset, meta = C.exported_nnunet_dataset(walked)
    assert meta["labels"] == {"background": 0, "edema": 1, "tumour": 2}
    assert not list(dataset.rglob("*.csv")) and list(walked.export.glob("*samples.csv"))
    # nnU-Net 2D data: (x, y, 1) files with the generated pixel size.
    x, y = _resized_spacing(walked)
    lab = nib.load(str(next((dataset / "labelsTr").iterdir())))
    assert lab.shape == (SIZE, SIZE, 1)
    np.testing.assert_allclose(lab.header.get_zooms()[:2], [x, y], rtol=1e-4)


# ---------------------------------------------------------------- the CLI as a user runs it


def test_the_issue_reproduction_as_processes(tmp_path):
    """`medsynth train <images/+masks/ with 0/127/254 PNG masks>` as a separate process, then run.json."""
    data = C.grey_masks(tmp_path / "brain", (0, 127, 254), n=4)
    toml = tmp_path / "tiny.toml"
    toml.write_text(C.TINY_2D)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "medsynth", "train", str(data.path), "--out", str(run), "--config",
                           str(toml), "--steps", "1", "--device", "cpu"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    model = json.loads((run / "config.json").read_text())["facts"]
    assert model["mask_labels"] == 3 and model["in_channels"] == 1 + 2
    assert _announces_two_grey_labels(done.stdout + done.stderr)


# ---------------------------------------------------------------- reading: partners and folders (no training)


def test_a_nifti_folder_reads_as_the_slices_of_every_file(tmp_path):
    """README: "NIfTI file or folder ... axial slices". Each file with its `_seg` partner, the partners not
    read as images of their own."""
    from engine.io.load import load_images
    from engine.io.sources.nifti import read_nifti

    corpus = C.nifti_geometry(tmp_path / "nifti")
    s = load_images(corpus.path)
    one = [read_nifti(p) for p in sorted(corpus.path.glob("*.nii.gz")) if not p.name.endswith("_seg.nii.gz")]
    assert len(s) == sum(len(x) for x in one) and s.masks is not None
    assert set(np.unique(s.masks).tolist()) == {0, 1, 2}
    code, text = C.cli("info", corpus.path)
    assert code == 0 and f"{len(s)} image(s)" in text


@pytest.mark.parametrize("layout", ["nnunet", "label-suffix"])
def test_an_image_file_finds_its_label_file(tmp_path, layout):
    """nnU-Net / MSD: imagesTr/CASE_0000.nii.gz pairs with labelsTr/CASE.nii.gz; elsewhere `_label` partners
    pair like `_seg` ones."""
    from engine.io.load import load_images

    corpus = C.msd_folder(tmp_path / "Dataset042_BraTS", "nnunet", n=1)
    image = corpus.path / "imagesTr" / "BRATS_001_0000.nii.gz"
    if layout == "label-suffix":
        loose = tmp_path / "loose"
        loose.mkdir()
        image = loose / "brain.nii.gz"
        (corpus.path / "imagesTr" / "BRATS_001_0000.nii.gz").rename(image)
        (corpus.path / "labelsTr" / "BRATS_001.nii.gz").rename(loose / "brain_label.nii.gz")
    s = load_images(image)
    assert s.masks is not None and set(np.unique(s.masks).tolist()) == {0, 1, 2}


def test_info_gives_2d_pixel_spacing_in_x_y_order(tmp_path):
    """README: spacing is (x, y[, z]). A PIR volume's axial pixels are 3 mm along x (R-L), 0.9 mm along y."""
    corpus = C.nifti_pir_file(tmp_path / "pir")
    code, text = C.cli("info", corpus.path)
    assert code == 0 and "spacing: (3.0, 0.9)" in text, text


@pytest.mark.parametrize("walked", ["nifti-pir"], indirect=True)
def test_a_2d_nifti_export_reads_back_upright_as_the_sample(walked):
    """The exported (x, y, 1) file, read by the engine's own NIfTI reader, is the stored picture the same way up."""
    from engine.io.sources.nifti import read_nifti

    walked.output("export")
    arrays = walked.arrays()
    back = read_nifti(walked.export / "synth_00001.nii.gz")
    assert back.images.shape == (1, 1, SIZE, SIZE)
    np.testing.assert_allclose(back.images[0, 0], arrays["images"][1, 0], atol=1e-3)
    assert np.array_equal(back.masks[0], arrays["masks"][1])


def test_a_dicom_series_under_a_2d_preset_says_it_needs_a_3d_one(tmp_path):
    """DICOM is read as volumes; with the default 2D preset a user got "holds no data MedSynth can read" and a list
    of inputs that did not mention DICOM."""
    corpus, _ = C.dicom_series(tmp_path / "patient" / "series")
    for data in (corpus.path, corpus.path.parent):  # a series, and a folder of series
        code, text = C.cli("train", data, "--out", tmp_path / "run", "--steps", "1")
        assert code == 2 and len(text.strip().splitlines()) == 1, text
        assert str(data) in text and "DICOM" in text and "3D preset" in text and "demo-3d" in text
        assert not (tmp_path / "run").exists()
