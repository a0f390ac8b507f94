"""DICOM series written with pydicom read back as the volume they came from, placed in space."""

import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.errors import InputError  # noqa: E402
from engine.io.dicom import is_dicom_folder, read_dicom_series  # noqa: E402

SPACING = (0.8, 0.7, 2.5)  # column (x), row (y), slice
ORIGIN = (-100.0, -120.0, 40.0)  # LPS mm


def write_series(folder: Path, volume: np.ndarray, series_uid: str | None = None, start: int = 0) -> None:
    """volume: (X, Y, Z) in HU. Files are named at random and numbered backwards, so only
    the positions can order them."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    nx, ny, nz = volume.shape
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.PatientName, ds.PatientID = "Doe^Secret", "SECRET-123"
        ds.Modality, ds.SeriesInstanceUID = "CT", uid
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.InstanceNumber = nz - k
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [SPACING[1], SPACING[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + (start + k) * SPACING[2]]
        ds.SliceThickness = SPACING[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (volume[:, :, k].T + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"{uuid.uuid4().hex[:12]}.dcm", enforce_file_format=True)


@pytest.fixture
def ct_volume():
    v = make_phantoms(1, size=24, dims=3).images[0, 0]
    return np.round(v * 2 - 1000).astype(np.float32)[:, :20, :12]  # HU-like, anisotropic shape


def test_series_reads_back_as_the_volume_with_its_geometry(tmp_path, ct_volume):
    write_series(tmp_path / "s", ct_volume)
    assert is_dicom_folder(tmp_path / "s")
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.array, ct_volume)
    assert vol.modality == "CT" and vol.units == "HU"
    np.testing.assert_allclose(vol.spacing, SPACING)
    # Voxel (i, j, k) sits at LPS origin + (i*dx, j*dy, k*dz); RAS flips x and y.
    ijk = np.array([3, 5, 7])
    lps = np.array(ORIGIN) + ijk * np.array(SPACING)
    np.testing.assert_allclose(nib.affines.apply_affine(vol.affine, ijk), lps * [-1, -1, 1])
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    assert "SECRET" not in repr(vol)


def test_mixed_series_and_bad_files_are_named(tmp_path, ct_volume):
    write_series(tmp_path / "mixed", ct_volume[:, :, :4])
    write_series(tmp_path / "mixed", ct_volume[:, :, :4], start=4)
    with pytest.raises(InputError, match="mixed: mixes 2 DICOM series"):
        read_dicom_series(tmp_path / "mixed")
    write_series(tmp_path / "gap", ct_volume[:, :, :6])
    files = sorted((tmp_path / "gap").iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    files[3].unlink()
    with pytest.raises(InputError, match="uneven slice gaps"):
        read_dicom_series(tmp_path / "gap")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="x.dcm: is not a readable DICOM file"):
        read_dicom_series(tmp_path / "junk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty folder"):
        read_dicom_series(tmp_path / "empty")


def _edit_one(folder: Path, index: int, change) -> Path:
    """Apply `change` to the dataset of the index-th slice along z, and save it back."""
    files = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    ds = pydicom.dcmread(files[index])
    change(ds)
    ds.save_as(files[index])
    return files[index]


def test_each_slice_that_cannot_be_placed_is_named(tmp_path, ct_volume):
    """The checks of a series, each raised with the file or folder at fault, and a one-slice series' spacing."""
    write_series(tmp_path / "untagged", ct_volume[:, :, :3])
    bad = _edit_one(tmp_path / "untagged", 1, lambda ds: delattr(ds, "PixelSpacing"))
    with pytest.raises(InputError, match=f"{bad.name}: has no PixelSpacing"):
        read_dicom_series(tmp_path / "untagged")
    write_series(tmp_path / "tilted", ct_volume[:, :, :3])
    _edit_one(tmp_path / "tilted", 2, lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 1, 0, 0]))
    # The odd one out is judged against the first file by name, which may be the tilted one itself.
    with pytest.raises(InputError, match=r"tilted.\w+\.dcm: has a different slice orientation"):
        read_dicom_series(tmp_path / "tilted")
    write_series(tmp_path / "ragged", ct_volume[:, :, :3])
    small = ct_volume[:-2, :, 0]

    def shrink(ds):
        ds.Columns = small.shape[0]
        ds.PixelData = (small.T + 1024).astype(np.int16).tobytes()

    bad = _edit_one(tmp_path / "ragged", 1, shrink)
    with pytest.raises(InputError, match=f"{bad.name}: slice of shape"):
        read_dicom_series(tmp_path / "ragged")
    write_series(tmp_path / "twice", ct_volume[:, :, :3])
    _edit_one(tmp_path / "twice", 2, lambda ds: setattr(ds, "ImagePositionPatient", [*ORIGIN[:2], ORIGIN[2]]))
    with pytest.raises(InputError, match="twice: holds two slices at the same position"):
        read_dicom_series(tmp_path / "twice")
    write_series(tmp_path / "one", ct_volume[:, :, :1])
    vol = read_dicom_series(tmp_path / "one")
    assert vol.array.shape == (*ct_volume.shape[:2], 1)
    np.testing.assert_allclose(vol.spacing, SPACING)
    np.testing.assert_allclose(vol.affine[:3, 2], [0, 0, SPACING[2]])


def test_info_and_the_app_open_a_dicom_folder(tmp_path, ct_volume, qtbot, capsys, monkeypatch):
    from medsynth.cli import main

    write_series(tmp_path / "series", ct_volume)
    assert main(["info", str(tmp_path / "series")]) == 0
    out = capsys.readouterr().out
    assert "DICOM series (CT)" in out and "(24, 20, 12)" in out and "LPS" in out
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    from medsynth_gui.main_window import MainWindow

    win = MainWindow()
    win.quiet_errors = True
    qtbot.addWidget(win)
    assert win.open_path(tmp_path / "series")
    assert win.current.units == "HU" and win.current.image.shape == (24, 20, 12)
    assert win.viewer.state.volume.shape == (24, 20, 12)
