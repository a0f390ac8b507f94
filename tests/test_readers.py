"""The 2D readers: right arrays from good files, one InputError naming the file for bad ones."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.io.load import load_images
from engine.io.sources.msd import read_msd
from engine.io.sources.nifti import read_nifti
from engine.io.sources.npz import read_npz
from engine.io.sources.pictures import read_folder_pairs

# ---------------------------------------------------------------- helpers


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _nii(path: Path, array: np.ndarray, zooms: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms[:3], *([1.0] * (3 - len(zooms[:3]))), 1.0])
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _volume_and_labels(shape: tuple[int, int, int] = (8, 6, 12)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    volume = rng.normal(40, 10, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 2:4, 3:6] = 1  # foreground on slices 3, 4, 5
    labels[3, 3, 4] = 2
    return volume, labels


def _msd(root: Path, labels_json: dict, nnunet: bool = False, n_cases: int = 2) -> Path:
    volume, labels = _volume_and_labels()
    for i in range(n_cases):
        name = f"case_{i:03d}"
        _nii(root / "imagesTr" / (f"{name}_0000.nii.gz" if nnunet else f"{name}.nii.gz"), volume,
             (0.5, 0.75, 2.0))
        if nnunet:
            _nii(root / "imagesTr" / f"{name}_0001.nii.gz", volume * 0 + 7, (0.5, 0.75, 2.0))
        _nii(root / "labelsTr" / f"{name}.nii.gz", labels, (0.5, 0.75, 2.0))
    meta = {"labels": labels_json}
    meta.update({"channel_names": {"0": "T2", "1": "ADC"}} if nnunet else {"modality": {"0": "CT"}})
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _raises(fn: Callable[..., object], name: str, *args: object, **kwargs: object) -> InputError:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), str(info.value)
    return info.value


# ---------------------------------------------------------------- MedMNIST .npz


def test_npz_gray_labels_and_default_class_names(tmp_path: Path) -> None:
    imgs = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    path = tmp_path / "pneumonia.npz"
    np.savez(path, train_images=imgs, train_labels=np.array([[0], [1], [1], [0], [2]], np.uint8),
             val_images=imgs[:2], val_labels=np.zeros((2, 1), np.uint8))
    s = read_npz(path)
    assert s.images.shape == (5, 1, 4, 4) and s.images.dtype == np.float32
    assert np.array_equal(s.images[:, 0], imgs)
    assert s.labels.dtype == np.int64 and s.labels.tolist() == [0, 1, 1, 0, 2]
    assert s.class_names == ["0", "1", "2"] and s.source == str(path)
    assert len(read_npz(path, split="val")) == 2
    assert read_npz(path, class_names=["a", "b", "c"]).class_names == ["a", "b", "c"]


def test_npz_rgb_names_from_file_multilabel_and_3d(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    path = tmp_path / "derma.npz"
    np.savez(path, train_images=rgb, train_labels=np.array([[1], [0], [1]]),
             class_names=np.array(["nevus", "melanoma"]))
    s = read_npz(path, class_names=["ignored", "too"])
    assert s.images.shape == (3, 3, 6, 5)
    assert np.array_equal(s.images[1], np.moveaxis(rgb[1], 2, 0))
    assert s.class_names == ["nevus", "melanoma"]

    chest = tmp_path / "chest.npz"
    np.savez(chest, train_images=rgb[..., 0], train_labels=np.eye(3, 14, dtype=np.uint8))
    s = read_npz(chest)
    assert s.labels is None and s.class_names == []

    vol = np.random.default_rng(2).integers(0, 256, (2, 7, 7, 7), dtype=np.uint8)
    organ = tmp_path / "organ3d.npz"
    np.savez(organ, train_images=vol, train_labels=np.array([[3], [1]]))
    s = read_npz(organ)
    assert s.images.shape == (2, 1, 7, 7) and np.array_equal(s.images[:, 0], vol[:, 3])


def test_npz_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "blood.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    err = _raises(read_npz, "blood.npz", path, split="test")
    assert "test_images" in str(err)
    nan = tmp_path / "nan.npz"
    np.savez(nan, train_images=np.full((2, 4, 4), np.nan, np.float32))
    _raises(read_npz, "nan.npz", nan)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    _raises(read_npz, "garbage.npz", garbage)
    odd = tmp_path / "odd.npz"
    np.savez(odd, train_images=np.zeros((2, 3, 4, 5, 6), np.uint8))
    _raises(read_npz, "odd.npz", odd)
    short = tmp_path / "short.npz"
    np.savez(short, train_images=np.zeros((3, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    _raises(read_npz, "short.npz", short)


# ---------------------------------------------------------------- image folders


def test_folder_pairs_16bit_gray_masks_and_labels(tmp_path: Path) -> None:
    root = tmp_path / "xray"
    a = np.array([[0, 1000], [40000, 65535]], np.uint16).repeat(4, 0).repeat(4, 1)
    _png(root / "images" / "a.png", a)
    _png(root / "images" / "b.png", (a // 2).astype(np.uint16))
    _png(root / "masks" / "a.png", np.where(a > 30000, 255, 0).astype(np.uint8))
    _png(root / "masks" / "b_mask.png", np.where(a > 30000, 2, 0).astype(np.uint8))
    (root / "labels.csv").write_text("stem,class\nb,healthy\na,sick\n")
    s = read_folder_pairs(root)
    assert s.images.shape == (2, 1, 8, 8) and s.images.dtype == np.float32
    assert s.images.max() == 65535 and np.array_equal(s.images[0, 0], a)  # 16-bit kept
    # One coding for the whole set: the values 2 and 255 become labels 1 and 2 in every file.
    assert s.masks.dtype == np.uint8 and set(np.unique(s.masks[0])) == {0, 2}
    assert set(np.unique(s.masks[1])) == {0, 1} and s.mask_coding == {1: 2, 2: 255}
    assert s.labels.tolist() == [1, 0] and s.class_names == ["healthy", "sick"]


def test_folder_pairs_rgb_resized_to_most_common_size(tmp_path: Path) -> None:
    root = tmp_path / "kvasir"
    rng = np.random.default_rng(3)
    for stem, (h, w) in {"p1": (10, 12), "p2": (10, 12), "p3": (20, 16)}.items():
        _png(root / "images" / f"{stem}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        rgb_mask = np.zeros((h, w, 3), np.uint8)
        rgb_mask[2:6, 2:6] = 255
        _png(root / "masks" / f"{stem}.jpg", rgb_mask)  # JPEG-noisy, RGB, as in Kvasir-SEG
    s = read_folder_pairs(root)
    assert s.images.shape == (3, 3, 10, 12) and s.masks.shape == (3, 10, 12)
    assert set(np.unique(s.masks).tolist()) == {0, 1} and s.labels is None


def test_folder_images_only_and_bad_pairs(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    _png(flat / "x.png", np.full((4, 4), 9, np.uint8))
    _png(flat / "y.png", np.full((4, 4), 3, np.uint8))
    s = load_images(flat)
    assert s.images.shape == (2, 1, 4, 4) and s.masks is None

    orphan = tmp_path / "orphan"
    _png(orphan / "images" / "lonely.png", np.zeros((4, 4), np.uint8))
    (orphan / "masks").mkdir()
    _raises(read_folder_pairs, "lonely.png", orphan)
    _png(orphan / "masks" / "lonely.png", np.zeros((4, 4), np.uint8))
    _png(orphan / "masks" / "stray.png", np.zeros((4, 4), np.uint8))
    _raises(read_folder_pairs, "stray.png", orphan)

    mismatch = tmp_path / "mismatch"
    _png(mismatch / "images" / "m.png", np.zeros((4, 4), np.uint8))
    _png(mismatch / "masks" / "m.png", np.zeros((5, 4), np.uint8))
    _raises(read_folder_pairs, "m.png", mismatch)

    garbage = tmp_path / "garbage"
    _png(garbage / "images" / "ok.png", np.zeros((4, 4), np.uint8))
    (garbage / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    _raises(load_images, "broken.png", garbage)

    (tmp_path / "emptyimages" / "images").mkdir(parents=True)
    _raises(load_images, "images", tmp_path / "emptyimages")


def test_labels_csv_errors(tmp_path: Path) -> None:
    root = tmp_path / "cls"
    _png(root / "images" / "a.png", np.zeros((4, 4), np.uint8))
    (root / "labels.csv").write_text("stem,class\nzzz,1\n")
    _raises(read_folder_pairs, "labels.csv", root)
    (root / "labels.csv").write_text("stem,class\na,1\n")
    assert load_images(root, class_names=["no", "yes"]).class_names == ["no", "yes"]


# ---------------------------------------------------------------- NIfTI and MSD


def test_read_nifti_with_partner_mask(tmp_path: Path) -> None:
    volume, labels = _volume_and_labels()
    path = _nii(tmp_path / "brain.nii.gz", volume, (0.5, 0.75, 2.0))
    s = read_nifti(path)
    assert s.images.shape == (12, 1, 6, 8) and s.masks is None  # all slices, rot90 (X,Y) -> (Y,X)
    assert np.allclose(s.images[4, 0], np.rot90(volume[:, :, 4]))
    assert s.spacing == pytest.approx((0.5, 0.75))  # (x, y): nibabel's zooms, x along the columns
    _nii(tmp_path / "brain_seg.nii.gz", labels)
    s = read_nifti(path)
    # foreground slices 3, 4, 5 plus every 4th of the empty ones (0, 6, 10)
    assert len(s) == 6 and s.masks.dtype == np.uint8 and s.masks.max() == 2
    assert np.array_equal(s.masks[2], np.rot90(labels[:, :, 4]))
    assert s.label_names[0] == "background"


def test_read_nifti_shipped_anatomical() -> None:
    path = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")
    if not os.path.exists(path):
        pytest.skip("nibabel's test data are not installed")
    s = load_images(path)
    shape = nib.as_closest_canonical(nib.load(path)).shape
    assert s.images.shape == (shape[2], 1, shape[1], shape[0]) and s.images.dtype == np.float32
    assert s.spacing is not None and np.isfinite(s.images).all()


def test_read_nifti_bad_inputs(tmp_path: Path) -> None:
    volume, labels = _volume_and_labels()
    good = _nii(tmp_path / "good.nii.gz", volume)
    _nii(tmp_path / "wrong_mask.nii.gz", labels[:, :, :5])
    _raises(read_nifti, "wrong_mask.nii.gz", good, mask=tmp_path / "wrong_mask.nii.gz")
    nan = volume.copy()
    nan[0, 0, 0] = np.nan
    _raises(read_nifti, "nan.nii.gz", _nii(tmp_path / "nan.nii.gz", nan))
    _raises(read_nifti, "four.nii.gz", _nii(tmp_path / "four.nii.gz", np.zeros((4, 4, 4, 2), np.float32)))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    _raises(read_nifti, "truncated.nii.gz", truncated)
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti header"))
    _raises(load_images, "junk.nii.gz", tmp_path / "junk.nii.gz")


@pytest.mark.parametrize("style", ["msd", "nnunet"])
def test_read_msd_label_styles(tmp_path: Path, style: str) -> None:
    if style == "msd":
        root = _msd(tmp_path / "Task04", {"0": "background", "1": "anterior", "2": "posterior"})
    else:
        root = _msd(tmp_path / "Dataset004", {"background": 0, "anterior": 1, "posterior": 2,
                                              "whole": [1, 2]}, nnunet=True)
    (root / "imagesTr" / "._case_000.nii.gz").write_bytes(b"macOS resource fork")  # must be skipped
    s = load_images(root)
    assert s.label_names == {0: "background", 1: "anterior", 2: "posterior"}
    assert s.images.shape == (12, 1, 6, 8) and s.masks.shape == (12, 6, 8)
    assert s.modality == ("CT" if style == "msd" else "MR")
    assert s.spacing == pytest.approx((0.5, 0.75))
    assert not (s.images == 7).all()  # channel 0 of nnU-Net cases, not channel 1


def test_read_msd_bad_inputs(tmp_path: Path) -> None:
    root = _msd(tmp_path / "bad", {"0": "background", "1": "anterior"})
    _raises(read_msd, "case_000.nii.gz", root)  # label 2 is not in dataset.json
    err = _raises(read_msd, "[2]", root)
    assert "labelsTr" in str(err)

    root = _msd(tmp_path / "shape", {"0": "background", "1": "a", "2": "b"}, n_cases=1)
    _nii(root / "labelsTr" / "case_000.nii.gz", np.zeros((8, 6, 11), np.uint8))
    _raises(read_msd, "case_000.nii.gz", root)

    root = _msd(tmp_path / "nolabel", {"0": "background", "1": "a", "2": "b"}, n_cases=1)
    (root / "labelsTr" / "case_000.nii.gz").unlink()
    _nii(root / "labelsTr" / "case_999.nii.gz", np.zeros((8, 6, 12), np.uint8))
    _raises(read_msd, "case_000.nii.gz", root)

    root = _msd(tmp_path / "four", {"0": "background", "1": "a", "2": "b"}, n_cases=1)
    _nii(root / "imagesTr" / "case_000.nii.gz", np.zeros((8, 6, 12, 4), np.float32))
    _raises(read_msd, "case_000.nii.gz", root)

    (tmp_path / "nojson" / "imagesTr").mkdir(parents=True)
    _raises(read_msd, "dataset.json", tmp_path / "nojson")
    (tmp_path / "nojson" / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}}))
    _raises(load_images, "imagesTr", tmp_path / "nojson")  # empty imagesTr


# ---------------------------------------------------------------- dispatch


def test_load_images_dispatch_and_errors(tmp_path: Path) -> None:
    npz = tmp_path / "organ.npz"
    np.savez(npz, train_images=np.zeros((2, 4, 4), np.uint8), test_images=np.ones((1, 4, 4), np.uint8))
    assert len(load_images(npz)) == 2 and len(load_images(npz, split="test")) == 1
    assert load_images(npz).labels is None
    _raises(load_images, "missing.npz", tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    err = _raises(load_images, "empty", tmp_path / "empty")
    assert "empty folder" in str(err)
    (tmp_path / "notes.txt").write_text("hello")
    _raises(load_images, "notes.txt", tmp_path / "notes.txt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    _raises(load_images, "other", tmp_path / "other")
    (tmp_path / "synthetic.h5").write_bytes(b"")
    err = _raises(load_images, "synthetic.h5", tmp_path / "synthetic.h5")
    assert "not a readable HDF5 file" in str(err)
