"""Hostile files for the readers: each is refused in one line naming the file and the fault, before anything
large is allocated, or accepted with a warning where a sensible reading exists.

The files are made here, shaped like what users bring (MedMNIST .npz splits, a picture folder with labels.csv,
NIfTI volumes, a DICOM CT series), then broken the way a corrupt download, a wrong export or a crafted file is.
"""

from __future__ import annotations

import gzip
import io
import logging
import struct
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.io.load import load_images
from engine.io.volumes import VolumeOptions

THREE_D = VolumeOptions(size=8)


def one_line(exc: pytest.ExceptionInfo, path: Path, *words: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    assert str(path) in text, text
    for w in words:
        assert w in text, text
    return text


# ---------------------------------------------------------------- MedMNIST .npz


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def npy_member(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    """An .npy member whose header declares `shape` but whose data is `data`: what a crafted file holds."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def medmnist(n: int = 6, size: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


@pytest.mark.parametrize("top", [10**15, 10**12, 2**63 - 1])
def test_npz_labels_far_beyond_any_class_are_refused_before_names_are_made(tmp_path, top):
    labels = np.array([[0], [1], [top], [2], [0], [1]], np.int64)
    path = write_npz(tmp_path / "pathmnist.npz", train_images=medmnist(), train_labels=labels)
    with pytest.raises(InputError) as exc:
        load_images(path)
    one_line(exc, path, "of image 2 is not a class index", "an id rather than a class")


def test_npz_float_labels_too_large_to_count_are_refused(tmp_path):
    labels = np.array([0, 1, 1e300, 2, 0, 1], np.float64)
    path = write_npz(tmp_path / "x.npz", train_images=medmnist(), train_labels=labels)
    with pytest.raises(InputError) as exc:
        load_images(path)
    one_line(exc, path, "non-negative whole class indices")


def test_npz_a_subset_may_skip_classes_and_real_medmnist_reads(tmp_path):
    """What real files allow stays allowed: OrganMNIST's 11 classes in a 4-image subset, and named classes."""
    path = write_npz(tmp_path / "organ.npz", train_images=medmnist(4), train_labels=np.array([[0], [10], [3], [10]]))
    s = load_images(path)
    assert s.class_names == [str(i) for i in range(11)] and s.labels.tolist() == [0, 10, 3, 10]
    named = write_npz(tmp_path / "named.npz", train_images=medmnist(4), train_labels=np.array([0, 2, 1, 2]),
                      class_names=np.array(["a", "b", "c"]))
    assert load_images(named).class_names == ["a", "b", "c"]


@pytest.mark.parametrize("shape", [(10**6, 28, 28), (100_000, 224, 224, 3), (2**40, 2**20)])
def test_npz_header_declaring_far_more_than_the_file_is_refused_before_allocating(tmp_path, shape):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train_images.npy", npy_member(shape, "|u1", bytes(28 * 28)))
        z.writestr("train_labels.npy", npy_member((1, 1), "<i8", bytes(8)))
    assert path.stat().st_size < 12_000
    with pytest.raises(InputError) as exc:
        load_images(path)
    one_line(exc, path, "'train_images'", "declares", "truncated or its header is wrong")


def test_npz_member_larger_than_this_machine_is_refused_by_its_memory(tmp_path, monkeypatch):
    """A zip member that truly unpacks to its declared size (zeros compress 1000:1) is still refused when this
    machine's memory cannot hold it; the machine is made small here so that the test allocates nothing big."""
    from engine.io.sources import common

    monkeypatch.setattr(common, "machine_memory", lambda: 4 * 2**20)
    path = write_npz(tmp_path / "zeros.npz", train_images=np.zeros((200, 128, 128), np.uint8))
    with pytest.raises(InputError) as exc:
        load_images(path)
    one_line(exc, path, "needs about", "more than this machine has")


# ---------------------------------------------------------------- picture folder with labels.csv


def picture_folder(root: Path, classes: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["stem,class"]
    for i, c in enumerate(classes):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "images" / f"img{i}.png")
        rows.append(f"img{i},{c}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("big", ["1000000000000", "9" * 40, "9" * 5000])
def test_labels_csv_class_beyond_any_class_is_refused(tmp_path, big):
    root = picture_folder(tmp_path / "xr", ["0", "1", big, "2"])
    with pytest.raises(InputError) as exc:
        load_images(root)
    one_line(exc, root / "labels.csv", "of image 2 is not a class index", "an id rather than a class")


def test_labels_csv_digits_int_cannot_read_are_class_names(tmp_path):
    root = picture_folder(tmp_path / "xr", ["²", "1", "1", "²"])
    s = load_images(root)
    assert s.class_names == ["1", "²"] and s.labels.tolist() == [1, 0, 0, 1]


def test_labels_csv_subset_skipping_classes_reads(tmp_path):
    s = load_images(picture_folder(tmp_path / "xr", ["0", "7", "3"]))
    assert len(s.class_names) == 8 and s.labels.tolist() == [0, 7, 3]


# ---------------------------------------------------------------- NIfTI


def patched_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, **fields: object) -> Path:
    """A NIfTI file saved by nibabel, then with header fields set as stored (nibabel would fix or re-derive them
    on saving): `pixdim` sets the three spatial voxel sizes, `dim` the declared shape."""
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    gz = path.name.endswith(".gz")
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    for key, value in fields.items():
        if key == "pixdim":
            header["pixdim"][1:4] = value
        elif key == "dim":
            header["dim"][: len(value) + 1] = [len(value), *value]
        else:
            header[key] = value
    raw = header.binaryblock + raw[348:]
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def volume(shape: tuple[int, ...] = (12, 12, 10)) -> np.ndarray:
    v = np.zeros(shape, np.float32)
    v[2:-2, 2:-2, 2:-2] = 100.0
    return v + np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
@pytest.mark.parametrize("dims", [(32000, 32000, 32000), (300, 300, 300), (512, 512, 400, 4)])
@pytest.mark.parametrize("volumes", [None, THREE_D], ids=["2d", "3d"])
def test_nifti_header_declaring_more_than_its_file_is_refused_before_reading(tmp_path, name, dims, volumes):
    path = patched_nifti(tmp_path / name, np.zeros((4, 4, 4), np.int16), dim=dims)
    with pytest.raises(InputError) as exc:
        load_images(path, volumes=volumes)
    one_line(exc, path, "declares a", "truncated or its header is wrong")


def test_nifti_that_the_machine_cannot_hold_is_refused_by_its_memory(tmp_path, monkeypatch):
    from engine.io.sources import common

    monkeypatch.setattr(common, "machine_memory", lambda: 2**20)
    path = patched_nifti(tmp_path / "big.nii.gz", np.zeros((96, 96, 64), np.int16))
    with pytest.raises(InputError) as exc:
        load_images(path)
    one_line(exc, path, "more than this machine has")


def test_a_memory_error_while_reading_is_one_line(tmp_path, monkeypatch):
    """What the estimate cannot see (memory taken by something else) still ends in one line, not a traceback."""
    path = patched_nifti(tmp_path / "a.nii.gz", volume())

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", no_memory)
    with pytest.raises(InputError) as exc:
        load_images(path)
    one_line(exc, path, "needs more memory than is free")


BROKEN_GEOMETRY = {
    "singular sform": ({"qform_code": 0, "sform_code": 1, "srow_y": [0, 0, 0, 0]}, "singular voxel-to-world"),
    "two axes on one line": ({"qform_code": 0, "sform_code": 1, "srow_y": [1, 0, 0, 0]}, "singular voxel-to-world"),
    "NaN pixdim, qform": ({"qform_code": 1, "sform_code": 0, "pixdim": [1, np.nan, 1]}, "NaN or infinite"),
    "NaN pixdim, no qform": ({"qform_code": 0, "sform_code": 0, "pixdim": [1, np.nan, 1]}, "NaN or infinite"),
    "inf sform": ({"qform_code": 0, "sform_code": 1, "srow_x": [np.inf, 0, 0, 0]}, "NaN or infinite"),
}


@pytest.mark.parametrize("case", list(BROKEN_GEOMETRY))
@pytest.mark.parametrize("volumes", [None, THREE_D], ids=["2d", "3d"])
def test_nifti_whose_voxels_cannot_be_placed_is_refused_in_one_line(tmp_path, case, volumes):
    fields, words = BROKEN_GEOMETRY[case]
    path = patched_nifti(tmp_path / "case.nii.gz", volume(), **fields)
    with pytest.raises(InputError) as exc:
        load_images(path, volumes=volumes)
    one_line(exc, path, words, "cannot be placed in space")


def test_viewer_refuses_a_nifti_whose_voxels_cannot_be_placed(tmp_path):
    from engine.io.sources.nifti_view import nifti_view

    path = patched_nifti(tmp_path / "case.nii.gz", volume(), qform_code=0, sform_code=1, srow_y=[0, 0, 0, 0])
    with pytest.raises(InputError) as exc:
        nifti_view(path)
    one_line(exc, path, "singular")


def test_nifti_zero_pixdim_is_a_warning_in_2d_and_a_refusal_in_3d(tmp_path, caplog, capfd):
    path = patched_nifti(tmp_path / "flat.nii.gz", volume(), qform_code=0, sform_code=0, pixdim=[0, 0, 0])
    with caplog.at_level(logging.WARNING):
        s = load_images(path)
    assert s.spacing == (1.0, 1.0)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and str(path) in warned[0] and "pixdim" in warned[0], warned
    # nibabel's own fix-up line (no file name) is not printed besides ours.
    assert "should be non-zero" not in capfd.readouterr().err
    with pytest.raises(InputError) as exc:
        load_images(path, volumes=THREE_D)
    one_line(exc, path, "voxel size (0.0, 0.0, 0.0)", "needs positive sizes")


def test_nifti_bad_pixdim_beside_a_good_sform_reads_in_3d_without_a_word(tmp_path, caplog):
    """The sform places the voxels: a stale pixdim beside it changes nothing in 3D."""
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    path = patched_nifti(tmp_path / "ok.nii.gz", volume(), affine, pixdim=[0, 0, 0])
    with caplog.at_level(logging.WARNING):
        s = load_images(path, volumes=THREE_D)
    assert s.images.shape == (1, 1, 8, 8, 8)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("volumes", [None, THREE_D], ids=["2d", "3d"])
def test_nifti_of_one_voxel_is_refused(tmp_path, volumes):
    path = patched_nifti(tmp_path / "dot.nii.gz", np.ones((1, 1, 1), np.float32))
    with pytest.raises(InputError) as exc:
        load_images(path, volumes=volumes)
    one_line(exc, path, "(1, 1, 1)")


# ---------------------------------------------------------------- DICOM


@pytest.fixture
def series(tmp_path) -> Path:
    pytest.importorskip("pydicom")
    from tests.test_dicom import write_series

    v = np.full((12, 10, 4), -1000.0, np.float32)
    v[3:9, 3:7] = 40.0
    write_series(tmp_path / "ct", v)
    return tmp_path / "ct"


def _edit(folder: Path, change) -> Path:
    import pydicom

    path = sorted(folder.iterdir())[1]
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)
    return path


def _truncate(ds) -> None:
    ds.PixelData = ds.PixelData[:10]


DICOM_FAULTS = {
    "slope 0": (lambda ds: setattr(ds, "RescaleSlope", 0), "RescaleSlope 0"),
    "slope inf": (lambda ds: setattr(ds, "RescaleSlope", "inf"), "RescaleSlope"),
    "no pixel data": (lambda ds: delattr(ds, "PixelData"), "has no pixel data"),
    "truncated pixel data": (_truncate, "pixel data cannot be decoded"),
    "orientation not unit": (lambda ds: setattr(ds, "ImageOrientationPatient", [0, 0, 0, 0, 1, 0]),
                             "not two perpendicular unit directions"),
    "orientation of 5 numbers": (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1]),
                                 "6 finite numbers expected"),
    "zero pixel spacing": (lambda ds: setattr(ds, "PixelSpacing", [0, 0.7]), "pixel sizes must be positive"),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("fault", list(DICOM_FAULTS))
