"""Writes the MedSynth HDF5 fixtures tests/data/medsynth_v1_2d.h5 and medsynth_v1_3d.h5.

Run at commit 96aa0ff (format_version 1, before the format moved into engine/io/medsynth_h5.py), from the
repository root: `python tests/data/make_old_h5.py`. The files are kept, never regenerated, to prove that files
written by that older build still read; tests compare them with `expected_2d()` / `expected_3d()` below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FILE_2D = HERE / "medsynth_v1_2d.h5"
FILE_3D = HERE / "medsynth_v1_3d.h5"
CLASS_NAMES = ["no lesion", "1 lesion"]
LABEL_NAMES = {1: "lesion", 2: "rim"}
MASK_CODING = {1: 127, 2: 254}
SPACING_2D = (0.5, 0.75)  # (x, y) mm
SPACING_3D = (0.8, 0.9, 2.5)  # (x, y, z) mm
AFFINE_3D = np.array([[-0.8, 0, 0, 10.0], [0, -0.9, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
NORMALISATION = {"modality": "MR", "lo": 0.0, "hi": 100.0}
FIGURES = {"frd": 1.25, "nn_share_above": 0.0}
SUMMARY = {"frd": {"value": 1.25}, "complete": True}
N_PLANNED_2D = 4  # one more than written: the file reads as a run stopped after 3 samples


def expected_2d() -> dict:
    n = 3
    images = (np.arange(n * 8 * 8, dtype=np.float32).reshape(n, 1, 8, 8) * 0.5)
    masks = np.zeros((n, 8, 8), np.uint8)
    for i in range(n):
        masks[i, 2 + i:5 + i, 1:4] = 1
        masks[i, 0, i] = 2
    return {"images": images, "masks": masks, "labels": np.array([0, 1, 1], np.int64),
            "seeds": np.array([7, 8, 9], np.int64), "names": ["case_000 · z 1", "case_000 · z 2", "case_001 · z 0"]}


def expected_3d() -> dict:
    n = 2
    images = np.arange(n * 4 * 6 * 8, dtype=np.float32).reshape(n, 1, 4, 6, 8) - 40.0
    masks = np.zeros((n, 4, 6, 8), np.uint8)
    masks[0, 1:3, 2:4, 3:6] = 1
    masks[1, 2, 1:5, 1:7] = 2
    return {"images": images, "masks": masks, "seeds": np.array([0, 1], np.int64)}


def main() -> None:
    import h5py
    from engine.store import SampleWriter  # the writer as it was at 96aa0ff; now engine.io.medsynth_h5

    e = expected_2d()
    with SampleWriter(FILE_2D, N_PLANNED_2D, (1, 8, 8), masks=True, labels=True, class_names=CLASS_NAMES,
                      label_names=LABEL_NAMES, mask_coding=MASK_CODING, spacing=SPACING_2D, units="a.u.",
                      normalisation=NORMALISATION, config={"data": {"path": "phantoms.h5"}},
                      checkpoint_sha256="ab" * 32, overwrite=True) as w:
        w.f.create_dataset("names", data=e["names"] + ["never written"], dtype=h5py.string_dtype())
        w.append(e["images"], e["seeds"], e["masks"], e["labels"])
        w.set_metrics(FIGURES, SUMMARY)
    e = expected_3d()
    with SampleWriter(FILE_3D, 2, (1, 4, 6, 8), masks=True, labels=False, kind="real", label_names=LABEL_NAMES,
                      spacing=SPACING_3D, affine=AFFINE_3D, units="HU", normalisation={"modality": "CT"},
                      overwrite=True) as w:
        w.append(e["images"], e["seeds"], e["masks"])


if __name__ == "__main__":
    main()
