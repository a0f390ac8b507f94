"""The one mask-partner rule (engine.io.partners) and every place that uses it: the 2D and 3D readers,
`medsynth info`, and slice provenance ("case · z N") carried into the HDF5 file.

The data are made here in the real conventions: an nnU-Net v2 raw folder (imagesTr/case_0000 + a
second channel case_0001, labelsTr/case, dataset.json with channel_names and name → value labels),
an MSD task (imagesTr/case, labelsTr/case, dataset.json with modality and value → name labels),
and loose NIfTI pairs with every label suffix.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.errors import InputError
from engine.io import partners
from engine.io.load import load_images
from engine.io.sources.msd import read_msd
from engine.io.sources.nifti import read_nifti
from engine.io.volumes import VolumeOptions, read_volumes

SHAPE = (20, 24, 10)
# Brain MRI as nnU-Net gets it from BraTS: 1 mm in-plane, thicker slices, LPS-flipped axes.
AFFINE = np.array([[-1.0, 0, 0, 90], [0, -1.0, 0, 120], [0, 0, 1.5, -20], [0, 0, 0, 1]])


def _volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(300, 40, SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:12, 8:14, 3 + seed % 3:6 + seed % 3] = 1  # oedema
    labels[8:10, 10:12, 4 + seed % 3] = 2  # tumour core
    image[labels > 0] += 200
    return image, labels


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def make_raw_folder(root: Path, dialect: str = "nnunet", cases: int = 3) -> Path:
    """A raw dataset as nnU-Net v2 or the Medical Segmentation Decathlon lay it out."""
    for i in range(cases):
        case = f"BraTS_{i:03d}" if dialect == "nnunet" else f"hippocampus_{i:03d}"
        image, labels = _volume(i)
        if dialect == "nnunet":
            _save(root / "imagesTr" / f"{case}_0000.nii.gz", image)  # T2
            _save(root / "imagesTr" / f"{case}_0001.nii.gz", image * 0.5 + 10)  # FLAIR
        else:
            _save(root / "imagesTr" / f"{case}.nii.gz", image)
        _save(root / "labelsTr" / f"{case}.nii.gz", labels)
    if dialect == "nnunet":
        meta = {"channel_names": {"0": "T2", "1": "FLAIR"}, "labels": {"background": 0, "edema": 1, "tumor": 2},
                "numTraining": cases, "file_ending": ".nii.gz"}
    else:
        meta = {"name": "Hippocampus", "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}, "numTraining": cases,
                "training": [{"image": f"./imagesTr/hippocampus_{i:03d}.nii.gz",
                              "label": f"./labelsTr/hippocampus_{i:03d}.nii.gz"} for i in range(cases)]}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize("suffix", partners.LABEL_SUFFIXES)
@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_every_label_suffix_pairs_both_ways(tmp_path: Path, suffix: str, ending: str) -> None:
    image, labels = _volume(0)
    img = _save(tmp_path / f"sub-01_T1w{ending}", image)
    lab = _save(tmp_path / f"sub-01_T1w{suffix}{ending}", labels)
    assert partners.label_for(img) == lab
    assert partners.image_for(lab) == img
    assert partners.is_label_file(lab) and not partners.is_label_file(img)


def test_a_label_with_the_other_nifti_ending_still_pairs(tmp_path: Path) -> None:
    image, labels = _volume(0)
    img = _save(tmp_path / "ct.nii", image)
    lab = _save(tmp_path / "ct_seg.nii.gz", labels)
    assert partners.label_for(img) == lab and partners.image_for(lab) == img


def test_nnunet_layout_pairs_channel_files_with_their_case(tmp_path: Path) -> None:
    root = make_raw_folder(tmp_path / "Dataset501_BraTS", "nnunet")
    for split in ("Tr", "Ts"):
        if split == "Ts":  # imagesTs/labelsTs pair the same way
            (root / "imagesTr").rename(root / "imagesTs")
            (root / "labelsTr").rename(root / "labelsTs")
        ch0 = root / f"images{split}" / "BraTS_001_0000.nii.gz"
        ch1 = root / f"images{split}" / "BraTS_001_0001.nii.gz"
        label = root / f"labels{split}" / "BraTS_001.nii.gz"
        assert partners.label_for(ch0) == label and partners.label_for(ch1) == label
        assert partners.image_for(label) == ch0  # channel 0 stands for the case
        assert partners.is_label_file(label) and not partners.is_label_file(ch0)
        assert partners.dataset_root(label) == root and partners.dataset_root(ch1) == root


def test_msd_layout_pairs_one_file_per_case(tmp_path: Path) -> None:
    root = make_raw_folder(tmp_path / "Task04_Hippocampus", "msd")
    image = root / "imagesTr" / "hippocampus_002.nii.gz"
    label = root / "labelsTr" / "hippocampus_002.nii.gz"
    assert partners.label_for(image) == label and partners.image_for(label) == image
    # An MSD case named like an nnU-Net channel is its own case: the exact name wins.
    _save(root / "imagesTr" / "case_0001.nii.gz", _volume(0)[0])
    _save(root / "labelsTr" / "case_0001.nii.gz", _volume(0)[1])
    assert partners.label_for(root / "imagesTr" / "case_0001.nii.gz") == root / "labelsTr" / "case_0001.nii.gz"


def test_picture_pairs_and_no_partner(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "cju0qkwl35piu0993l0dewei2.jpg")
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "cju0qkwl35piu0993l0dewei2.jpg")  # Kvasir-SEG: same name
    Image.new("L", (8, 8)).save(tmp_path / "images" / "xray_07.png")
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "xray_07_mask.png")
    assert partners.label_for(tmp_path / "images" / "cju0qkwl35piu0993l0dewei2.jpg") == \
        tmp_path / "masks" / "cju0qkwl35piu0993l0dewei2.jpg"
    assert partners.label_for(tmp_path / "images" / "xray_07.png") == tmp_path / "masks" / "xray_07_mask.png"
    assert partners.image_for(tmp_path / "masks" / "xray_07_mask.png") == tmp_path / "images" / "xray_07.png"
    assert partners.is_label_file(tmp_path / "masks" / "xray_07_mask.png")
    lone = _save(tmp_path / "lone.nii.gz", _volume(0)[0])
    assert partners.label_for(lone) is None and partners.image_for(lone) is None


def test_isic_segmentation_masks_pair_with_their_images(tmp_path: Path) -> None:
    from PIL import Image

    from engine.io.load import load_images

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(2):  # ISIC 2017/2018: ISIC_0000000.jpg with ISIC_0000000_segmentation.png (0/255)
        Image.new("RGB", (12, 10), (120, 80, 60)).save(tmp_path / "images" / f"ISIC_000000{i}.jpg")
        mask = np.zeros((10, 12), np.uint8)
        mask[3:7, 4:9] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"ISIC_000000{i}_segmentation.png")
    assert partners.label_for(tmp_path / "images" / "ISIC_0000001.jpg") == \
        tmp_path / "masks" / "ISIC_0000001_segmentation.png"
    s = load_images(tmp_path)
    assert s.masks is not None and set(np.unique(s.masks).tolist()) == {0, 1} and int(s.masks[1].sum()) == 20


def test_case_names_split_channels_only_where_the_layout_says_so() -> None:
    assert partners.case_names(["a_0000", "a_0001"], {"a"}) == {"a_0000": ("a", 0), "a_0001": ("a", 1)}
    assert partners.case_names(["case_0001"], {"case_0001"}) == {"case_0001": ("case_0001", 0)}
    # No labels: split only when every image carries a channel suffix.
    assert partners.case_names(["scan_2024", "other"], None) == {"scan_2024": ("scan_2024", 0),
                                                                 "other": ("other", 0)}


def test_geometry_check_names_the_label_and_turns_flipped_masks(tmp_path: Path) -> None:
    _, labels = _volume(0)
    flipped = nib.as_closest_canonical(nib.Nifti1Image(labels, AFFINE))  # same grid, axes stored in RAS order
    on_grid = partners.onto_grid(np.asarray(flipped.dataobj), flipped.affine, AFFINE, SHAPE, "img", "lab.nii.gz")
    np.testing.assert_array_equal(on_grid, labels)
    shifted = AFFINE.copy()
    shifted[0, 3] += 5
    with pytest.raises(InputError, match=r"lab\.nii\.gz.*lie up to 5 mm"):
        partners.check_geometry("img", SHAPE, AFFINE, "lab.nii.gz", SHAPE, shifted)
    with pytest.raises(InputError, match=r"lab\.nii\.gz.*shape"):
        partners.check_geometry("img", SHAPE, AFFINE, "lab.nii.gz", (2, 2, 2), AFFINE)


# ---------------------------------------------------------------- the readers use it


def test_read_nifti_finds_the_nnunet_label_and_its_names(tmp_path: Path) -> None:
    root = make_raw_folder(tmp_path / "Dataset501_BraTS", "nnunet")
    s = read_nifti(root / "imagesTr" / "BraTS_001_0000.nii.gz")
    assert s.masks is not None and set(np.unique(s.masks)) == {0, 1, 2}
    assert s.label_names == {0: "background", 1: "edema", 2: "tumor"} and s.modality == "MR"
    assert s.names is not None and len(s.names) == len(s)
    assert all(n.startswith("BraTS_001 · z ") for n in s.names)
    # Opening the label map reads the same pair.
    t = read_nifti(root / "labelsTr" / "BraTS_001.nii.gz")
    np.testing.assert_array_equal(t.images, s.images)
    np.testing.assert_array_equal(t.masks, s.masks)


@pytest.mark.parametrize("suffix", ["_label", "_labels"])
def test_read_nifti_finds_label_suffixes_it_used_to_miss(tmp_path: Path, suffix: str) -> None:
    image, labels = _volume(1)
    _save(tmp_path / "ct.nii.gz", image)
    _save(tmp_path / f"ct{suffix}.nii.gz", labels)
    s = read_nifti(tmp_path / "ct.nii.gz")
    assert s.masks is not None and s.masks.any()


@pytest.mark.parametrize("dialect", ["nnunet", "msd"])
def test_read_msd_names_every_slice_by_case_and_z(tmp_path: Path, dialect: str) -> None:
    root = make_raw_folder(tmp_path / "raw", dialect)
    s = read_msd(root)
    assert s.names is not None and len(s.names) == len(s)
    cases = sorted({n.split(" · ")[0] for n in s.names})
    assert cases == ([f"BraTS_{i:03d}" for i in range(3)] if dialect == "nnunet"
                     else [f"hippocampus_{i:03d}" for i in range(3)])
    # The named slice is the one read: its mask is that case's labels at that z (shown upright).
    name = s.names[5]
    case, z = name.split(" · z ")
    labels = nib.as_closest_canonical(nib.load(root / "labelsTr" / f"{case}.nii.gz")).get_fdata()
    np.testing.assert_array_equal(s.masks[5], np.rot90(labels[:, :, int(z)]))


def test_slice_names_survive_the_hdf5_file(tmp_path: Path) -> None:
    from engine.io.medsynth_h5 import open_file, read_image_set, read_names
    from engine.io.medsynth_writer import write_image_set

    s = read_msd(make_raw_folder(tmp_path / "raw", "msd"))
    path = write_image_set(tmp_path / "real.h5", s)
    with open_file(path) as f:
        assert read_names(f) == s.names
    assert read_image_set(path).names == s.names
    assert load_images(path).names == s.names


def test_read_volumes_pairs_by_the_same_rule(tmp_path: Path) -> None:
    root = make_raw_folder(tmp_path / "raw", "nnunet", cases=1)
    options = VolumeOptions(size=16, spacing=(2.0, 2.0, 2.0))
    from_image = read_volumes(root / "imagesTr" / "BraTS_000_0000.nii.gz", options)
    from_label = read_volumes(root / "labelsTr" / "BraTS_000.nii.gz", options)
    assert from_image.masks is not None and from_image.masks.any()
    assert from_image.label_names == {0: "background", 1: "edema", 2: "tumor"}
    np.testing.assert_array_equal(from_image.masks, from_label.masks)
    # A folder of loose pairs with the newer suffixes.
    loose = tmp_path / "loose"
    for i in range(2):
        image, labels = _volume(i)
        _save(loose / f"p{i}.nii.gz", image)
        _save(loose / f"p{i}_labels.nii.gz", labels)
    s = read_volumes(loose, options)
    assert len(s) == 2 and s.masks is not None and s.masks.any()


def test_info_names_the_partner_and_the_layout(tmp_path: Path) -> None:
    from engine.info import describe

    root = make_raw_folder(tmp_path / "Dataset501_BraTS", "nnunet")
    text = describe(root / "imagesTr" / "BraTS_000_0000.nii.gz")
    assert f"label map: {root / 'labelsTr' / 'BraTS_000.nii.gz'}" in text
    text = describe(root / "labelsTr" / "BraTS_000.nii.gz")
    assert f"label map of image {root / 'imagesTr' / 'BraTS_000_0000.nii.gz'}" in text
    assert "source: nnU-Net folder, 3 cases" in describe(root)
    assert "source: MSD folder, 3 cases" in describe(make_raw_folder(tmp_path / "Task04", "msd"))
