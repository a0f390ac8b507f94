"""Whole volumes for 3D training: geometry kept through reorientation, resampling and cropping;
every bad input named by its file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from engine.config import RunConfig
from engine.errors import InputError
from engine.io.load import load_images, volume_options
from engine.io.volumes import VolumeOptions, read_volumes
from tests.test_dicom import ORIGIN as DICOM_ORIGIN
from tests.test_dicom import SPACING as DICOM_SPACING
from tests.test_dicom import write_series

SHAPE = (40, 48, 30)
SPACING = (1.5, 1.0, 2.0)
ORIGIN = (-30.0, -20.0, 10.0)
RADII = (25.0, 18.0, 22.0)  # body ellipsoid, mm
BLOB_MM = 10.0  # mask sphere radius


def _affine(spacing: tuple[float, ...] = SPACING, origin: tuple[float, ...] = ORIGIN) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def _phantom(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = SPACING,
             ct: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) image with a bright ellipsoid body, a lone bright speck in a corner (noise the
    body finder must ignore), and a mask sphere inside the body."""
    x, y, z = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    c = [(n - 1) * s / 2 for n, s in zip(shape, spacing)]
    body = sum(((a - ca) / r) ** 2 for a, ca, r in zip((x, y, z), c, RADII)) <= 1
    rng = np.random.default_rng(0)
    background, tissue = (-1000.0, 40.0) if ct else (0.0, 200.0)
    image = np.where(body, tissue, background) + rng.normal(0, 2, shape)
    image[1, 1, 1] = tissue * 3 if not ct else 1500.0
    mask = (((x - c[0] - 6) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) <= BLOB_MM ** 2).astype(np.uint8)
    return image.astype(np.float32), mask


def _nii(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, _affine() if affine is None else affine), path)
    return path


def _raises(name: str, fn: Callable[..., object], *args: object, **kwargs: object) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), str(info.value)
    return str(info.value)


def _world_of_max(s, i: int = 0) -> np.ndarray:
    """World position (output affine) of the brightest voxel of volume i."""
    d, h, w = np.unravel_index(int(np.argmax(s.images[i, 0])), s.size)
    return nib.affines.apply_affine(s.affine, [w, h, d])


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("target", [(2.5, 2.5, 2.5), (1.0, 0.7, 3.3)])
def test_resampling_keeps_physical_extent_and_positions(tmp_path: Path, target: tuple[float, float, float]) -> None:
    # A ramp in x (mm) survives linear interpolation exactly, so it tells where every output voxel
    # sampled; a mask covering the whole volume tells how far the volume reaches.
    x = (np.arange(SHAPE[0]) * SPACING[0])[:, None, None] * np.ones(SHAPE)
    _nii(tmp_path / "v.nii.gz", x.astype(np.float32))
    _nii(tmp_path / "v_mask.nii.gz", np.ones(SHAPE, np.uint8))
    s = read_volumes(tmp_path / "v.nii.gz", VolumeOptions(size=96, spacing=target, crop="center"))
    assert s.spacing == pytest.approx(target)
    inside = s.masks[0]  # (z, y, x)
    for axis_out, axis_in in ((2, 0), (1, 1), (0, 2)):
        counts = inside.sum(axis=axis_out)
        extent_out = counts.max() * target[axis_in]
        assert abs(extent_out - SHAPE[axis_in] * SPACING[axis_in]) <= target[axis_in], (axis_in, extent_out)
    # Within the extent every voxel is data (edges read the edge voxel, not the pad); outside, the pad
    # is the volume's minimum.
    assert s.images[0, 0][inside == 1].min() >= -1e-3 and np.all(s.images[0, 0][inside == 0] == 0)
    # Output x world (centred) + the input's centre x = the ramp value, away from the clamped edges.
    xs = nib.affines.apply_affine(s.affine, np.stack([np.arange(96), np.zeros(96), np.zeros(96)], 1))[:, 0]
    expected = xs + (SHAPE[0] - 1) / 2 * SPACING[0]
    row = s.images[0, 0, 48, 48]
    interior = (expected > 2 * target[0]) & (expected < (SHAPE[0] - 1) * SPACING[0] - 2 * target[0])
    assert interior.sum() > 10
    np.testing.assert_allclose(row[interior], expected[interior], atol=1e-3)