def test_dicom_slice_that_cannot_be_read_is_named_in_one_line(series, fault):
    change, words = DICOM_FAULTS[fault]
    bad = _edit(series, change)
    with pytest.raises(InputError) as exc:
        load_images(series, volumes=THREE_D)
    one_line(exc, bad, words)


def test_dicom_series_still_reads_with_its_rescale(series):
    s = load_images(series, volumes=THREE_D)
    assert s.images.shape == (1, 1, 8, 8, 8) and s.modality == "CT"
    assert float(s.images.min()) == pytest.approx(-1000.0, abs=1.0)


def test_nifti_header_size_check_reads_the_declared_shape(tmp_path):
    """The shape the size check reports is the declared one, read from the stored header bytes."""
    path = patched_nifti(tmp_path / "d.nii", np.zeros((4, 4, 4), np.int16), dim=(64, 64, 64))
    raw = path.read_bytes()
    assert struct.unpack_from("<4h", raw, 40) == (3, 64, 64, 64)
    with pytest.raises(InputError, match="64×64×64 int16"):
        load_images(path)


# ---------------------------------------------------------------- generated .npz files

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:  # a dev dependency: the generated cases run where it is installed
    given = None

if given is not None:
    LABEL_VALUES = st.one_of(st.integers(-5, 20), st.integers(2**40, 2**62), st.sampled_from([10**15, -1]))
    FLOAT_VALUES = st.floats(allow_nan=True, allow_infinity=True, width=64)

    @st.composite
    def npz_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
        n = draw(st.integers(0, 5))
        shape = draw(st.sampled_from([(n, 8, 8), (n, 8, 8, 3), (n, 4, 8, 8), (n, 8), (n, 8, 8, 2), (n,)]))
        dtype = draw(st.sampled_from([np.uint8, np.float32, np.int64]))
        arrays = {"train_images": draw(hnp.arrays(dtype, shape, elements=None if dtype != np.float32
                                                  else st.floats(-1e3, 1e3, width=32)))}
        if draw(st.booleans()):
            rows = draw(st.sampled_from([n, n + 1]))
            cols = draw(st.sampled_from([(), (1,), (0,), (3,)]))
            elements = FLOAT_VALUES if draw(st.booleans()) else LABEL_VALUES
            labels_dtype = np.float64 if elements is FLOAT_VALUES else np.int64
            arrays["train_labels"] = draw(hnp.arrays(labels_dtype, (rows, *cols), elements=elements))
        return arrays

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(arrays=npz_arrays())
    def test_generated_npz_files_read_or_are_refused_in_one_line(tmp_path_factory, arrays):
        """Any shapes, types and label values: an ImageSet whose classes are named, or one InputError line."""
        path = write_npz(tmp_path_factory.mktemp("gen") / "gen.npz", **arrays)
        try:
            s = load_images(path)
        except InputError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            return
        assert len(s) == arrays["train_images"].shape[0]
        if s.labels is not None:
            assert 0 <= s.labels.min() and s.labels.max() < len(s.class_names) <= max(len(s), 1000)


def test_volume_cubes_no_memory_holds_are_refused_before_reading(tmp_path):
    """The size³ cubes of a 3D run are allocated up front: a size this machine cannot hold is one line."""
    path = patched_nifti(tmp_path / "brain.nii.gz", volume())
    with pytest.raises(InputError) as exc:
        load_images(path, volumes=VolumeOptions(size=100_000))
    one_line(exc, path, "100000³ voxels", "more than this machine has")


@pytest.mark.parametrize("content", [b"stem,class\nimg0," + b"9" * 200_000 + b"\n", b"\xff\xfe\x00s\x00t"],
                         ids=["field over csv's limit", "not UTF-8"])
def test_labels_csv_that_csv_cannot_parse_is_one_line(tmp_path, content):
    root = picture_folder(tmp_path / "xr", ["0", "1"])
    (root / "labels.csv").write_bytes(content)
    with pytest.raises(InputError) as exc:
        load_images(root)
    one_line(exc, root / "labels.csv")
