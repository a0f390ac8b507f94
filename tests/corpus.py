"""A conformance corpus: small data sets made on the spot, each laid out like a public data set users bring.

Nothing is downloaded. Each builder writes a few cases of 16-32 px (or a small volume) into a folder and
returns what the tests need to know about it: the path to hand `medsynth`, and the facts that must
survive training, sampling and export (label values and names, spacing, orientation, bit depth, value
range). The conventions copied are the public sets' own: Kvasir-SEG's lossy JPEG masks of varying size,
grey-level and palette (VOC) PNG masks, 12- and 16-bit X-rays with a labels.csv, MedMNIST's .npz splits,
the MSD and nnU-Net v2 raw folders with both dataset.json dialects, NIfTI files in LPS / PIR order with
anisotropic and oblique voxel grids, and a DICOM CT series on an oblique plane with a rescale intercept.
"""

from __future__ import annotations

import csv
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image


@dataclass
class Corpus:
    """One made data set and the numbers that must survive it."""

    path: Path  # what is handed to `medsynth`
    mask_values: tuple[int, ...] = ()  # the source's own mask coding, 0 first; () without masks
    label_names: dict[int, str] = field(default_factory=dict)  # from dataset.json, when it names them
    class_names: list[str] = field(default_factory=list)
    bits: int = 8  # bit depth of the source's pixels
    value_range: tuple[float, float] = (0.0, 255.0)  # the source's units
    channels: int = 1
    n: int = 0  # training images / cases


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _blob(h: int, w: int, rng: np.random.Generator, scale: float = 0.3) -> np.ndarray:
    """A filled ellipse somewhere inside an (h, w) frame."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.6, 1.0) * scale * h, rng.uniform(0.6, 1.0) * scale * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _labelled(h: int, w: int, levels: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A mask with nested regions, one per foreground level (outer = levels[1], inner = levels[-1])."""
    mask = np.full((h, w), levels[0], np.uint8)
    outer = _blob(h, w, rng, 0.38)
    mask[outer] = levels[1]
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = np.argwhere(outer).mean(axis=0)
    for k, level in enumerate(levels[2:], start=1):
        r = 0.28 * min(h, w) * (1.0 - 0.3 * k)
        mask[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & outer] = level
    return mask


def _picture(mask: np.ndarray, rng: np.random.Generator, top: float, channels: int = 1) -> np.ndarray:
    """An image whose brightness follows the mask, with texture, in 0..top."""
    base = 0.25 + 0.5 * (mask > 0) + 0.15 * (mask == mask.max()) * (mask.max() > 0)
    noise = rng.normal(0.0, 0.04, mask.shape + ((channels,) if channels > 1 else ()))
    img = (base[..., None] if channels > 1 else base) + noise
    if channels > 1:
        img = img * np.array([1.0, 0.75, 0.6])  # endoscopy is reddish
    return np.clip(img, 0.0, 1.0) * top


# ---------------------------------------------------------------- 2D picture folders


def kvasir(root: Path, n: int = 6) -> Corpus:
    """Kvasir-SEG: images/*.jpg (RGB) and masks/*.jpg (0/255, lossy) of varying sizes, matched by stem."""
    rng = _rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    sizes = [(24, 28), (24, 28), (20, 26), (24, 28), (28, 24), (24, 28)]
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        mask = _blob(h, w, rng).astype(np.uint8) * 255
        img = _picture(mask, rng, 255.0, 3).astype(np.uint8)
        stem = f"cju{i:04d}pqr{uuid.UUID(int=i).hex[:6]}"
        Image.fromarray(img, "RGB").save(root / "images" / f"{stem}.jpg", quality=75)
        Image.fromarray(mask, "L").save(root / "masks" / f"{stem}.jpg", quality=75)
    return Corpus(root, mask_values=(0, 255), channels=3, n=n)