def test_flipped_affine_comes_back_in_ras_at_the_same_world_position(tmp_path: Path) -> None:
    image, _ = _phantom()
    marker = (8, 35, 20)
    image[marker] = 5000.0
    _nii(tmp_path / "ras.nii.gz", image)
    # The same voxels stored with x and y reversed (LPS-like): voxel (i, j, k) of the file is
    # voxel (N-1-i, M-1-j, k) of the RAS one, so the world content is identical.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = (SHAPE[0] - 1, SHAPE[1] - 1)
    lps_affine = _affine() @ flip
    _nii(tmp_path / "lps" / "lps.nii.gz", np.ascontiguousarray(image[::-1, ::-1]), lps_affine)
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S")
    options = VolumeOptions(size=64, spacing=SPACING, crop="center")
    ras = read_volumes(tmp_path / "ras.nii.gz", options)
    lps = read_volumes(tmp_path / "lps" / "lps.nii.gz", options)
    np.testing.assert_array_equal(ras.images, lps.images)
    # The output sits centred on world 0: the marker's place relative to the volume's centre is kept.
    marker_in_file = (SHAPE[0] - 1 - marker[0], SHAPE[1] - 1 - marker[1], marker[2])
    centre = [(n - 1) / 2 for n in SHAPE]
    expected = nib.affines.apply_affine(lps_affine, marker_in_file) - nib.affines.apply_affine(lps_affine, centre)
    np.testing.assert_allclose(_world_of_max(lps), expected, atol=1e-6)
    assert float(lps.images.max()) == pytest.approx(5000.0)


def test_folder_of_cases_auto_spacing_fits_every_foreground(tmp_path: Path) -> None:
    sizes = {"a": (SHAPE, SPACING), "b": ((36, 40, 44), (1.2, 1.2, 1.2))}
    before = {}
    for name, (shape, spacing) in sizes.items():
        image, mask = _phantom(shape, spacing)
        _nii(tmp_path / f"{name}.nii.gz", image, _affine(spacing))
        _nii(tmp_path / f"{name}_seg.nii", mask, _affine(spacing))
        before[name] = mask.sum() * np.prod(spacing)
    size = 24
    s = load_images(tmp_path, volumes=VolumeOptions(size=size))
    assert s.images.shape == (2, 1, size, size, size) and s.images.dtype == np.float32
    assert s.masks.shape == (2, size, size, size) and s.masks.dtype == np.uint8
    assert s.modality == "MR" and s.label_names == {0: "background", 1: "1"} and s.source == str(tmp_path)
    t = s.spacing[0]
    assert s.spacing == (t, t, t)
    np.testing.assert_allclose(s.affine, np.diag([t, t, t, 1.0]) + np.pad(s.affine[:3, 3:], ((0, 1), (3, 0))))
    np.testing.assert_allclose(nib.affines.apply_affine(s.affine, [(size - 1) / 2] * 3), 0, atol=1e-9)
    # The widest body (50 mm across x, a voxel more on the grid) fits with its 5% margin; the speck
    # in the corner does not count, or the spacing would cover the whole 60 mm field.
    assert 50 * 1.05 / size <= t <= 53.5 * 1.05 / size
    for i, name in enumerate(sorted(sizes)):
        after = s.masks[i].sum() * t ** 3
        assert after == pytest.approx(before[name], rel=0.15), name
        # The body is inside the cube: its edge voxels are background, not cut-off tissue.
        cube = s.images[i, 0]
        assert max(cube[0].max(), cube[-1].max(), cube[:, 0].max(), cube[:, -1].max(),
                   cube[:, :, 0].max(), cube[:, :, -1].max()) < 100


