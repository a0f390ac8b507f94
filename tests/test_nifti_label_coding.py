"""NIfTI label maps in real conventions: a lone mask stored 0/255 (ITK-SNAP / Slicer exports,
thresholding scripts) and a BraTS-style map {0, 1, 2, 4}, with and without a dataset.json, read as
2D slices and as 3D volumes. Each must become consecutive labels 0..K over the whole set, keep the
user's coding, and give a model of K labels, not 256."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from engine.export import export
from engine.io.load import load_images
from engine.io.medsynth_writer import write_image_set
from engine.io.sources.nifti import read_nifti_cases
from engine.io.volumes import VolumeOptions
from engine.jobs import DataSummary, Requests
from medsynth.cli import main
from tests.test_mask_coding import check_nnunet_v2

N = 24  # voxels per axis of the source volumes
BRATS_JSON = {"0": "background", "1": "edema", "2": "non-enhancing tumour", "4": "enhancing tumour"}
# A cube at the source's own 1 mm grid, centred on the volume: the cube is the volume, voxel for voxel.
SAME_GRID = VolumeOptions(size=N, spacing=(1.0, 1.0, 1.0), crop="center")


def _nii(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    x, y, z = np.meshgrid(*(np.arange(N),) * 3, indexing="ij")
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius ** 2


def _image(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (100 + 40 * labels.astype(np.float32) / max(int(labels.max()), 1) + rng.normal(0, 3, labels.shape)
            ).astype(np.float32)


def brats_labels(with_label_2: bool) -> np.ndarray:
    """Edema 1 around a core of enhancing tumour 4, with a non-enhancing part 2 unless left out."""
    labels = np.zeros((N,) * 3, np.uint8)
    labels[_ball((12, 12, 12), 7)] = 1
    labels[_ball((12, 12, 12), 4)] = 4
    if with_label_2:
        labels[_ball((12, 12, 12), 2)] = 2
    return labels


def lone_0_255(root: Path) -> tuple[Path, np.ndarray]:
    """t1.nii.gz + t1_seg.nii.gz whose one structure is stored as 255."""
    seg = np.where(_ball((10, 13, 12), 5), 255, 0).astype(np.uint8)
    image = _nii(root / "t1.nii.gz", _image(seg, 0))
    _nii(root / "t1_seg.nii.gz", seg)
    return image, seg


def brats_folder(root: Path) -> dict[str, np.ndarray]:
    """Two cases with `_seg` partners and no dataset.json; case b has no label 2."""
    cases = {"brats_a": brats_labels(True), "brats_b": brats_labels(False)}
    for i, (case, seg) in enumerate(cases.items()):
        _nii(root / f"{case}.nii.gz", _image(seg, i))
        _nii(root / f"{case}_seg.nii.gz", seg)
    return cases


def msd_folder(root: Path) -> dict[str, np.ndarray]:
    """An MSD folder whose dataset.json names the values 0, 1, 2, 4 (BraTS' own numbering)."""
    cases = {"BRATS_001": brats_labels(True), "BRATS_002": brats_labels(False)}
    for i, (case, seg) in enumerate(cases.items()):
        _nii(root / "imagesTr" / f"{case}.nii.gz", _image(seg, i))
        _nii(root / "labelsTr" / f"{case}.nii.gz", seg)
    (root / "dataset.json").write_text(json.dumps({"name": "BraTS", "modality": {"0": "FLAIR"}, "labels": BRATS_JSON,
                                                   "numTraining": 2, "file_ending": ".nii.gz"}))
    return cases


def _slice_of(raw: np.ndarray, name: str) -> np.ndarray:
    """The raw label slice a 2D set's image named "<case> · z <k>" was taken from (shown upright)."""
    return np.rot90(raw[:, :, int(name.rsplit(" ", 1)[1])])


def _volumes(s) -> list[np.ndarray]:
    """A 3D set's masks back in the sources' (x, y, z) voxel order."""
    return [m.transpose(2, 1, 0) for m in s.masks]


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("volumes", [None, SAME_GRID], ids=["2d-slices", "3d-volumes"])
def test_a_lone_0_255_nifti_mask_is_one_label_not_255(tmp_path, volumes):
    image, seg = lone_0_255(tmp_path)
    s = load_images(image, volumes=volumes)
    assert s.num_mask_labels == 2  # background + one label, not 256
    assert s.mask_coding == {1: 255}
    assert s.label_names == {0: "background", 1: "label 1 (value 255)"}
    assert set(np.unique(s.masks).tolist()) == {0, 1}
    if volumes is None:
        for name, m in zip(s.names, s.masks, strict=True):
            np.testing.assert_array_equal(m == 1, _slice_of(seg, name) == 255)
    else:
        np.testing.assert_array_equal(_volumes(s)[0] == 1, seg == 255)
    # The label file opened by itself reads as the same pair.
    assert load_images(tmp_path / "t1_seg.nii.gz", volumes=volumes).mask_coding == {1: 255}


def test_brats_values_without_dataset_json_map_the_same_in_every_case(tmp_path):
    cases = brats_folder(tmp_path / "brats")
    s = load_images(tmp_path / "brats", volumes=SAME_GRID)
    # Over the set: 4 is label 3 in case b too, although b alone holds only 1 and 4.
    assert s.mask_coding == {1: 1, 2: 2, 3: 4} and s.num_mask_labels == 4
    assert s.label_names == {0: "background", 1: "label 1 (value 1)", 2: "label 2 (value 2)",
                             3: "label 3 (value 4)"}
    lut = np.array([0, 1, 2, 0, 3], np.uint8)
    for got, raw in zip(_volumes(s), cases.values(), strict=True):
        np.testing.assert_array_equal(got, lut[raw])
    assert set(np.unique(s.masks[1]).tolist()) == {0, 1, 3}
    # As slices, the cases read together code the same way; one case read alone codes only what it holds.
    root = tmp_path / "brats"
    slices = read_nifti_cases([(root / f"{c}.nii.gz", root / f"{c}_seg.nii.gz") for c in cases], root)
    assert slices.mask_coding == {1: 1, 2: 2, 3: 4} and slices.label_names == s.label_names
    for name, m in zip(slices.names, slices.masks, strict=True):
        np.testing.assert_array_equal(m, lut[_slice_of(cases[name.split(" · ")[0]], name)])
    assert {n.split(" · ")[0] for n in slices.names} == set(cases)
    alone = load_images(root / "brats_b.nii.gz")
    assert alone.mask_coding == {1: 1, 2: 4} and alone.num_mask_labels == 3


def test_a_label_that_resampling_drops_keeps_its_number(tmp_path):
    # At 6 mm the 2-voxel core of label 2 falls between the cube's voxels; the coding is still the files'.
    brats_folder(tmp_path / "brats")
    s = load_images(tmp_path / "brats", volumes=VolumeOptions(size=4, spacing=(6.0, 6.0, 6.0), crop="center"))
    assert 2 not in np.unique(s.masks)
    assert s.mask_coding == {1: 1, 2: 2, 3: 4} and s.num_mask_labels == 4
    # Values that are labels already (0, 1, 2) keep label 2 too.
    for case in ("brats_a", "brats_b"):
        seg = tmp_path / "brats" / f"{case}_seg.nii.gz"
        _nii(seg, np.minimum(np.asarray(nib.load(seg).dataobj), 1 if case == "brats_b" else 2).astype(np.uint8))
    s = load_images(tmp_path / "brats", volumes=VolumeOptions(size=4, spacing=(6.0, 6.0, 6.0), crop="center"))
    assert 2 not in np.unique(s.masks)
    assert s.mask_coding == {} and s.num_mask_labels == 3 and s.label_names == {0: "background", 1: "1", 2: "2"}


@pytest.mark.parametrize("volumes", [None, SAME_GRID], ids=["2d-slices", "3d-volumes"])
def test_an_msd_dataset_json_naming_0_1_2_4_gives_consecutive_named_labels(tmp_path, volumes):
    cases = msd_folder(tmp_path / "Task01_BrainTumour")
    s = load_images(tmp_path / "Task01_BrainTumour", volumes=volumes)
    assert s.mask_coding == {1: 1, 2: 2, 3: 4} and s.num_mask_labels == 4
    assert s.label_names == {0: "background", 1: "edema (value 1)", 2: "non-enhancing tumour (value 2)",
                             3: "enhancing tumour (value 4)"}
    lut = np.array([0, 1, 2, 0, 3], np.uint8)
    if volumes is None:
        for name, m in zip(s.names, s.masks, strict=True):
            np.testing.assert_array_equal(m, lut[_slice_of(cases[name.split(" · ")[0]], name)])
    else:
        for got, raw in zip(_volumes(s), cases.values(), strict=True):
            np.testing.assert_array_equal(got, lut[raw])
    # One case opened alone follows its dataset.json, not its own values.
    alone = load_images(tmp_path / "Task01_BrainTumour" / "imagesTr" / "BRATS_002.nii.gz", volumes=volumes)
    assert alone.mask_coding == s.mask_coding and alone.label_names == s.label_names

    # The HDF5 file keeps the coding; an nnU-Net export holds 0..3 under names that say the source's value.
    h5 = write_image_set(tmp_path / "real.h5", s)
    with h5py.File(h5) as f:
        assert json.loads(f.attrs["mask_coding"]) == {"1": 1, "2": 2, "3": 4}
    meta = check_nnunet_v2(Path(export(h5, tmp_path / "raw", "nnunet")["out"]))
    assert meta["labels"] == {"background": 0, "edema (value 1)": 1, "non-enhancing tumour (value 2)": 2,
                              "enhancing tumour (value 4)": 3}


def test_a_consecutive_dataset_json_keeps_its_values_and_names(tmp_path):
    root = tmp_path / "Dataset002_Heart"
    seg = np.where(_ball((12, 12, 12), 5), 1, 0).astype(np.uint8)
    _nii(root / "imagesTr" / "la_003_0000.nii.gz", _image(seg, 0))
    _nii(root / "labelsTr" / "la_003.nii.gz", seg)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0,
                                                  "left atrium": 1}, "numTraining": 1, "file_ending": ".nii.gz"}))
    for volumes in (None, SAME_GRID):
        s = load_images(root, volumes=volumes)
        assert s.mask_coding == {} and s.label_names == {0: "background", 1: "left atrium"}
        assert s.num_mask_labels == 2


