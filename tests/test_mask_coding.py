"""Real mask conventions end to end: grey-level, palette and JPEG masks, 2D pixel spacing, nnU-Net naming.

Public 2D segmentation sets store labels as grey levels ({0, 127, 254}, {0, 85, 170, 255}), as VOC
palette indices with a 255 "void" border, or as lossy 0/255 JPEGs (Kvasir-SEG). Each must become a
few consecutive labels, train a model of the right size, and come back out in the user's coding.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from engine.export import export
from engine.info import describe
from engine.io.medsynth_h5 import read_image_set
from engine.io.medsynth_writer import SampleWriter, write_image_set
from engine.io.sources.nifti import read_nifti
from engine.io.sources.pictures import read_folder_pairs
from engine.jobs import DataSummary, Progress, Requests
from medsynth.cli import main
from tests.conftest import tiny_config

GREY_2 = (127, 254)
GREY_3 = (85, 170, 255)


# ---------------------------------------------------------------- data in public conventions


def _save(path: Path, array: np.ndarray, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def grey_level_set(root: Path, codes: tuple[int, ...], n: int = 12, size: int = 24) -> Path:
    """A Kvasir-like images/ + masks/ folder whose masks hold the labels as grey levels. Each file
    holds only some of the codes, so one file alone would code them differently from the set."""
    rng = np.random.default_rng(len(codes))
    for i in range(n):
        image = rng.normal(60, 8, (size, size))
        mask = np.zeros((size, size), np.uint8)
        for k, code in enumerate(codes):
            if (i + k) % 3 == 2:
                continue  # this label is absent from this file
            r, c = 2 + 7 * k, 2 + (i % 5)
            mask[r:r + 6, c:c + 8] = code
            image[r:r + 6, c:c + 8] += 60 + 40 * k
        _save(root / "images" / f"case{i:02d}.png", np.clip(image, 0, 255).astype(np.uint8))
        _save(root / "masks" / f"case{i:02d}.png", mask)
    return root


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved class index), 256 RGB entries."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def palette_mask(path: Path, index: int, box: tuple[int, int, int, int], size: int = 20, border: int = 2) -> None:
    """A VOC-style mask: mode "P", the object's class index inside, a 255 void band over its outline."""
    r0, r1, c0, c1 = box
    idx = np.zeros((size, size), np.uint8)
    idx[r0 - border:r1 + border, c0 - border:c1 + border] = 255
    idx[r0 + border:r1 - border, c0 + border:c1 - border] = index
    img = Image.frombytes("P", (size, size), idx.tobytes())
    img.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("codes", [GREY_2, GREY_3], ids=["0-127-254", "0-85-170-255"])
def test_grey_level_masks_become_consecutive_labels_over_the_whole_set(tmp_path, codes):
    root = grey_level_set(tmp_path / "brain", codes)
    s = read_folder_pairs(root)
    k = len(codes)
    assert s.num_mask_labels == k + 1  # not 255 + 1
    assert s.mask_coding == {i + 1: c for i, c in enumerate(codes)}
    assert s.label_names == {0: "background", **{i + 1: f"label {i + 1} (grey {c})" for i, c in enumerate(codes)}}
    # The same grey value is the same label in every file, whichever other values a file holds.
    for i in range(len(s)):
        raw = np.asarray(Image.open(root / "masks" / f"case{i:02d}.png"))
        for label, code in s.mask_coding.items():
            np.testing.assert_array_equal(s.masks[i] == label, raw == code)
    # Through the HDF5 file and back: the coding is a root attribute.
    h5 = write_image_set(tmp_path / "real.h5", s)
    with h5py.File(h5) as f:
        assert json.loads(f.attrs["mask_coding"]) == {str(i + 1): c for i, c in enumerate(codes)}
    assert read_image_set(h5).mask_coding == s.mask_coding
    pairs = ", ".join(f"{i + 1} → {c}" for i, c in enumerate(codes))
    assert f"  mask coding (label → value in the user's files): {pairs}" in describe(h5).splitlines()