def test_foreground_crop_centres_on_the_body_and_never_finer_than_native(tmp_path: Path) -> None:
    image, mask = _phantom()
    shifted = np.zeros((80, 48, 30), np.float32)  # the body in the right half of a wide field
    shifted[40:] = image
    _nii(tmp_path / "wide.nii.gz", shifted)
    s = read_volumes(tmp_path / "wide.nii.gz", VolumeOptions(size=64))
    assert s.spacing[0] == pytest.approx(1.0)  # the foreground fits at 0.85 mm; native finest is 1.0
    centre = s.images[0, 0, 32, 32, 29:35]
    assert centre.min() > 100  # the body, not the empty left half, fills the cube's centre
    centred = read_volumes(tmp_path / "wide.nii.gz", VolumeOptions(size=64, crop="center"))
    assert centred.images[0, 0, 32, 32, 29:35].max() < 100


# ---------------------------------------------------------------- MSD / nnU-Net


def _dataset(root: Path, channels: dict[str, str], labels: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "modality": channels}))


def test_msd_four_d_channel_choice_and_label_names(tmp_path: Path) -> None:
    image, mask = _phantom()
    mask[mask > 0] = 2
    channels = np.stack([image + 1000 * k for k in range(3)], axis=-1)
    root = tmp_path / "Task01_Brain"
    _dataset(root, {"0": "FLAIR", "1": "T1w", "2": "T1gd"}, {"0": "background", "1": "edema", "2": "tumour"})
    _nii(root / "imagesTr" / "brain_001.nii.gz", channels)
    _nii(root / "imagesTr" / "._brain_001.nii.gz", np.zeros(3, np.float32))  # macOS litter is skipped
    _nii(root / "labelsTr" / "brain_001.nii.gz", mask)
    s = load_images(root, volumes=VolumeOptions(size=32, channel=2))
    assert s.label_names == {0: "background", 1: "edema", 2: "tumour"} and s.modality == "MR"
    assert set(np.unique(s.masks).tolist()) == {0, 2}
    assert float(s.images.max()) > 2000 + 200 - 50  # channel 2 holds the body + 2000
    one = load_images(root, volumes=VolumeOptions(size=32, channel=0))
    assert float(one.images.max()) < 1000
    _raises("dataset.json", read_volumes, root, VolumeOptions(size=32, channel=3))
    _dataset(root, {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2"}, {"0": "background", "2": "tumour"})
    _raises("brain_001.nii.gz", read_volumes, root, VolumeOptions(size=32, channel=3))


def test_nnunet_channel_files_and_ct_from_dataset_json(tmp_path: Path) -> None:
    image, mask = _phantom(ct=True)
    root = tmp_path / "Dataset002_Liver"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1},
                                                   "channel_names": {"0": "CT", "1": "PET"}, "file_ending": ".nii.gz"}))
    _nii(root / "imagesTr" / "liver_0_0000.nii.gz", image)
    _nii(root / "imagesTr" / "liver_0_0001.nii.gz", image * 0 + 7)
    _nii(root / "labelsTr" / "liver_0.nii.gz", mask)
    s = read_volumes(root, VolumeOptions(size=24))
    assert s.modality == "CT" and s.label_names == {0: "background", 1: "liver"}
    # In HU: air and soft tissue; the bright speck in the corner lies outside the body's cube.
    assert -1010 < float(s.images.min()) < -990 and 30 < float(s.images.max()) < 60
    pet = read_volumes(root, VolumeOptions(size=24, channel=1))
    np.testing.assert_allclose(pet.images, 7.0)
    (root / "imagesTr" / "liver_0_0001.nii.gz").unlink()
    _raises("liver_0_0000.nii.gz", read_volumes, root, VolumeOptions(size=24, channel=1))


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    image, mask = _phantom()
    options = VolumeOptions(size=16)
    _nii(tmp_path / "four" / "four_d.nii.gz", np.stack([image, image], -1))
    assert "is 4D" in _raises("four_d.nii.gz", read_volumes, tmp_path / "four" / "four_d.nii.gz", options)

    _nii(tmp_path / "shape" / "a.nii.gz", image)
    _nii(tmp_path / "shape" / "a_mask.nii.gz", mask[:, :, :-1])
    message = _raises("a_mask.nii.gz", load_images, tmp_path / "shape", volumes=options)
    assert "geometry" in message and "a.nii.gz" in message

    _nii(tmp_path / "moved" / "b.nii.gz", image)
    _nii(tmp_path / "moved" / "b_label.nii.gz", mask, _affine(origin=(-30.0, -19.0, 10.0)))
    assert "geometry" in _raises("b_label.nii.gz", read_volumes, tmp_path / "moved" / "b.nii.gz", options)

    bad = image.copy()
    bad[3, 4, 5] = np.nan
    _nii(tmp_path / "nan" / "c.nii.gz", bad)
    assert "NaN" in _raises("c.nii.gz", read_volumes, tmp_path / "nan", options)

    _nii(tmp_path / "flat" / "d.nii.gz", image[:, :, :1])
    assert "2D" in _raises("d.nii.gz", read_volumes, tmp_path / "flat" / "d.nii.gz", options)

    _nii(tmp_path / "lone" / "e.nii.gz", image)
    _nii(tmp_path / "lone" / "e_seg.nii.gz", mask)
    _nii(tmp_path / "lone" / "f.nii.gz", image)
    _raises("f.nii.gz", read_volumes, tmp_path / "lone", options)

    (tmp_path / "empty").mkdir()
    _raises("empty", load_images, tmp_path / "empty", volumes=options)
    assert "empty folder" in _raises("empty", read_volumes, tmp_path / "empty", options)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("no data")
    _raises("junk", read_volumes, tmp_path / "junk", options)