def grey_masks(root: Path, levels: tuple[int, ...], n: int = 6, size: int = 20) -> Corpus:
    """images/*.png (8-bit gray) with masks/*.png coded as grey levels, e.g. {0,127,254} or {0,85,170,255}."""
    rng = _rng(len(levels))
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = _labelled(size, size, levels, rng)
        Image.fromarray(_picture(mask, rng, 255.0).astype(np.uint8), "L").save(root / "images" / f"slice_{i:03d}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"slice_{i:03d}.png")
    return Corpus(root, mask_values=tuple(levels), n=n)


VOC_CLASSES = 2
VOC_VOID = 255


def palette_masks(root: Path, n: int = 6, size: int = 24) -> Corpus:
    """Pascal VOC: JPEG images and mode "P" PNG masks whose indices 0..K are the classes and 255 is the
    void border drawn around every object."""
    from scipy import ndimage

    rng = _rng(7)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192]  # VOC's colours and void
    for i in range(n):
        mask = _labelled(size, size, tuple(range(VOC_CLASSES + 1)), rng)
        objects = mask > 0
        border = ndimage.binary_dilation(objects, iterations=1) & ~ndimage.binary_erosion(objects, iterations=1)
        img = _picture(mask, rng, 255.0, 3).astype(np.uint8)
        mask[border] = VOC_VOID
        p = Image.fromarray(mask, "P")
        p.putpalette(palette)
        Image.fromarray(img, "RGB").save(root / "images" / f"2007_{i:06d}.jpg", quality=90)
        p.save(root / "masks" / f"2007_{i:06d}.png")
    return Corpus(root, mask_values=(0, *range(1, VOC_CLASSES + 1), VOC_VOID), channels=3, n=n)


XRAY_CLASSES = ["normal", "pneumonia"]


def xray16(root: Path, suffix: str = ".png", top: int = 4095, n: int = 6, size: int = 24) -> Corpus:
    """Chest X-rays as 16-bit gray files (12-bit values 0..4095 in PNG, or the full 0..65535 in TIFF),
    with no masks and a labels.csv (stem,class) naming the class."""
    rng = _rng(top)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        lungs = _blob(size, size, rng, 0.4)
        img = _picture(lungs.astype(np.uint8), rng, float(top))
        img[0, 0], img[-1, -1] = 0, top  # the full range of the detector is used
        stem = f"person{i}_{'virus' if i % 2 else 'normal'}"
        Image.fromarray(np.round(img).astype(np.uint16)).save(root / "images" / f"{stem}{suffix}")
        rows.append((stem, XRAY_CLASSES[i % 2]))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("stem", "class"), *rows])
    return Corpus(root, class_names=list(XRAY_CLASSES), bits=16, value_range=(0.0, float(top)), n=n)


# ---------------------------------------------------------------- MedMNIST


MEDMNIST_CLASSES = 3


def medmnist(path: Path, kind: str = "gray", n: int = 12) -> Corpus:
    """A MedMNIST v2 .npz: train/val/test images and (N, 1) uint8 labels. kind: "gray" (N,28,28),
    "rgb" (N,28,28,3) or "3d" (N,28,28,28), all uint8."""
    rng = _rng({"gray": 11, "rgb": 12, "3d": 13}[kind])
    arrays = {}
    for split, count in (("train", n), ("val", 4), ("test", 5)):
        labels = (np.arange(count) % MEDMNIST_CLASSES).astype(np.uint8)[:, None]
        if kind == "3d":
            zz, yy, xx = np.mgrid[0:28, 0:28, 0:28]
            r = np.sqrt((zz - 14) ** 2 + (yy - 14) ** 2 + (xx - 14) ** 2)
            images = np.stack([(r < 6 + 2 * k) * 180 + rng.integers(0, 40, r.shape) for k in labels[:, 0]])
        else:
            images = np.stack([_picture(_blob(28, 28, rng, 0.2 + 0.1 * k).astype(np.uint8), rng, 255.0,
                                        3 if kind == "rgb" else 1) for k in labels[:, 0]])
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return Corpus(path, class_names=[str(k) for k in range(MEDMNIST_CLASSES)], channels=3 if kind == "rgb" else 1,
                  n=n)


