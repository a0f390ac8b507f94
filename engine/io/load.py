"""Loading user data: `load_images` picks the reader from what a path holds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import InputError

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.data.dataset import ImageSet
    from engine.io.volumes import VolumeOptions

# The readers pull in nibabel, PIL and scipy (~0.4 s): each function imports them on first use, so that reading a
# MedSynth file (`medsynth info`, `export`, the app's gallery) does not pay for them.


def volume_options(cfg: RunConfig) -> VolumeOptions | None:
    """How a run reads NIfTI / MSD / DICOM inputs: as whole volumes when data.dims is 3, else None
    (slices, the 2D readers' way)."""
    from engine.io.volumes import VolumeOptions

    if cfg.data.dims != 3:
        return None
    spacing = None
    if cfg.data.spacing:
        if len(cfg.data.spacing) != 3:
            raise InputError(None, f"data.spacing {list(cfg.data.spacing)} needs three sizes in mm (x, y, z), "
                                   "or none for automatic")
        x, y, z = (float(s) for s in cfg.data.spacing)
        spacing = (x, y, z)
    return VolumeOptions(size=int(cfg.model.image_size), spacing=spacing, crop=cfg.data.crop,
                         channel=int(cfg.data.channel))


def load_images(path: str | Path, *, split: str = "train", class_names: list[str] | None = None,
                volumes: VolumeOptions | None = None) -> ImageSet:
    """Read any supported input into a validated ImageSet, through the source that claims it
    (engine.io.sources).

    `split` picks the MedMNIST split; `class_names` names numeric classes of a .npz file (when
    the file has none) or of an image folder's labels.csv. With `volumes`, NIfTI files and
    folders, MSD / nnU-Net folders and DICOM series are read as whole size³ volumes
    (`read_volumes`); .npz and .h5 files keep their own form (a 3D .npz gives volumes only then).
    """
    from engine.io.sources import source_for

    path = Path(path)
    source = source_for(path)
    if volumes is not None and source.volumes:
        from engine.io.volumes import read_volumes

        return read_volumes(path, volumes)
    return source.read(path, split=split, class_names=class_names, volumes=volumes is not None)
