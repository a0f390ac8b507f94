"""Reading what the viewer and gallery show: one sample of a MedSynth file, a NIfTI volume with its label
map (the engine's partner rule), a DICOM series, and folders read into a private cache for the gallery."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from engine.data import partners
from engine.data.dataset import ImageSet
from engine.data.readers import _dataset_json, _label_map
from engine.errors import InputError
from engine.io.medsynth_h5 import open_file, read_header, read_names, read_sample, write_image_set


@dataclass
class Displayable:
    image: np.ndarray  # (H, W), (3, H, W) or a volume (X, Y, Z)
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    units: str = ""
    title: str = ""
    note: str = ""  # something the user should know about what is shown (a partner that did not fit)


def h5_sample(path: str | Path, index: int, file_title: str | None = None) -> Displayable:
    """One sample for the viewer, titled by `file_title` (a folder read into the cache) or the file's name."""
    with open_file(path) as f:
        h, s = read_header(f), read_sample(f, index)
    image, mask = s.image[0] if s.image.shape[0] == 1 else s.image, s.mask
    if image.ndim == 3 and h.volume:
        # Stored (D, H, W); the viewer takes voxel order (X, Y, Z) with the file's affine.
        image = np.ascontiguousarray(np.transpose(image, (2, 1, 0)))
        mask = None if mask is None else np.ascontiguousarray(np.transpose(mask, (2, 1, 0)))
    title = f"{file_title or Path(path).name} #{index}"
    if s.name is not None:
        title += f" · {s.name}"
    if s.label is not None:
        title += f" · {h.class_name(s.label)}"
    if s.seed is not None:
        title += f" · seed {s.seed}"
    return Displayable(image.astype(np.float32), mask, h.volume_affine, h.shown_spacing(), h.label_names,
                       h.intensity_units, title)


def h5_names(path: str | Path) -> list[str] | None:
    """Each sample's provenance ("case_003 · z 41") when the file records it."""
    with open_file(path) as f:
        return read_names(f)