# ---------------------------------------------------------------- volumes in a world frame


def rotation(degrees_z: float = 0.0, degrees_x: float = 0.0) -> np.ndarray:
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


# An anatomy fixed in the world (RAS mm): a body ellipsoid and, right-anterior-superior of its centre,
# a lesion; a second, smaller label inside the lesion.
BODY_CENTRE = np.array([5.0, -10.0, 20.0])
BODY_RADII = np.array([30.0, 24.0, 18.0])
LESION_OFFSET = np.array([10.0, 8.0, 6.0])  # +R +A +S
LESION_RADIUS = 7.0
CORE_RADIUS = 3.5


def world_phantom(affine: np.ndarray, shape: tuple[int, int, int], top: float = 1000.0,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The world anatomy sampled on a voxel grid: image (body top/2, lesion top, core 0.8 top) and label map
    (1 lesion, 2 core), both in the grid's own voxel order."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = nib.affines.apply_affine(affine, ijk).reshape(*shape, 3)
    body = (((xyz - BODY_CENTRE) / BODY_RADII) ** 2).sum(-1) <= 1.0
    d = np.linalg.norm(xyz - (BODY_CENTRE + LESION_OFFSET), axis=-1)
    label = np.zeros(shape, np.uint8)
    label[d <= LESION_RADIUS] = 1
    label[d <= CORE_RADIUS] = 2
    image = np.where(body, 0.5 * top, 0.02 * top)
    image = np.where(label == 1, top, image)
    image = np.where(label == 2, 0.8 * top, image)
    image = np.clip(image + _rng(int(shape[0])).normal(0, 0.01 * top, shape), 0.0, top)
    return image.astype(np.float32), label


def grid_affine(axes: str, zooms: tuple[float, float, float], rot: np.ndarray | None = None,
                shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Voxel → RAS affine whose voxel axes point along `axes` (e.g. "LPS", "PIR") with the given voxel sizes,
    optionally rotated, and placed so that the grid's centre is the body's centre."""
    direction = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    m = np.zeros((3, 3))
    for k, letter in enumerate(axes):
        axis, sign = direction[letter]
        m[axis, k] = sign * zooms[k]
    if rot is not None:
        m = rot @ m
    affine = np.eye(4)
    affine[:3, :3] = m
    centre = (np.array(shape) - 1) / 2.0 if shape is not None else np.zeros(3)
    affine[:3, 3] = BODY_CENTRE - m @ centre
    return affine


def fov_shape(zooms: tuple[float, float, float], extent_mm: float = 80.0) -> tuple[int, int, int]:
    return tuple(int(np.ceil(extent_mm / z)) for z in zooms)


def nifti_geometry(root: Path) -> Corpus:
    """NIfTI files of one anatomy on three grids, each with a `_seg` partner: LPS voxel order, anisotropic
    0.9 x 0.9 x 3 mm and rotated 15 degrees about the feet-head axis (an oblique axial acquisition);
    PIR order with 3 mm sagittal slices (0.9 x 0.9 in plane); and plain RAS at 1.5 mm."""
    root.mkdir(parents=True)
    grids = {
        "oblique_lps": ("LPS", (0.9, 0.9, 3.0), rotation(15.0)),
        "sagittal_pir": ("PIR", (0.9, 0.9, 3.0), None),
        "plain_ras": ("RAS", (1.5, 1.5, 1.5), None),
    }
    for name, (axes, zooms, rot) in grids.items():
        shape = fov_shape(zooms)
        affine = grid_affine(axes, zooms, rot, shape)
        image, label = world_phantom(affine, shape)
        nib.save(nib.Nifti1Image(image, affine), root / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / f"{name}_seg.nii.gz")
    return Corpus(root, mask_values=(0, 1, 2), bits=32, value_range=(0.0, 1000.0), n=len(grids))


def nifti_pir_file(root: Path) -> Corpus:
    """One sagittal PIR volume (0.9 x 0.9 mm in plane, 3 mm slices) with its `_seg` partner: read as 2D axial
    slices, its pixels are 3 mm wide (R-L) and 0.9 mm tall (A-P), so their order cannot be confused."""
    root.mkdir(parents=True)
    zooms = (0.9, 0.9, 3.0)
    shape = fov_shape(zooms, 70.0)
    affine = grid_affine("PIR", zooms, None, shape)
    image, label = world_phantom(affine, shape)
    nib.save(nib.Nifti1Image(image, affine), root / "sag.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "sag_seg.nii.gz")
    return Corpus(root / "sag.nii.gz", mask_values=(0, 1, 2), bits=32, value_range=(0.0, 1000.0))


# ---------------------------------------------------------------- MSD / nnU-Net raw

BRATS_LABELS = {0: "background", 1: "edema", 2: "tumour"}


def msd_folder(root: Path, dialect: str, n: int = 3) -> Corpus:
    """A raw segmentation folder with two MR channels per case (`case_0000` T1, `case_0001` T2 in imagesTr/),
    labels in labelsTr/ (`case.nii.gz`), and dataset.json in the MSD dialect ("modality" {"0": "T1"}, labels
    {"0": "background"}) or the nnU-Net v2 one ("channel_names", labels {"background": 0}, "file_ending")."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    zooms = (1.2, 1.2, 2.5)
    shape = fov_shape(zooms, 72.0)
    for i in range(n):
        affine = grid_affine("RAS", zooms, None, shape)
        affine[:3, 3] += i * 1.5  # cases do not share a position
        t1, label = world_phantom(affine, shape, 800.0)
        t2 = np.where(label > 0, 300.0, t1 * 1.4).astype(np.float32)
        case = f"BRATS_{i + 1:03d}"
        nib.save(nib.Nifti1Image(t1, affine), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(t2, affine), root / "imagesTr" / f"{case}_0001.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
    if dialect == "msd":
        meta = {"name": "BRATS", "tensorImageSize": "4D", "modality": {"0": "T1", "1": "T2"},
                "labels": {str(k): v for k, v in BRATS_LABELS.items()}, "numTraining": n, "numTest": 0,
                "training": [{"image": f"./imagesTr/BRATS_{i + 1:03d}.nii.gz",
                              "label": f"./labelsTr/BRATS_{i + 1:03d}.nii.gz"} for i in range(n)], "test": []}
    else:
        meta = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {v: k for k, v in BRATS_LABELS.items()},
                "numTraining": n, "file_ending": ".nii.gz", "name": "Dataset042_BraTS"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return Corpus(root, mask_values=(0, 1, 2), label_names=dict(BRATS_LABELS), bits=32, value_range=(0.0, 800.0),
                  n=n)


# ---------------------------------------------------------------- DICOM

DICOM_ZOOMS = (0.8, 0.7, 2.5)  # column spacing (x), row spacing (y), slice gap
DICOM_ORIGIN = np.array([-30.0, -25.0, -15.0])  # LPS mm of the first voxel
DICOM_INTERCEPT = -1024.0


def dicom_orientation() -> np.ndarray:
    """Row, column and normal directions (LPS) of an oblique plane: axial turned 15 degrees about the
    feet-head axis and tilted 10 degrees, as gantry-tilted or planned oblique scans are."""
    return rotation(15.0, 10.0)


def dicom_series(folder: Path, shape: tuple[int, int, int] = (28, 32, 10)) -> tuple[Corpus, np.ndarray]:
    """A CT series of unsigned 12-bit stored values (0..4095) with RescaleSlope 1 and RescaleIntercept -1024,
    so stored + intercept is HU (-1024 air .. 3071), on an oblique plane; files named at random. Returns the
    corpus and the volume in HU, indexed (column, row, slice)."""
    import pydicom  # noqa: F401  (the engine's DICOM reader needs it too)
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    nx, ny, nz = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    hu = np.full(shape, -1024.0, np.float32)
    for k in range(nz):
        body = ((xx - nx / 2) / (0.42 * nx)) ** 2 + ((yy - ny / 2) / (0.38 * ny)) ** 2 <= 1.0
        bone = ((xx - nx / 2) / 3.0) ** 2 + ((yy - 0.7 * ny) / 2.5) ** 2 <= 1.0
        plane = np.where(body, 40.0, -1024.0) + np.where(bone, 900.0, 0.0)
        hu[:, :, k] = plane.T
    hu[0, 0, 0] = 3071.0  # the top of the 12-bit range
    rot = dicom_orientation()
    row_dir, col_dir, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    uid = generate_uid()
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.PatientName, ds.PatientID = "Doe^Jane", "MRN-0042"
        ds.Modality, ds.SeriesInstanceUID = "CT", uid
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.InstanceNumber = nz - k
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [DICOM_ZOOMS[1], DICOM_ZOOMS[0]]  # row spacing, column spacing
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in DICOM_ORIGIN + k * DICOM_ZOOMS[2] * normal]
        ds.SliceThickness = DICOM_ZOOMS[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, DICOM_INTERCEPT, "HU"
        ds.PixelData = np.ascontiguousarray((hu[:, :, k].T - DICOM_INTERCEPT).astype(np.uint16)).tobytes()
        ds.save_as(folder / f"{uuid.uuid4().hex[:12]}.dcm", enforce_file_format=True)
    return Corpus(folder, bits=12, value_range=(-1024.0, 3071.0), n=1), hu


# ---------------------------------------------------------------- the user's walk: info, train, sample, export

TINY_2D = ("[model]\nimage_size = 16\nblock_out_channels = [16, 32]\nattention_levels = [false, true]\n"
           "[train]\nbatch = 4\nlog_every = 1\ncheckpoint_every = 1000\nwarmup_steps = 1\n")
# demo-3d with the widths of tests/test_volume_workflow.py, at 16^3 (--size 16).
TINY_3D = ("[model]\nblock_out_channels = [8, 16]\nattention_levels = [false, true]\nattention_head_dim = 8\n"
           "[train]\nlog_every = 1\ncheckpoint_every = 1000\nwarmup_steps = 1\n")


def cli(*args: object) -> tuple[int, str]:
    """`medsynth ARGS` run in this process (the engine imported once for the whole corpus, where a process per
    command would spend seconds importing torch each time): exit code and everything it printed."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from medsynth.cli import main

    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


@dataclass
class Walk:
    """What `medsynth info / train / sample / export` made of one corpus, step by step."""

    corpus: Corpus
    root: Path
    kind: str = ""
    steps: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def synth(self) -> Path:
        return self.root / "synth.h5"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def output(self, step: str) -> str:
        """The step's printed output; fails the test with that output when the step (or one before it) failed."""
        assert step in self.steps, f"not reached: an earlier step failed: {self.steps}"
        code, text = self.steps[step]
        assert code == 0, f"medsynth {step} exited {code}:\n{text}"
        return text

    def config(self) -> dict:
        self.output("train")
        return json.loads((self.run / "config.json").read_text())

    def facts(self) -> dict:
        self.output("train")
        return json.loads((self.run / "run.json").read_text())

    def attrs(self) -> dict:
        from engine.io.medsynth_h5 import attrs_dict, open_file

        self.output("sample")
        with open_file(self.synth) as f:
            return attrs_dict(f)

    def arrays(self) -> dict[str, np.ndarray]:
        import h5py

        self.output("sample")
        with h5py.File(self.synth, "r", locking=False) as f:
            return {k: f[k][:] for k in ("images", "masks", "labels") if k in f}


def walk(kind: str, root: Path, corpus: Corpus, fmt: str, toml: str, *train_args: str, n: int = 3) -> Walk:
    """info → train (2 steps) → sample (n, 2 sampler steps) → export as `fmt`, as a user would type them.
    A failing step is recorded, not raised, so that each test reports the step it needs."""
    w = Walk(corpus, root, kind)
    config = root / "tiny.toml"
    config.write_text(toml)
    commands = {
        "info": ("info", corpus.path),
        "train": ("train", corpus.path, "--out", w.run, "--config", config, "--steps", "2", "--device", "cpu",
                  *train_args),
        "sample": ("sample", w.run, "--n", n, "--steps", "2", "--batch", n, "--device", "cpu", "--out", w.synth),
        "export": ("export", w.synth, "--to", w.export, "--format", fmt),
    }
    for name, args in commands.items():
        w.steps[name] = cli(*args)
        if w.steps[name][0] != 0 and name != "info":
            break
    return w


# ---------------------------------------------------------------- nnU-Net v2's dataset rules

NNUNET_DATASET = "Dataset501_MedSynth"  # what `export --format nnunet --to PARENT` makes inside PARENT by default


def nnunet_problems(folder: Path) -> list[str]:
    """What nnU-Net v2 would refuse in a raw dataset folder, by its documented rules (documentation/
    dataset_format.md and verify_dataset_integrity): the folder is named DatasetXXX_Name; dataset.json has
    channel_names, labels, numTraining and file_ending; labels map "background" to 0 and the others to
    consecutive integers; every case in labelsTr has one image per channel, CASE_XXXX + file_ending, in
    imagesTr and nothing else is there; numTraining counts the cases; label files hold only declared values;
    image and label of a case share shape and geometry. Returns the broken rules (empty: none)."""
    import re

    problems = []
    if not re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_\-]+", folder.name):
        problems.append(f"folder name {folder.name!r} is not DatasetXXX_Name")
    meta = json.loads((folder / "dataset.json").read_text())
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in meta:
            problems.append(f"dataset.json lacks {key}")
    if problems:
        return problems
    labels = meta["labels"]
    if labels.get("background") != 0:
        problems.append(f"labels['background'] is {labels.get('background')!r}, not 0")
    values = sorted(v for v in labels.values() if isinstance(v, int))
    if values != list(range(len(values))):
        problems.append(f"label values {values} are not consecutive from 0")
    ending, channels = meta["file_ending"], len(meta["channel_names"])
    cases = sorted(p.name[: -len(ending)] for p in (folder / "labelsTr").iterdir() if p.name.endswith(ending))
    expected = {f"{c}_{k:04d}{ending}" for c in cases for k in range(channels)}
    found = {p.name for p in (folder / "imagesTr").iterdir()}
    if found != expected:
        problems.append(f"imagesTr holds {sorted(found ^ expected)} beyond or short of one file per channel")
    if meta["numTraining"] != len(cases):
        problems.append(f"numTraining {meta['numTraining']} but {len(cases)} cases")
    for case in cases:
        lab = nib.load(str(folder / "labelsTr" / f"{case}{ending}"))
        extra = set(np.unique(np.asarray(lab.dataobj)).astype(int).tolist()) - set(values)
        if extra:
            problems.append(f"{case}: label values {sorted(extra)} not declared")
        for k in range(channels):
            img_path = folder / "imagesTr" / f"{case}_{k:04d}{ending}"
            if not img_path.is_file():
                continue
            img = nib.load(str(img_path))
            if img.shape != lab.shape or not np.allclose(img.affine, lab.affine, atol=1e-4):
                problems.append(f"{case}: image {k} and label differ in shape or geometry")
    return problems


def exported_nnunet_dataset(walked: Walk) -> tuple[Path, dict]:
    """Export a walked source in nnU-Net's raw layout: the dataset folder, checked against nnU-Net v2's rules,
    and its dataset.json."""
    walked.output("export")
    dataset = walked.export / NNUNET_DATASET
    assert dataset.is_dir(), sorted(p.name for p in walked.export.iterdir())
    assert nnunet_problems(dataset) == []
    return dataset, json.loads((dataset / "dataset.json").read_text())