# ---------------------------------------------------------------- DICOM


def _hu_volume() -> np.ndarray:
    image, _ = _phantom((24, 20, 12), DICOM_SPACING, ct=True)
    return np.round(image)


def test_dicom_series_and_a_folder_of_series(tmp_path: Path) -> None:
    hu = _hu_volume()
    marker = (5, 14, 8)
    hu[marker] = 2500
    write_series(tmp_path / "study" / "s1", hu)
    options = VolumeOptions(size=32, spacing=DICOM_SPACING, crop="center")
    one = load_images(tmp_path / "study" / "s1", volumes=options)
    assert one.images.shape == (1, 1, 32, 32, 32) and one.masks is None and one.modality == "CT"
    # DICOM places voxel (i, j, k) at LPS origin + ijk * spacing; RAS flips x and y.
    lps = np.array(DICOM_ORIGIN) + np.array(marker) * DICOM_SPACING
    lps_centre = np.array(DICOM_ORIGIN) + (np.array(hu.shape) - 1) / 2 * DICOM_SPACING
    np.testing.assert_allclose(_world_of_max(one), (lps - lps_centre) * [-1, -1, 1], atol=1e-4)

    write_series(tmp_path / "study" / "s2", _hu_volume())
    both = load_images(tmp_path / "study", volumes=VolumeOptions(size=16))
    assert both.images.shape == (2, 1, 16, 16, 16) and both.modality == "CT" and both.masks is None
    assert both.spacing[0] == both.spacing[2] >= min(DICOM_SPACING)


# ---------------------------------------------------------------- dispatch


def test_load_images_without_volumes_is_unchanged_and_volume_options(tmp_path: Path) -> None:
    image, mask = _phantom()
    _nii(tmp_path / "a.nii.gz", image)
    slices = load_images(tmp_path / "a.nii.gz")
    assert slices.images.shape == (SHAPE[2], 1, SHAPE[1], SHAPE[0]) and slices.spatial_dims == 2
    np.savez(tmp_path / "m.npz", train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.zeros((3, 1)))
    assert load_images(tmp_path / "m.npz", volumes=VolumeOptions(size=8)).spatial_dims == 2
    (tmp_path / "pictures").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "pictures" / "p.png")
    assert load_images(tmp_path / "pictures", volumes=VolumeOptions(size=8)).spatial_dims == 2
    assert load_images(tmp_path / "a.nii.gz", volumes=VolumeOptions(size=8)).spatial_dims == 3

    cfg = RunConfig()
    assert volume_options(cfg) is None
    cfg.data.dims, cfg.model.image_size, cfg.data.spacing = 3, 48, [1, 1, 2]
    cfg.data.crop, cfg.data.channel = "center", 1
    assert volume_options(cfg) == VolumeOptions(size=48, spacing=(1.0, 1.0, 2.0), crop="center", channel=1)
    cfg.data.spacing = []
    assert volume_options(cfg).spacing is None
    cfg.data.spacing = [1.0, 2.0]
    _raises("spacing", volume_options, cfg)