def test_palette_masks_keep_indices_and_the_voc_void_border_goes_to_its_nearest_label(tmp_path):
    root = tmp_path / "voc"
    rng = np.random.default_rng(0)
    for stem, index, box in (("a", 15, (4, 14, 4, 14)), ("b", 1, (6, 16, 2, 12))):
        _save(root / "images" / f"{stem}.jpg", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
        palette_mask(root / "masks" / f"{stem}.png", index, box)
    s = read_folder_pairs(root)
    # Indices 1 (aeroplane) and 15 (person); 255 is no label.
    assert s.mask_coding == {1: 1, 2: 15} and s.num_mask_labels == 3
    assert s.label_names[2] == "label 2 (index 15)"
    person = s.masks[0] == 2
    inner = np.zeros_like(person)
    inner[6:12, 6:12] = True  # the class-15 core
    outer = np.zeros_like(person)
    outer[2:16, 2:16] = True  # the core plus the whole void band
    # The band is split between the object and the background, neither all one nor all the other.
    assert person[inner].all() and not person[~outer].any()
    assert inner.sum() < person.sum() < outer.sum()
    assert set(np.unique(s.masks[0]).tolist()) == {0, 2}


def test_kvasir_jpeg_masks_of_varying_size_stay_binary(tmp_path):
    root = tmp_path / "kvasir"
    rng = np.random.default_rng(2)
    for stem, (h, w) in {"cju0": (30, 36), "cju1": (30, 36), "cju2": (40, 32)}.items():
        _save(root / "images" / f"{stem}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), quality=75)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: h // 2, w // 4: w // 2] = 255
        _save(root / "masks" / f"{stem}.jpg", mask, quality=75)  # lossy: stray greys near the edges
    s = read_folder_pairs(root)
    assert s.masks.shape == (3, 30, 36) and set(np.unique(s.masks).tolist()) == {0, 1}
    assert s.mask_coding == {1: 255} and s.num_mask_labels == 2


# ---------------------------------------------------------------- train → sample → export


def test_grey_level_pairs_train_a_model_of_their_label_count_and_export_in_their_coding(tmp_path):
    from engine.inference.sample import SampleJob
    from engine.models.networks import build_model, count_parameters
    from engine.training.train import TrainJob

    data = read_folder_pairs(grey_level_set(tmp_path / "brain", GREY_2))
    cfg = tiny_config(steps=3)
    events: list = []
    run = tmp_path / "run"
    TrainJob(cfg, run, data=data).run(events.append, Requests())
    saved = json.loads((run / "config.json").read_text())
    assert saved["facts"]["mask_labels"] == 3 and saved["facts"]["in_channels"] == 1 + 2
    summary = [i for i, ev in enumerate(events) if isinstance(ev, DataSummary)]
    first_step = next(i for i, ev in enumerate(events) if isinstance(ev, Progress) and ev.stage == "train")
    assert len(summary) == 1 and summary[0] < first_step  # said before the first step
    params = count_parameters(build_model(cfg))
    assert events[summary[0]].text == (f"2 mask labels: 127 → 1, 254 → 2; model {params / 1e6:.2f} M parameters, "
                                       "3 input channels")
    assert json.loads((run / "run.json").read_text())["mask_coding"] == {"1": 127, "2": 254}

    synth = tmp_path / "synth.h5"
    SampleJob(run, 4, synth, steps=2).run(lambda ev: None, Requests())
    with h5py.File(synth) as f:
        assert json.loads(f.attrs["mask_coding"]) == {"1": 127, "2": 254}
        assert set(np.unique(f["masks"][:]).tolist()) <= {0, 1, 2}
        assert json.loads(f.attrs["label_names"])["2"] == "label 2 (grey 254)"
    export(synth, tmp_path / "png", "png")
    for p in (tmp_path / "png" / "masks").glob("*.png"):
        assert set(np.unique(np.asarray(Image.open(p))).tolist()) <= {0, 127, 254}
    r = export(synth, tmp_path / "raw", "nnunet")
    meta = check_nnunet_v2(Path(r["out"]))
    assert meta["labels"] == {"background": 0, "label 1 (grey 127)": 1, "label 2 (grey 254)": 2}


def test_png_export_writes_the_users_grey_levels_back_and_nifti_keeps_label_numbers(tmp_path):
    rng = np.random.default_rng(4)
    masks = rng.integers(0, 4, (3, 12, 10)).astype(np.uint8)
    coding = dict(enumerate(GREY_3, start=1))
    h5 = tmp_path / "s.h5"
    with SampleWriter(h5, 3, (1, 12, 10), masks=True, labels=False, mask_coding=coding,
                      label_names={k: f"label {k} (grey {v})" for k, v in coding.items()}) as w:
        w.append(rng.random((3, 1, 12, 10)).astype(np.float32), np.arange(3), masks)
    lut = np.array([0, *GREY_3], np.uint8)
    export(h5, tmp_path / "png", "png")
    export(h5, tmp_path / "nii", "nifti")
    r = export(h5, tmp_path / "raw", "nnunet")
    for i in range(3):
        png = np.asarray(Image.open(tmp_path / "png" / "masks" / f"synth_{i:05d}.png"))
        np.testing.assert_array_equal(png, lut[masks[i]])  # the grey values the user drew with
        # A NIfTI label map holds label numbers; nnU-Net needs them 0..K, named in dataset.json.
        seg = np.asarray(nib.load(tmp_path / "nii" / f"synth_{i:05d}_seg.nii.gz").dataobj)[:, :, 0].T[::-1]
        nn = np.asarray(nib.load(Path(r["out"]) / "labelsTr" / f"synth_{i:05d}.nii.gz").dataobj)[:, :, 0].T[::-1]
        np.testing.assert_array_equal(seg, masks[i])
        np.testing.assert_array_equal(nn, masks[i])
    assert check_nnunet_v2(Path(r["out"]))["labels"] == {"background": 0, "label 1 (grey 85)": 1,
                                                         "label 2 (grey 170)": 2, "label 3 (grey 255)": 3}
    # The exported PNG pairs read back as the same labels with the same coding.
    back = read_folder_pairs(tmp_path / "png")
    assert back.mask_coding == coding
    np.testing.assert_array_equal(back.masks, masks)


def test_cli_says_the_coding_before_training_and_info_says_it_too(tmp_path, capsys):
    root = grey_level_set(tmp_path / "brain", GREY_2, n=6)
    toml = tmp_path / "tiny.toml"
    toml.write_text("[model]\nimage_size = 16\nblock_out_channels = [16, 32]\nattention_levels = [false, true]\n"
                    "[train]\nsteps = 2\nbatch = 4\nlog_every = 1\n")
    assert main(["info", str(root)]) == 0
    assert "  2 mask labels: 127 → 1, 254 → 2" in capsys.readouterr().out
    assert main(["train", str(root), "--out", str(tmp_path / "run"), "--config", str(toml), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"2 mask labels: 127 → 1, 254 → 2; model \d+\.\d\d M parameters, 3 input channels", err), err


# ---------------------------------------------------------------- 2D spacing


def _nifti_slices(path: Path, shape: tuple[int, int, int], zooms: tuple[float, float, float]) -> Path:
    rng = np.random.default_rng(5)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(rng.normal(100, 20, shape).astype(np.float32), np.diag([*zooms, 1.0])), path)
    return path


@pytest.mark.parametrize(("shape", "zooms", "want"), [
    ((64, 64, 3), (3.0, 3.0, 3.0), (6.0, 6.0)),  # 64² at 3 mm → 32²: a 192 mm field at 6 mm
    ((64, 40, 3), (0.8, 1.6, 3.0), (1.6, 2.0)),  # non-square pixels, non-square slices
], ids=["64sq-3mm", "0.8x1.6mm"])
def test_2d_samples_carry_the_spacing_of_what_was_generated(tmp_path, shape, zooms, want):
    from engine.inference.sample import SampleJob
    from engine.training.train import TrainJob

    src = _nifti_slices(tmp_path / "src" / "t2.nii.gz", shape, zooms)
    data = read_nifti(src)
    # The real-data path: (x, y) as nibabel's zooms, x along the columns, in the file too.
    assert data.size == (shape[1], shape[0]) and data.spacing == pytest.approx(zooms[:2])
    real = write_image_set(tmp_path / "real.h5", data)
    with h5py.File(real) as f:
        assert tuple(f.attrs["spacing"]) == pytest.approx(zooms[:2])
        np.testing.assert_allclose(f.attrs["affine"], np.diag([*zooms[:2], 1.0]))

    cfg = tiny_config(steps=2, mask_mode="none")
    cfg.model.image_size = 32
    TrainJob(cfg, tmp_path / "run", data=data).run(lambda ev: None, Requests())
    synth = tmp_path / "synth.h5"
    SampleJob(tmp_path / "run", 1, synth, steps=2).run(lambda ev: None, Requests())
    with h5py.File(synth) as f:
        assert f["images"].shape[2:] == (32, 32)
        # The source's field of view over image_size, in (x, y) order, and an affine that says the same.
        assert tuple(f.attrs["spacing"]) == pytest.approx(want)
        assert tuple(f.attrs["spacing"]) == pytest.approx((zooms[0] * shape[0] / 32, zooms[1] * shape[1] / 32))
        np.testing.assert_allclose(f.attrs["affine"], np.diag([*want, 1.0]))

    export(synth, tmp_path / "nii", "nifti")
    assert nib.load(tmp_path / "nii" / "synth_00000.nii.gz").header.get_zooms() == pytest.approx((*want, 1.0))
    # The app's viewer takes an (H, W) picture's spacing per array axis: rows (y), then columns (x).
    from engine.io.sources.h5 import sample_view

    assert sample_view(synth, 0).spacing == pytest.approx(want[::-1])


def test_2d_nnunet_export_carries_the_spacing(tmp_path):
    h5 = tmp_path / "s.h5"
    with SampleWriter(h5, 1, (1, 8, 10), masks=True, labels=False, spacing=(1.6, 2.0)) as w:
        w.append(np.zeros((1, 1, 8, 10), np.float32), np.arange(1), np.ones((1, 8, 10), np.uint8))
    r = export(h5, tmp_path / "raw", "nnunet")
    out = Path(r["out"])
    check_nnunet_v2(out)
    for p in (out / "imagesTr" / "synth_00000_0000.nii.gz", out / "labelsTr" / "synth_00000.nii.gz"):
        assert nib.load(p).header.get_zooms() == pytest.approx((1.6, 2.0, 1.0))


# ---------------------------------------------------------------- nnU-Net naming


def check_nnunet_v2(folder: Path) -> dict:
    """nnU-Net v2's documented rules for a raw dataset (dataset_format.md, verify_dataset_integrity):
    the folder is DatasetNNN_Name; dataset.json has channel_names, labels, numTraining and file_ending;
    labels start at background 0 and are consecutive; imagesTr holds CASE_XXXX{file_ending} for every
    channel, labelsTr CASE{file_ending}; numTraining counts the cases; image and label grids agree and
    labels hold only declared values. Nothing else is in the folder."""
    assert re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_.-]+", folder.name), folder.name
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    meta = json.loads((folder / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(meta)
    ending, channels = meta["file_ending"], meta["channel_names"]
    assert sorted(channels) == [str(i) for i in range(len(channels))]
    values = sorted(v for v in meta["labels"].values() if isinstance(v, int))
    assert meta["labels"]["background"] == 0 and values == list(range(len(values)))
    names = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert all(n.endswith(ending) and re.fullmatch(r".+_\d{4}", n[: -len(ending)]) for n in names)
    cases = sorted({n[: -len(ending) - 5] for n in names})
    assert len(cases) == meta["numTraining"] and len(names) == len(cases) * len(channels)
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [c + ending for c in cases]
    for case in cases:
        seg = nib.load(folder / "labelsTr" / f"{case}{ending}")
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= set(values)
        for c in range(len(channels)):
            img = nib.load(folder / "imagesTr" / f"{case}_{c:04d}{ending}")
            assert img.shape == seg.shape
            np.testing.assert_allclose(img.header.get_zooms(), seg.header.get_zooms())
            np.testing.assert_allclose(img.affine, seg.affine)
    return meta


def _two_sample_file(path: Path) -> Path:
    with SampleWriter(path, 2, (1, 6, 6), masks=True, labels=True, class_names=["a", "b"],
                      label_names={1: "lesion"}) as w:
        w.append(np.zeros((2, 1, 6, 6), np.float32), np.array([7, 8]), np.ones((2, 6, 6), np.uint8),
                 np.array([0, 1]))
    return path


def test_nnunet_export_names_the_dataset_folder_and_keeps_samples_csv_outside(tmp_path, capsys):
    h5 = _two_sample_file(tmp_path / "s.h5")
    raw = tmp_path / "nnUNet_raw"
    (raw / "Dataset501_Other").mkdir(parents=True)  # 501 is taken: the next free 5xx is used
    assert main(["export", str(h5), "--to", str(raw), "--format", "nnunet"]) == 0
    out = raw / "Dataset502_MedSynth"
    assert f"to {out}" in capsys.readouterr().out
    meta = check_nnunet_v2(out)
    assert meta["numTraining"] == 2 and meta["labels"] == {"background": 0, "lesion": 1}
    rows = list(csv.DictReader((raw / "Dataset502_MedSynth.samples.csv").open()))
    assert [r["seed"] for r in rows] == ["7", "8"] and rows[1]["class_name"] == "b"

    assert main(["export", str(h5), "--to", str(raw), "--format", "nnunet", "--dataset-id", "7",
                 "--dataset-name", "Polyps"]) == 0
    check_nnunet_v2(raw / "Dataset007_Polyps")
    # A --to that is itself DatasetNNN_Name is used as it is.
    assert main(["export", str(h5), "--to", str(tmp_path / "Dataset123_Mine"), "--format", "nnunet"]) == 0
    check_nnunet_v2(tmp_path / "Dataset123_Mine")
    assert (tmp_path / "Dataset123_Mine.samples.csv").is_file()
    capsys.readouterr()


@pytest.mark.parametrize(("args", "named"), [
    (["--dataset-id", "501"], "Dataset501_Other"),  # nnU-Net looks ids up alone: a second 501 is ambiguous
    (["--dataset-id", "1000"], "1000"),
    (["--dataset-name", "my data"], "my data"),
])
def test_nnunet_export_refuses_a_taken_or_malformed_id_and_writes_nothing(tmp_path, capsys, args, named):
    h5 = _two_sample_file(tmp_path / "s.h5")
    raw = tmp_path / "nnUNet_raw"
    (raw / "Dataset501_Other").mkdir(parents=True)
    assert main(["export", str(h5), "--to", str(raw), "--format", "nnunet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert [p.name for p in raw.iterdir()] == ["Dataset501_Other"]


def test_the_train_panel_shows_the_coding_and_model_size_while_training(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    from medsynth_gui.panels.train_panel import TrainPanel

    root = grey_level_set(tmp_path / "brain", GREY_2, n=6)
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.data_edit.setText(str(root))
    panel.run_edit.setText(str(tmp_path / "run"))
    panel.steps_spin.setValue(2)
    panel.batch_spin.setValue(2)
    panel.size_spin.setValue(16)
    with qtbot.waitSignal(panel.runner.running_changed, timeout=120_000, check_params_cb=lambda running: not running):
        panel.start()
    # Progress and the end of the run rewrite the status line; the data line stays.
    assert re.fullmatch(r"2 mask labels: 127 → 1, 254 → 2; model \d+\.\d\d M parameters, 3 input channels",
                        panel.data_summary.text()), panel.data_summary.text()
    assert panel.status.text() != panel.data_summary.text()


def test_a_2d_reader_study_shows_items_at_the_files_pixel_aspect(tmp_path):
    from engine.evaluation import reader_session
    from engine.evaluation import reader_study as rs

    files = []
    for name in ("real", "synth"):
        h5 = tmp_path / f"{name}.h5"
        with SampleWriter(h5, 2, (1, 8, 10), masks=False, labels=False, spacing=(1.6, 2.0),
                          kind="real" if name == "real" else "synthetic") as w:
            w.append(np.zeros((2, 1, 8, 10), np.float32), np.arange(2))
        files.append(h5)
    study = rs.create_study(*files, tmp_path / "study", 2, 2, 0)
    session = reader_session.Session(study.folder, "reader1")
    img = session.image(session.next_item().id)
    # The viewer takes an (H, W) picture's spacing per array axis: rows 2.0 mm (y), columns 1.6 mm (x).
    assert img.image.shape == (8, 10) and img.spacing == pytest.approx((2.0, 1.6))


@pytest.mark.parametrize(("spacing", "aspect"), [((1.6, 2.0), 1.25), ((1.5, 1.0, 2.0), 1.0 / 1.5)], ids=["2d", "3d"])
def test_gallery_thumbnails_keep_the_pixel_aspect_of_x_y_spacing(qtbot, tmp_path, spacing, aspect):
    pytest.importorskip("pytestqt")
    from medsynth_gui.thumbnails import ThumbnailModel

    shape = (1,) + (4,) * len(spacing)
    h5 = tmp_path / "s.h5"
    with SampleWriter(h5, 1, shape, masks=False, labels=False, spacing=spacing) as w:
        w.append(np.zeros((1, *shape), np.float32), np.arange(1))
    model = ThumbnailModel()
    model.load(h5)
    # A thumbnail (a 2D image, or a volume's axial slice) has x along its columns, y along its rows.
    assert model.aspect == pytest.approx(aspect)
    model.close()
