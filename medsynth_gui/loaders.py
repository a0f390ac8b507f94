"""What the viewer and gallery show: sources read through the engine's registry (engine.io.sources), and
folders read into a private cache for the gallery."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path

from engine.data.dataset import ImageSet
from engine.io.medsynth_h5 import open_file, read_names
from engine.io.medsynth_writer import write_image_set
from engine.io.sources import MedSynthFile, View, source_for
from engine.io.sources.nifti_view import with_segmentation

__all__ = ["ViewCache", "dataset_view", "default_cache_root", "h5_names", "opened_as", "with_segmentation"]


def h5_names(path: str | Path) -> list[str] | None:
    """Each sample's provenance ("case_003 · z 41") when the file records it."""
    with open_file(path) as f:
        return read_names(f)


def opened_as(path: str | Path) -> tuple[str, View | None]:
    """How the app opens a path, as its source says: ("gallery", None) for a MedSynth file, browsed as it is;
    ("viewer", image) for one image or volume (a NIfTI file, a DICOM series); ("dataset", None) for a set,
    read into the cache for the gallery. InputError naming the path when no source claims it."""
    source = source_for(path)
    if isinstance(source, MedSynthFile):
        return "gallery", None
    view = source.view(Path(path))
    return ("viewer", view) if view is not None else ("dataset", None)


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
    from engine.info import source_summary
    from engine.io.load import load_images

    source = Path(source)
    data = load_images(source)
    title = f"{source.name} ({source_summary(source, data)})"
    return cache.store(source, data, title), title
