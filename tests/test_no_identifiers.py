"""No input path or identifier reaches an output.

Inputs are made carrying distinctive markers where a hospital's files carry identifiers: the data folder's path
(a patient's name and record number), DICOM patient / study / institution tags and dates, NIfTI header text,
picture file names and text chunks, dataset.json's free text, a MedSynth file's provenance and image names. The
whole chain then runs on them (train → sample → export → evaluate → reader study → info) and every byte of every
file written, and everything printed, is searched for each marker.

Two places name an input by design, because finding it again is their job: a run folder's own config.json (which
--resume reads) and a reader study's answer key (which the organiser keeps, outside the study folder). They may
hold the input's path and nothing else. `data.record_full_path` (--record-full-path) is the user's opt-in to the
path everywhere; it never lets a DICOM identifier through.

Outputs do name the data folder itself by its base name beside a hash of its path (README, "Training"), so the
patient's name here lies in the folder above the data, and in the names and files below it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.io.medsynth_writer import write_image_set  # noqa: E402
from medsynth.cli import main  # noqa: E402
from tests.test_dicom import write_series  # noqa: E402

PATH_MARK = "Doe_Jane_MRN12345"  # the folder the data lies in
# Each identifier a DICOM file carries, set to a value found nowhere else.
DICOM_TAGS = {
    "PatientName": "Quxwell^Henrietta", "PatientID": "PID7731904", "PatientBirthDate": "19010203",
    "StudyInstanceUID": "1.2.826.0.1.3680043.9.77312.4242", "StudyID": "STY55821", "StudyDate": "19230405",
    "SeriesDate": "19230406", "AcquisitionDate": "19230407", "AccessionNumber": "ACC90817",
    "InstitutionName": "Saint Zorblax Clinic", "InstitutionAddress": "17 Vellumcourt Road",
    "ReferringPhysicianName": "Plimsoll^Ottoline", "StationName": "STN_KORRIGAN", "SeriesDescription": "SERDESC_Yb4",
    "StudyDescription": "STUDYDESC_Wq9", "OperatorsName": "Grumwald^Ines", "DeviceSerialNumber": "SN66120934",
}
# A person's name is also searched for by its parts: "Quxwell Henrietta" would leak it too.
DICOM_MARKS = DICOM_TAGS | {"PatientName family": "Quxwell", "PatientName given": "Henrietta",
                            "ReferringPhysicianName family": "Plimsoll", "OperatorsName family": "Grumwald",
                            "series folder name": "Brightwater_Ada_CT"}  # PACS exports name folders by patient
NIFTI_MARKS = {"descrip": "NIIDESC_Kv31", "aux_file": "AUXF_Rm8", "intent_name": "INTN_Zp5",
               "case file name": "Hoskins_Bea_0071", "dataset.json name": "DSNAME_Lu2",
               "dataset.json description": "DSDESC_Tj6", "dataset.json reference": "DSREF_Nc3"}
PICTURE_MARKS = {"picture file name": "Pemberton_Ray_0042", "PNG text chunk": "PNGTXT_Fa7"}
H5_MARKS = {"HDF5 config path": "H5CFG_Ow5", "HDF5 image name": "H5NAME_Ge1", "HDF5 checkpoint": "H5CKPT_Ve0"}


def _forms(mark: str) -> list[bytes]:
    """How a marker would look written out: UTF-8 and UTF-16 (either byte order), in any case."""
    return [m.encode(enc) for m in {mark, mark.lower(), mark.upper()} for enc in ("utf-8", "utf-16-le", "utf-16-be")]


def _texts(path: Path) -> list[bytes]:
    """Every byte of a file, and what its compression or HDF5 chunks would hide from a plain search."""
    raw = path.read_bytes()
    parts = [raw]
    if raw[:2] == b"\x1f\x8b":
        parts.append(gzip.decompress(raw))
    if raw[:8] == b"\x89HDF\r\n\x1a\n":
        parts.append(_h5_text(path).encode("utf-8"))
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        from PIL import Image

        with Image.open(path) as im:
            parts.append(repr(im.info).encode("utf-8"))
    return parts


def _h5_text(path: Path) -> str:
    """Every attribute of every object in an HDF5 file, and every string dataset, read through h5py."""
    out: list[str] = []

    def visit(name: str, obj: object) -> None:
        out.extend(f"{name}@{k}={v!r}" for k, v in obj.attrs.items())
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "OSU":
            out.append(repr(obj[()].tolist()))

    with h5py.File(path, "r", locking=False) as f:
        visit("/", f)
        f.visititems(visit)
    return "\n".join(out)


def _leaks(root: Path, printed: str, marks: dict[str, str], allowed: dict[Path, set[str]] | None = None
           ) -> list[str]:
    """`file: what` for every marker found in a file under `root` (its name included) or in what was printed;
    `allowed` names the files that may hold some of them."""
    allowed = allowed or {}
    found = []
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        parts = [name.encode()] + (_texts(path) if path.is_file() else [])
        found += [f"{name}: {what} ({mark})" for what, mark in marks.items()
                  if what not in allowed.get(path, set()) and any(f in part for f in _forms(mark) for part in parts)]
    found += [f"printed: {what} ({mark})" for what, mark in marks.items()
              if any(form in printed.encode() for form in _forms(mark))]
    return found


# ---------------------------------------------------------------- inputs carrying identifiers


def dicom_folder(root: Path) -> Path:
    """Eight CT series, each in its own folder, every slice carrying DICOM_TAGS."""
    vols = make_phantoms(8, size=24, dims=3, seed=3).images[:, 0]
    for i, v in enumerate(vols):
        series = root / f"{DICOM_MARKS['series folder name']}_{i}"
        write_series(series, np.round(v * 2 - 1000).astype(np.float32)[:, :20, :12])
        for f in series.iterdir():
            ds = pydicom.dcmread(f)
            for tag, value in DICOM_TAGS.items():
                setattr(ds, tag, value)
            ds.save_as(f, enforce_file_format=True)
    return root


def nifti_folder(root: Path) -> Path:
    """A Medical Segmentation Decathlon folder whose headers, file names and dataset.json carry text."""
    s = make_phantoms(3, size=16, dims=3, seed=7)
    for i in range(len(s)):
        case = f"{NIFTI_MARKS['case file name']}_{i}"
        for sub, array in (("imagesTr", s.images[i, 0].astype(np.float32)), ("labelsTr", s.masks[i].astype(np.uint8))):
            img = nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]))
            img.header["descrip"] = NIFTI_MARKS["descrip"].encode()
            img.header["aux_file"] = NIFTI_MARKS["aux_file"].encode()
            img.header["intent_name"] = NIFTI_MARKS["intent_name"].encode()
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(img, root / sub / f"{case}.nii.gz")
    meta = {"name": NIFTI_MARKS["dataset.json name"], "description": NIFTI_MARKS["dataset.json description"],
            "reference": NIFTI_MARKS["dataset.json reference"], "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "lesion", "2": "organ"}, "numTraining": len(s)}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def picture_folder(root: Path) -> Path:
    """images/ + masks/ (Kvasir-SEG's layout) named after a patient, each PNG with a text chunk."""
    from PIL import Image, PngImagePlugin

    s = make_phantoms(8, size=16, seed=11)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", PICTURE_MARKS["PNG text chunk"])
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(len(s)):
        name = f"{PICTURE_MARKS['picture file name']}_{i}.png"
        image = np.clip(s.images[i, 0] * 255 / max(float(s.images.max()), 1e-6), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / name, pnginfo=info)
        Image.fromarray((s.masks[i] > 0).astype(np.uint8) * 255).save(root / "masks" / name, pnginfo=info)
    return root


def real_h5(path: Path) -> Path:
    """Real 2D data as a MedSynth file whose provenance, image names and checkpoint field carry text."""
    s = make_phantoms(8, size=16, seed=21)
    s.names = [f"{H5_MARKS['HDF5 image name']} · z {i}" for i in range(len(s))]
    write_image_set(path, s)
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = json.dumps({"data": {"path": f"/data/{H5_MARKS['HDF5 config path']}/scans"}})
        f.attrs["checkpoint_sha256"] = H5_MARKS["HDF5 checkpoint"]
    return path


# ---------------------------------------------------------------- the chain


def _cli(capsys: pytest.CaptureFixture, *argv: str | Path) -> str:
    """One `medsynth` command in this process; what it printed (both streams)."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out + out.err


TINY = ("[model]\nblock_out_channels = [8, 16]\nattention_levels = [false, true]\nattention_head_dim = 8\n"
        "[train]\nlog_every = 1\ncheckpoint_every = 2\nbatch = 4\n")


MARKS = {"data path": PATH_MARK} | DICOM_MARKS | NIFTI_MARKS | PICTURE_MARKS | H5_MARKS


def _inputs(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """The NIfTI, DICOM and picture folders and the MedSynth file, in a folder named after a patient; the search
    finds every marker in them (so finding none in an output means something)."""
    private = tmp_path / PATH_MARK  # where the hospital keeps the data: its name is the leak
    made = (nifti_folder(private / "msd"), dicom_folder(private / "dicom"), picture_folder(private / "pictures"),
            real_h5(private / "real.h5"))
    seen = {line.split(": ", 1)[1].split(" (")[0] for line in _leaks(tmp_path, "", MARKS)}
    assert seen == set(MARKS)
    return made


def _workspace(tmp_path: Path, capsys):
    """The output folder, the tiny model's TOML in it, and a runner of the CLI that keeps what each run printed."""
    out = tmp_path / "out"
    out.mkdir()
    toml = out / "tiny.toml"
    toml.write_text(TINY)
    printed: list = []

    def run(*argv) -> None:
        printed.append(_cli(capsys, *argv))

    return out, toml, printed, run


def test_no_input_path_or_identifier_reaches_an_output(tmp_path, capsys, recwarn):
    msd, dicom, pictures, real = _inputs(tmp_path)
    out, toml, printed, run = _workspace(tmp_path, capsys)

    # 2D: a NIfTI folder read as slices, the full chain.
    run("train", msd, "--preset", "demo", "--config", toml, "--size", "16", "--steps", "3", "--out", out / "run2d")
    run("sample", out / "run2d", "--n", "4", "--steps", "2", "--out", out / "synth2d.h5")
    run("export", out / "synth2d.h5", "--to", out / "png", "--format", "png")
    run("export", out / "synth2d.h5", "--to", out / "nii", "--format", "nifti")
    run("export", out / "synth2d.h5", "--to", out / "nnunet", "--format", "nnunet")
    run("export", out / "synth2d.h5", "--to", out / "kept", "--format", "png", "--max-corr", "0.99",
        "--train-data", msd)
    run("evaluate", out / "synth2d.h5", "--real", real, "--train-data", msd, "--no-utility")
    run("reader-study", "create", real, out / "synth2d.h5", "--out", out / "study", "--n-real", "2",
        "--n-synth", "2")
    run("export", real, "--to", out / "real_nnunet", "--format", "nnunet")  # real images carry names
    # A mask-conditioned model draws its masks from the training data when it samples.
    run("train", msd, "--preset", "demo", "--config", toml, "--size", "16", "--steps", "2", "--mask-mode",
        "condition", "--out", out / "run_condition")
    run("sample", out / "run_condition", "--n", "2", "--steps", "2", "--out", out / "synth_condition.h5")
    # Pictures named after a patient.
    run("train", pictures, "--preset", "demo", "--config", toml, "--size", "16", "--steps", "2", "--out",
        out / "run_pictures")
    run("sample", out / "run_pictures", "--n", "2", "--steps", "2", "--out", out / "synth_pictures.h5")
    # A MedSynth file carrying another run's provenance and its images' names.
    run("train", real, "--preset", "demo", "--config", toml, "--size", "16", "--steps", "2", "--out", out / "run_h5")
    # 3D: DICOM series.
    run("train", dicom, "--preset", "demo-3d", "--config", toml, "--size", "16", "--steps", "2", "--out",
        out / "run3d")
    run("sample", out / "run3d", "--n", "2", "--steps", "2", "--out", out / "synth3d.h5")
    run("export", out / "synth3d.h5", "--to", out / "nii3d", "--format", "nifti")
    for made in ("run2d", "synth2d.h5", "run_condition", "synth_condition.h5", "run_pictures", "synth_pictures.h5",
                 "run_h5", "run3d", "synth3d.h5"):
        run("info", out / made)

    printed += [str(w.message) for w in recwarn]
    runs = {"run2d": msd, "run_condition": msd, "run_pictures": pictures, "run_h5": real, "run3d": dicom}
    key = out / "study.key.json"
    allowed = {out / r / "config.json": {"data path"} for r in runs} | {key: {"data path"}}
    assert _leaks(out, "\n".join(printed), MARKS, allowed) == []
    # Those two hold the path only where finding the input again needs it: the run's data, the study's sources.
    for r, data in runs.items():
        config = json.loads((out / r / "config.json").read_text())
        assert Path(config["data"]["path"]).resolve() == data.resolve()
        config["data"]["path"] = ""
        assert PATH_MARK not in json.dumps(config)
    doc = json.loads(key.read_text())
    assert Path(doc["sources"]["real"]["path"]) == real.resolve()
    for source in doc["sources"].values():
        source["path"] = source["relative"] = ""
    assert PATH_MARK not in json.dumps(doc)


def test_record_full_path_records_the_path_and_never_an_identifier(tmp_path, capsys, recwarn):
    msd, dicom, _, _ = _inputs(tmp_path)
    out, toml, printed, run = _workspace(tmp_path, capsys)

    run("train", dicom, "--preset", "demo-3d", "--config", toml, "--size", "16", "--steps", "2", "--out",
        out / "run3d", "--record-full-path")
    run("sample", out / "run3d", "--n", "2", "--steps", "2", "--out", out / "synth3d.h5")
    run("export", out / "synth3d.h5", "--to", out / "nii3d", "--format", "nifti")
    run("evaluate", out / "synth3d.h5", "--train-data", dicom, "--no-utility")
    run("info", out / "run3d")
    run("info", out / "synth3d.h5")
    printed += [str(w.message) for w in recwarn]

    # The user asked for the path: it is where they asked for it.
    with h5py.File(out / "synth3d.h5", "r", locking=False) as f:
        assert json.loads(f.attrs["config"])["data"]["path"] == str(dicom)
    assert str(dicom) in json.loads((out / "run3d" / "run.json").read_text())["data_source"]
    # Nothing else: no DICOM tag, no other input's text.
    assert _leaks(out, "\n".join(printed), {k: v for k, v in MARKS.items() if k != "data path"}) == []