# ---------------------------------------------------------------- info and training


def test_info_says_the_coding(tmp_path, capsys):
    image, _ = lone_0_255(tmp_path / "lone")
    msd_folder(tmp_path / "Task01_BrainTumour")
    assert main(["info", str(image)]) == 0
    assert "  1 mask label: 255 → 1" in capsys.readouterr().out.splitlines()
    assert main(["info", str(tmp_path / "Task01_BrainTumour")]) == 0
    assert "  3 mask labels: 1 → 1, 2 → 2, 4 → 3" in capsys.readouterr().out.splitlines()


def test_a_0_255_mask_trains_a_model_of_one_label(tmp_path):
    from engine.inference.sample import SampleJob
    from engine.training.train import TrainJob
    from tests.conftest import tiny_config
    from tests.test_volumes import tiny_3d

    image, _ = lone_0_255(tmp_path / "lone")
    for dims, cfg in ((2, tiny_config(steps=2)), (3, tiny_3d(2))):
        data = load_images(image, volumes=VolumeOptions(size=16) if dims == 3 else None)
        events: list = []
        run = tmp_path / f"run{dims}"
        TrainJob(cfg, run, data=data).run(events.append, Requests())
        saved = json.loads((run / "config.json").read_text())
        assert saved["facts"]["mask_labels"] == 2 and saved["facts"]["in_channels"] == 1 + 1  # image + 1 label
        summary = [ev.text for ev in events if isinstance(ev, DataSummary)]
        assert len(summary) == 1 and re.fullmatch(r"1 mask label: 255 → 1; model \d+\.\d\d M parameters, "
                                                  r"2 input channels", summary[0]), summary
        assert json.loads((run / "run.json").read_text())["mask_coding"] == {"1": 255}
    synth = tmp_path / "synth.h5"
    SampleJob(tmp_path / "run2", 2, synth, steps=2).run(lambda ev: None, Requests())
    with h5py.File(synth) as f:
        assert json.loads(f.attrs["mask_coding"]) == {"1": 255}
        assert set(np.unique(f["masks"][:]).tolist()) <= {0, 1}
        assert json.loads(f.attrs["label_names"]) == {"0": "background", "1": "label 1 (value 255)"}


# ---------------------------------------------------------------- the app's viewer


def test_the_app_shows_such_label_maps_in_their_own_values_one_colour_each(tmp_path):
    pytest.importorskip("PySide6")
    from engine.io.sources.nifti_view import nifti_view
    from medsynth_gui.viewer.state import ViewState

    image, seg = lone_0_255(tmp_path / "lone")
    cases = brats_folder(tmp_path / "brats")
    for opened, raw in ((image, seg), (tmp_path / "lone" / "t1_seg.nii.gz", seg),
                        (tmp_path / "brats" / "brats_b.nii.gz", cases["brats_b"])):
        shown = nifti_view(opened)
        # The viewer shows the file as it is, as 3D Slicer and ITK-SNAP do: 255 is one label, not 255 labels.
        np.testing.assert_array_equal(shown.mask, raw)
        state = ViewState()
        state.set_image(shown.image, mask=shown.mask, affine=shown.affine, label_names=shown.label_names)
        found = sorted(v for v in np.unique(raw).tolist() if v)
        assert sorted(state.label_colors) == found
        colours = [state.label_colors[v] for v in found]
        assert len(set(colours)) == len(found) and all(max(c) - min(c) > 100 for c in colours)  # colours, not grey