def _nifti_array(p: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for bad files
        raise InputError(p, f"is not a readable NIfTI file ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(p, f"is {data.ndim}D; the viewer shows 2D images and 3D volumes")
    return data, img


def _label_names(path: Path) -> dict[int, str]:
    root = partners.dataset_root(path)
    if root is None:
        return {}
    try:
        return _dataset_json(root)[0]
    except InputError:
        return {}  # a broken dataset.json only costs the names here


def _image(p: Path) -> Displayable:
    data, img = _nifti_array(p)
    data = data.astype(np.float32)
    units = "HU" if float(np.percentile(data, 1)) < -500 else ""
    zooms = tuple(float(z) for z in img.header.get_zooms()[:data.ndim])
    return Displayable(data, None, np.asarray(img.affine, float), zooms, _label_names(p), units, p.name)


def _spatial_shape(d: Displayable) -> tuple[int, ...]:
    colour = d.image.ndim == 3 and d.image.shape[0] == 3 and d.affine is None
    return tuple(d.image.shape[1:] if colour else d.image.shape)


def with_segmentation(d: Displayable, label: str | Path) -> Displayable:
    """The shown image with a label NIfTI as its overlay; InputError naming the label file when it is not
    a label map or its grid is not the image's (a mask with flipped or permuted axes is turned to fit)."""
    label = Path(label)
    raw, img = _nifti_array(label)
    labels = _label_map(label, raw, None)
    shape = _spatial_shape(d)
    if labels.ndim == 3 and labels.shape[2] == 1 and len(shape) == 2:
        labels = labels[..., 0]
    if d.affine is None or labels.ndim != len(shape):
        if labels.shape != shape:
            raise InputError(label, f"holds a label map of shape {labels.shape}; the image shown is {shape}")
    else:
        labels = partners.onto_grid(labels, np.asarray(img.affine, float), d.affine, shape, d.title, label)
    names = _label_names(label) or d.label_names
    # One segmentation at a time: a second one replaces the first in the title too.
    base = d.title.split(" + ")[0] if d.mask is not None else d.title
    title = f"{base} + {label.name}" if base else label.name
    return replace(d, mask=labels, label_names=names, title=title)


def _labels_alone(p: Path) -> Displayable | None:
    """A label map with no image to go on: its labels in colour on black, as 3D Slicer and ITK-SNAP show a
    segmentation loaded by itself. None when its values are not labels (then it is an image after all)."""
    raw, img = _nifti_array(p)
    try:
        labels = _label_map(p, raw, None)
    except InputError:
        return None
    zooms = tuple(float(z) for z in img.header.get_zooms()[:labels.ndim])
    return Displayable(np.zeros(labels.shape, np.float32), labels, np.asarray(img.affine, float), zooms,
                       _label_names(p), "", f"{p.name} (label map)")


def nifti_volume(path: str | Path) -> Displayable:
    """A NIfTI file for the viewer, paired by the partner rule: an image with its label map as the
    overlay, or a label map with its image (or alone, in colour on black)."""
    p = Path(path)
    if partners.is_label_file(p):
        image = partners.image_for(p)
        if image is not None:
            return with_segmentation(_image(image), p)
        alone = _labels_alone(p)
        if alone is not None:
            return alone
    d = _image(p)
    partner = partners.label_for(p)
    if partner is not None:
        try:
            return with_segmentation(d, partner)
        except InputError as exc:
            d.note = f"{exc} — shown without it"
    return d


def dicom_volume(folder: str | Path) -> Displayable:
    from engine.data.dicom import read_dicom_series

    v = read_dicom_series(folder)
    return Displayable(v.array, None, v.affine, v.spacing, {}, v.units, Path(folder).name)


class ViewCache:
    """Folders and .npz files read into MedSynth files for the gallery, which browses HDF5.

    The copies live in a folder only the user can open (0700), one per source named by the hash of
    its absolute path (so two folders of the same name never overwrite each other, and the name
    says nothing about a patient), and are deleted by clear() when the window closes. Copies older
    than a week, left by a session that crashed, are deleted when a cache starts.
    """

    STALE_S = 7 * 24 * 3600

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.titles: dict[str, str] = {}  # cache file -> what the gallery and viewer call it
        if self.root.is_dir():
            now = time.time()
            for old in self.root.glob("*.h5*"):  # copies, and parts of copies a crash cut short
                with contextlib.suppress(OSError):
                    if now - old.stat().st_mtime > self.STALE_S:
                        old.unlink()

    def path_for(self, source: str | Path) -> Path:
        digest = hashlib.sha256(str(Path(source).resolve()).encode("utf-8")).hexdigest()[:24]
        return self.root / f"{digest}.h5"

    def store(self, source: str | Path, data: ImageSet, title: str) -> Path:
        """Write `data` as the source's copy (replacing its earlier one whole) and return its path."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)  # mkdir's mode is cut by the umask, and an older folder may be wider
        target = self.path_for(source)
        fd, tmp = tempfile.mkstemp(suffix=".h5.part", dir=self.root)  # created 0600
        os.close(fd)
        try:
            write_image_set(tmp, data, overwrite=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.titles[str(target)] = title
        return target

    def title(self, path: str | Path) -> str | None:
        return self.titles.get(str(path))

    def clear(self) -> None:
        for path in list(self.titles):
            with contextlib.suppress(OSError):
                Path(path).unlink(missing_ok=True)
        self.titles.clear()


def default_cache_root() -> Path:
    """$XDG_CACHE_HOME/medsynth/views (~/.cache when unset): the user's own cache, never the shared tmp."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medsynth" / "views"


def dataset_view(source: str | Path, cache: ViewCache) -> tuple[Path, str]:
    """Read a data folder or .npz through the engine into the cache; returns (file, title), the title
    naming the source by its folder, e.g. "BraTS_subset (nnU-Net folder, 12 cases, 658 slices)"."""
    from engine.data import load_images
    from engine.info import source_summary

    source = Path(source)
    data = load_images(source)
    title = f"{source.name} ({source_summary(source, data)})"
    return cache.store(source, data, title), title
