"""NIfTI out: a MedSynth file's samples as .nii.gz with their geometry, loose or as an nnU-Net raw dataset.

Both layouts and both kinds of file (2D images, 3D volumes) share one voxel order,
one affine and one way of writing a file, so a volume exported either way opens
in 3D Slicer, ITK-SNAP, the app's viewer and the engine's readers at the same place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    from engine.io.medsynth_h5 import Header

# sform and qform both set, with the same matrix, code 1 ("scanner"): ITK (Slicer, ITK-SNAP)
# and FSL each prefer a different one of the two, and a form with code 0 is ignored, so
# only this leaves every tool no choice but the file's own geometry.
XFORM_CODE = 1


def sample_affine(header: Header) -> np.ndarray:
    """The 4x4 voxel→RAS (mm) matrix for this file's samples in NIfTI voxel order (x, y, z)."""
    spacing = list(header.spacing or ())
    dims = 3 if header.volume else 2
    sp = spacing if len(spacing) == dims else [1.0] * dims
    # Spacing is (x, y[, z]) = stored (W, H[, D]), NIfTI's own voxel order; a 2D image is one slice 1 mm thick.
    by_spacing = np.diag([*sp, *([1.0] * (4 - dims))])
    if dims == 2:
        return by_spacing
    stored = header.affine if header.affine is not None else np.eye(4)
    # An identity is what older files store when no affine was known; the spacing is then
    # the only geometry there is, and dropping it would squash anisotropic voxels.
    if stored.shape != (4, 4) or not np.isfinite(stored).all() or (
            np.allclose(stored, np.eye(4)) and not np.allclose(sp, 1.0)):
        return by_spacing
    return stored


def to_nifti_order(array: np.ndarray) -> np.ndarray:
    """Stored (D, H, W) → NIfTI (x, y, z) = (W, H, D); a 2D (H, W) image → (x, y, 1), as nnU-Net takes 2D data.

    A view, not a copy: nibabel writes column-major, which is this view's memory order. A 2D
    picture's top row becomes the highest y (anterior), the way NIfTI viewers and the engine's
    own MSD reader put it back on screen upright.
    """
    return array[::-1].T[:, :, None] if array.ndim == 2 else array.transpose(2, 1, 0)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """One .nii.gz whose sform and qform both hold `affine`; zooms follow from it, in mm."""
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=XFORM_CODE)
    img.set_qform(affine, code=XFORM_CODE)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def nnunet_labels(label_names: dict, highest: int) -> dict[str, int]:
    """nnU-Net v2 labels {"background": 0, name: value}, consecutive up to the highest value named or seen.

    nnU-Net refuses gaps in the label values, so an unnamed value gets a placeholder name.
    """
    names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
    top = max([highest, *names])
    return {"background": 0, **{names.get(k, f"label_{k}"): k for k in range(1, top + 1)}}


def dataset_json(label_names: dict, highest: int, channels: int, modality: str, n: int, source: str) -> dict:
    """dataset.json in nnU-Net v2 form. The modality name is what picks nnU-Net's normalisation ("CT" or z-score)."""
    return {"channel_names": {str(c): modality for c in range(channels)},
            "labels": nnunet_labels(label_names, highest), "numTraining": n, "file_ending": ".nii.gz",
            "name": "MedSynth synthetic", "description": f"exported from {source}"}


class NiftiExport:
    """Writes samples one by one as NIfTI files, then the dataset.json an nnU-Net folder needs.

    Loose (`nnunet=False`): `synth_00000.nii.gz` + `synth_00000_seg.nii.gz`, the partner naming
    the app's NIfTI loader and the engine's readers pair up. nnU-Net: `imagesTr/synth_00000_0000.nii.gz`
    per channel and `labelsTr/synth_00000.nii.gz`. Masks are labels 0..K either way: a NIfTI label map
    holds label numbers (nnU-Net requires them consecutive), whereas a file's mask coding is the grey
    levels of the user's picture masks, which only the PNG export writes back.
    """

    def __init__(self, out: Path, header: Header, channels: int, nnunet: bool, source: str) -> None:
        self.out, self.header, self.channels, self.nnunet, self.source = out, header, channels, nnunet, source
        self.affine = sample_affine(header)
        self.highest = 0
        self.count = 0
        self.images_dir = out / "imagesTr" if nnunet else out
        self.labels_dir = out / "labelsTr" if nnunet else out
        self.images_dir.mkdir(exist_ok=True)
        self.labels_dir.mkdir(exist_ok=True)

    def _image_names(self, name: str) -> list[str]:
        if self.nnunet or self.channels > 1:
            # Several channels: one 3D file each, with nnU-Net's channel suffix, rather than one 4D file.
            # 3D Slicer opens a 4D NIfTI as a time sequence (one volume node stepping through frames),
            # not as co-registered contrasts, and the app's viewer and readers take 3D only; one file
            # per channel loads as the separate volumes Slicer users expect, e.g. T1 and T2 side by side.
            return [f"{name}_{c:04d}.nii.gz" for c in range(self.channels)]
        return [f"{name}.nii.gz"]

    def write(self, name: str, image: np.ndarray, mask: np.ndarray | None) -> tuple[list[str], str]:
        """Write one sample (image (C, ...) in data units, mask uint8 or None); return the files' relative paths."""
        files = []
        for c, file in enumerate(self._image_names(name)):
            save_nifti(to_nifti_order(image[c].astype(np.float32, copy=False)), self.affine, self.images_dir / file)
            files.append(str((self.images_dir / file).relative_to(self.out)))
        mask_file = ""
        if mask is not None:
            target = self.labels_dir / (f"{name}.nii.gz" if self.nnunet else f"{name}_seg.nii.gz")
            save_nifti(to_nifti_order(mask.astype(np.uint8, copy=False)), self.affine, target)
            mask_file = str(target.relative_to(self.out))
            self.highest = max(self.highest, int(mask.max()))
        self.count += 1
        return files, mask_file

    def finish(self) -> None:
        if not self.nnunet:
            return
        meta = dataset_json(self.header.label_names, self.highest, self.channels, self.header.modality, self.count,
                            self.source)
        (self.out / "dataset.json").write_text(json.dumps(meta, indent=2))
