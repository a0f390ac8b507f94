"""The registry of data sources: every kind of input MedSynth reads, each one class that says whether a
path is of its kind (`claims`, the one detection rule), what it is in its users' words (`describe`), and
how it is read — as an ImageSet (2D, or the file's own form), as 3D cases (`volume_cases`, for
engine.io.volumes), and as one image with its geometry for the viewer (`view`).

`source_for(path)` picks the one source that claims a path; the engine's loaders, `medsynth info` and
the app all ask it, so that a path is the same thing everywhere. The claims are exclusive: at most one
source claims any path. Claiming touches only file names and a few DICOM headers, never nibabel, PIL or
scipy, so asking what a path is stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import InputError
from engine.io.sources.common import IMAGE_SUFFIXES, NIFTI_SUFFIXES, Case, View, is_nifti, visible

if TYPE_CHECKING:
    from engine.data.dataset import ImageSet

EXPECTED = ("a MedMNIST .npz, a .nii/.nii.gz file, a MedSynth .h5 file, or a folder holding "
            "dataset.json + imagesTr/ (MSD / nnU-Net), images/ (+ masks/), or image files")
Cases = tuple[list[Case], dict[int, str] | None, set[int] | None]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


class Source:
    """One kind of input. Subclasses set `kind` and override what they can do."""

    kind = ""
    volumes = False  # read as whole volumes (engine.io.volumes) when a 3D model asks
    slices = False  # its 2D form is its cases' axial slices

    def claims(self, path: Path) -> bool:
        raise NotImplementedError

    def kind_of(self, path: Path) -> str:
        return self.kind

    def count(self, path: Path) -> str | None:
        """How much the source holds, when that is known without reading it ("12 cases")."""
        return None

    def describe(self, path: Path, data: ImageSet | None = None) -> str:
        """'nnU-Net folder, 12 cases' (+ ', 658 slices' once read into `data`): what the app and `info` call it."""
        parts = [self.kind_of(path), self.count(path)]
        if data is not None:
            unit = "volume" if data.images.ndim == 5 else "slice" if self.slices else "image"
            parts.append(_plural(len(data), unit))
        return ", ".join(p for p in parts if p)

    def read(self, path: Path, *, split: str = "train", class_names: list[str] | None = None,
             volumes: bool = False) -> ImageSet:
        """The source as an ImageSet: 2D images, or the file's own form (a MedSynth or 3D MedMNIST file)."""
        raise NotImplementedError

    def volume_cases(self, path: Path, channel: int) -> Cases:
        """The 3D cases, with label names and allowed label values when dataset.json gives them."""
        if path.is_file():
            raise InputError(path, "is not a NIfTI file (.nii / .nii.gz); 3D input is NIfTI, an MSD / nnU-Net "
                                   "folder, or DICOM series")
        raise InputError(path, "holds no NIfTI files, DICOM series or dataset.json + imagesTr/")

    def view(self, path: Path) -> View | None:
        """The source as one image or volume for the viewer, or None when it is a set (browsed in the gallery)."""
        return None


