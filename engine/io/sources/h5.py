"""One sample of a MedSynth HDF5 file as the viewer shows it (the file itself is read by engine.io.medsynth_h5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.io.medsynth_h5 import open_file, read_header, read_sample
from engine.io.sources.common import View


def sample_view(path: str | Path, index: int, file_title: str | None = None) -> View:
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
    return View(image.astype(np.float32), mask, h.volume_affine, h.shown_spacing(), h.label_names,
                       h.intensity_units, title)
