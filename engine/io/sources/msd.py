"""Medical Segmentation Decathlon and nnU-Net v2 raw folders: dataset.json + imagesTr/ (+ labelsTr/).

Both dialects are one layout: MSD keeps one file per case (several channels on a 4D file's last axis),
nnU-Net one file per channel (`case_0000.nii.gz`, `case_0001.nii.gz`, ...).
"""

from __future__ import annotations

from pathlib import Path

from engine.data.dataset import ImageSet
from engine.errors import InputError
from engine.io import partners
from engine.io.sources.common import Case, is_nifti, nifti_stem, visible
from engine.io.sources.dataset_json import channel_modality, read_dataset_json
from engine.io.sources.nifti import read_cases


def is_nnunet(root: Path) -> bool:
    """nnU-Net's dialect: its dataset.json says channel_names, or its images carry channel suffixes."""
    try:
        if read_dataset_json(root).nnunet:
            return True
    except InputError:
        pass  # a broken or missing dataset.json leaves the dialect to the file names
    images = root / "imagesTr"
    return images.is_dir() and any(partners.split_channel(partners.split_name(p)[0]) for p in images.iterdir())


def msd_cases(root: Path) -> tuple[dict[str, Path], dict[str, Path] | None]:
    """{case: channel-0 image file} (nnU-Net's `case_0000`, or MSD's one file per case) and
    {case: label file}, or None without labelsTr/; every image must have its label and back."""
    image_dir, label_dir = root / "imagesTr", root / "labelsTr"
    if not image_dir.is_dir():
        raise InputError(image_dir, "is missing")
    image_files = [p for p in visible(image_dir) if p.is_file() and is_nifti(p)]
    if not image_files:
        raise InputError(image_dir, "holds no .nii.gz images")
    label_files = {nifti_stem(p): p for p in visible(label_dir) if is_nifti(p)} if label_dir.is_dir() else None
    stems = [nifti_stem(p) for p in image_files]
    # The partner rule names each image's case; only channel 0 stands for its case here.
    of = partners.case_names(stems, None if label_files is None else set(label_files))
    cases: dict[str, Path] = {}
    for p, stem in zip(image_files, stems, strict=True):
        case, channel = of[stem]
        if channel == 0:
            cases[case] = p
    if not cases:
        raise InputError(image_dir, "holds no channel-0 images (nnU-Net names end in _0000.nii.gz)")
    if label_files is not None:
        partners.check_pairing(cases, label_files, lambda case: f"has no label file {case}.nii.gz in {label_dir}",
                               f"is a label file without an image in {image_dir}")
    return cases, label_files


def read_msd(root: str | Path) -> ImageSet:
    """Read a Medical Segmentation Decathlon or nnU-Net raw folder as 2D axial slices.

    Both label styles of dataset.json are understood. nnU-Net multi-channel cases
    (`case_0000.nii.gz`, `case_0001.nii.gz`, ...) are read from channel 0 only; MSD 4D images
    are refused with a clear error. Per case: all foreground slices plus every 4th empty one.
    Cases of different in-plane size are resized to the most common size.
    """
    root = Path(root)
    meta = read_dataset_json(root)
    cases, label_files = msd_cases(root)
    named = [(case, cases[case], None if label_files is None else label_files[case]) for case in sorted(cases)]
    return read_cases(named, root, meta.label_names, meta.modality)


def volume_cases(root: Path, channel: int) -> tuple[list[Case], dict[int, str], set[int]]:
    """The folder's cases as whole volumes of one channel, with dataset.json's label names and values."""
    meta = read_dataset_json(root)
    n_channels = max(len(meta.channels), 1)
    if not 0 <= channel < n_channels:
        raise InputError(meta.path, f"lists {n_channels} channel(s); channel {channel} is out of range")
    # An unknown channel name ("noNorm", "rescale_to_0_1") leaves the modality to the voxels.
    modality = channel_modality(meta.channels.get(str(channel), ""))
    modality = modality if modality != "generic" else "auto"
    cases, label_files = msd_cases(root)
    out = []
    for case in sorted(cases):
        first = cases[case]
        stem = nifti_stem(first)
        if stem != case:  # nnU-Net v2: one file per channel, case_0000, case_0001, ...
            image = first.with_name(f"{case}_{channel:04d}{first.name[len(stem):]}")
            if not image.is_file():
                raise InputError(first, f"has no channel-{channel} partner {image.name}")
            four_d = None
        else:  # MSD: several channels sit on a 4D file's last axis
            image, four_d = first, (channel if n_channels > 1 else None)
        mask = label_files[case] if label_files is not None else None
        out.append(Case(image, mask, channel=four_d, modality=modality))
    return out, meta.label_names, set(meta.label_names)