class MedSynthFile(Source):
    kind = "MedSynth file"

    def claims(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in (".h5", ".hdf5")

    def count(self, path: Path) -> str | None:
        from engine.io.medsynth_h5 import open_file, read_header

        with open_file(path) as f:
            return _plural(read_header(f).n_complete, "sample")

    def describe(self, path: Path, data: ImageSet | None = None) -> str:
        return super().describe(path)  # its count is its samples, read or not

    def read(self, path: Path, **_: object) -> ImageSet:
        from engine.io.medsynth_h5 import read_image_set

        return read_image_set(path)


class MedMNISTFile(Source):
    kind = "MedMNIST file"

    def claims(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() == ".npz"

    def read(self, path: Path, *, split: str = "train", class_names: list[str] | None = None,
             volumes: bool = False) -> ImageSet:
        from engine.io.sources.npz import read_npz

        return read_npz(path, split=split, class_names=class_names, volumes=volumes)


class NiftiFile(Source):
    kind = "NIfTI file"
    volumes = True

    def claims(self, path: Path) -> bool:
        return path.is_file() and is_nifti(path)

    def read(self, path: Path, **_: object) -> ImageSet:
        from engine.io.sources.nifti import read_nifti

        return read_nifti(path)

    def volume_cases(self, path: Path, channel: int) -> Cases:
        from engine.io.sources.nifti import file_cases

        return file_cases(path)

    def view(self, path: Path) -> View:
        from engine.io.sources.nifti_view import nifti_view

        return nifti_view(path)


def _is_raw_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset.json").exists() or (path / "imagesTr").is_dir())


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return [p for p in visible(path) if p.is_file() and p.name.lower().endswith(suffixes)]


def _other_folder(path: Path) -> bool:
    """A folder that is neither an MSD / nnU-Net folder nor an images/ (+ masks/) pair folder."""
    return path.is_dir() and not _is_raw_dataset(path) and not (path / "images").is_dir()


class RawDataset(Source):
    """A Medical Segmentation Decathlon or nnU-Net v2 raw folder (dataset.json + imagesTr/)."""

    volumes = True
    slices = True

    def claims(self, path: Path) -> bool:
        return _is_raw_dataset(path)

    def kind_of(self, path: Path) -> str:
        from engine.io.sources.msd import is_nnunet

        return "nnU-Net folder" if is_nnunet(path) else "MSD folder"

    def count(self, path: Path) -> str | None:
        from engine.io.sources.msd import msd_cases

        return _plural(len(msd_cases(path)[0]), "case")

    def read(self, path: Path, **_: object) -> ImageSet:
        from engine.io.sources.msd import read_msd

        return read_msd(path)

    def volume_cases(self, path: Path, channel: int) -> Cases:
        from engine.io.sources.msd import volume_cases

        return volume_cases(path, channel)


class ImageFolder(Source):
    """Pictures: images/ (+ masks/, labels.csv), or a folder of image files (a DICOM series is not one)."""

    def claims(self, path: Path) -> bool:
        if not path.is_dir() or _is_raw_dataset(path):
            return False
        if (path / "images").is_dir():
            return True
        from engine.io.sources.dicom_folder import holds_slices

        return (not _files(path, NIFTI_SUFFIXES) and bool(_files(path, IMAGE_SUFFIXES))
                and not holds_slices(path))

    def kind_of(self, path: Path) -> str:
        return "image/mask folder" if (path / "masks").is_dir() else "image folder"

    def read(self, path: Path, *, class_names: list[str] | None = None, **_: object) -> ImageSet:
        from engine.io.sources.pictures import read_folder_pairs

        return read_folder_pairs(path, class_names=class_names)


class NiftiFolder(Source):
    """A folder of NIfTI files, each image with its `_seg` (`_mask`, `_label`...) partner or none."""

    kind = "NIfTI folder"
    volumes = True
    slices = True

    def claims(self, path: Path) -> bool:
        return _other_folder(path) and bool(_files(path, NIFTI_SUFFIXES))

    def _cases(self, path: Path) -> list[Case]:
        from engine.io.sources.nifti import folder_cases

        return folder_cases(_files(path, NIFTI_SUFFIXES))

    def count(self, path: Path) -> str | None:
        return _plural(len(self._cases(path)), "case")

    def read(self, path: Path, **_: object) -> ImageSet:
        from engine.io.sources.nifti import read_nifti_cases

        return read_nifti_cases([(case.image, case.mask) for case in self._cases(path)], path)

    def volume_cases(self, path: Path, channel: int) -> Cases:
        return self._cases(path), None, None


class DicomFolder(Source):
    """A DICOM series (a folder of its slices), or a folder of series in subfolders."""

    volumes = True
    slices = True

    def claims(self, path: Path) -> bool:
        if not _other_folder(path) or _files(path, NIFTI_SUFFIXES):
            return False
        from engine.io.sources.dicom_folder import holds_slices, series_folders

        return holds_slices(path) or (not _files(path, IMAGE_SUFFIXES) and bool(series_folders(path)))

    def kind_of(self, path: Path) -> str:
        from engine.io.sources.dicom_folder import holds_slices

        return "DICOM series" if holds_slices(path) else "DICOM folder"

    def count(self, path: Path) -> str | None:
        from engine.io.sources.dicom_folder import holds_slices, series_folders

        return None if holds_slices(path) else f"{len(series_folders(path))} series"

    def read(self, path: Path, **_: object) -> ImageSet:
        raise InputError(path, "holds DICOM series, which MedSynth reads as whole volumes: train on it with a 3D "
                               "preset (demo-3d, brain-64, brain-128 or ct-128)")

    def volume_cases(self, path: Path, channel: int) -> Cases:
        from engine.io.sources.dicom_folder import volume_cases

        return volume_cases(path), None, None

    def view(self, path: Path) -> View | None:
        from engine.io.sources.dicom_folder import dicom_view, holds_slices

        return dicom_view(path) if holds_slices(path) else None


SOURCES: tuple[Source, ...] = (MedSynthFile(), MedMNISTFile(), NiftiFile(), RawDataset(), ImageFolder(),
                               NiftiFolder(), DicomFolder())


def source_for(path: str | Path) -> Source:
    """The source that claims `path`; one InputError naming it when it is missing, empty or of no known kind."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir() and not visible(path):
        raise InputError(path, "is an empty folder")
    for source in SOURCES:
        if source.claims(path):
            return source
    if path.is_file():
        raise InputError(path, f"is not a supported input; expected {EXPECTED}")
    raise InputError(path, f"holds no data MedSynth can read; expected {EXPECTED}")


__all__ = ["EXPECTED", "SOURCES", "Case", "DicomFolder", "ImageFolder", "MedMNISTFile", "MedSynthFile", "NiftiFile",
           "NiftiFolder", "RawDataset", "Source", "View", "source_for"]
