"""A trust figure that cannot be measured honestly is "not measured", with why — never a number.

Untrained networks (no training steps, or networks no better than one that learned nothing), too few cases
and degenerate sets (all-background masks, one class only) used to give numbers that read as verdicts:
`--utility-steps -1` reported a Dice ratio of 1.0, "as useful as real data". Each case here makes its own data
shaped like the public sets (phantom MR slices with lesion masks and classes, NIfTI volumes in an nnU-Net
imagesTr / labelsTr layout) and checks every place a figure is shown: the file's /metrics, the CLI, the
report, `medsynth info` and the app's Evaluate page.
"""

import json
import math
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from engine.data.phantoms import UNITS, make_phantoms
from engine.evaluation.evaluate import MIN_CASES, EvalSettings, EvaluateJob
from engine.evaluation.figures import answers, unmeasured_groups
from engine.evaluation.metrics import utility as U
from engine.info import describe
from engine.io.medsynth_writer import SampleWriter, write_image_set
from engine.jobs import Requests
from medsynth.cli import main

# Stages that train nothing and take time; left out where a case is about the trained figures only.
UNTRAINED_STAGES = ["fid", "radiomics", "diversity", "memorization"]
SEGMENTATION = ["dice_real", "dice_synth", "dice_both", "iou_real", "iou_synth", "iou_both",
                "dice_ratio_synth_real", "dice_ratio_both_real"]
CLASSIFICATION = ["accuracy_real", "accuracy_synth", "accuracy_both", "accuracy_ratio_synth_real",
                  "accuracy_ratio_both_real"]


@pytest.fixture(autouse=True)
def no_fid_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def make_files(root: Path, *, n_train: int = 30, n_test: int = 10, n_synth: int = 12, change=None) -> dict[str, Path]:
    """Training, held-out and synthetic phantom files (16 px MR slices with lesion masks and four classes);
    `change(name, image_set)` alters a set before it is written."""
    sets = {"train": make_phantoms(n_train, 16, seed=0), "test": make_phantoms(n_test, 16, seed=500),
            "synth": make_phantoms(n_synth, 16, seed=900)}
    for name, s in sets.items():
        if change:
            change(name, s)
    paths = {name: write_image_set(root / f"{name}.h5", sets[name]) for name in ("train", "test")}
    synth = sets["synth"]
    paths["synth"] = root / "synth.h5"
    with SampleWriter(paths["synth"], len(synth), synth.images.shape[1:], masks=True, labels=True,
                      class_names=synth.class_names, normalisation={"modality": "MR", "lo": 0.0, "hi": float(UNITS)},
                      config={"data": {"path": str(paths["train"])}}) as w:
        w.append(synth.images, np.arange(len(synth)), synth.masks, synth.labels)
    return paths


def stored(path: Path) -> tuple[dict[str, float], dict]:
    with h5py.File(path, "r") as f:
        m = f["metrics"]
        return {k: float(v) for k, v in m.attrs.items() if k != "summary"}, json.loads(m.attrs["summary"])


def evaluate(paths: dict[str, Path], **settings) -> dict:
    return EvaluateJob(paths["synth"], real=paths["test"], settings=EvalSettings(**settings)).run(
        lambda ev: None, Requests())


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """An evaluation whose downstream networks got no training steps (what --utility-steps -1 used to run)."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)
    root = tmp_path_factory.mktemp("untrained")
    mp.setenv("TORCH_HOME", str(root / "torch-home"))
    paths = make_files(root)
    result = evaluate(paths, utility_steps=0, skip=UNTRAINED_STAGES)
    yield paths, result
    mp.undo()


def test_untrained_networks_leave_no_number_in_metrics_and_say_why(untrained):
    paths, result = untrained
    figures, summary = stored(paths["synth"])
    for key in SEGMENTATION + CLASSIFICATION + ["mask_dice", "mask_dice_real", "class_fidelity"]:
        assert key not in figures and key not in result["figures"], key
        assert "0 training steps: an untrained network measures nothing" == summary["not_measured"][key], key
    # The report says so where the answer stands, and in words; no ratio is printed.
    report = Path(result["report"]).read_text(encoding="utf-8")
    assert "Does it help segmentation?</b> not measured: 0 training steps" in report
    assert "Not measured: " in report and "Dice ratio, synthetic / real" in report
    assert "synthetic / real Dice:" not in report
    assert dict(answers(result["figures"], result["summary"]))["Does it help segmentation?"] == \
        "not measured: 0 training steps: an untrained network measures nothing"


def test_info_names_the_figures_not_measured_and_why(untrained):
    paths, _ = untrained
    lines = [line for line in describe(paths["synth"]).splitlines() if "not measured" in line]
    assert any("dice_ratio_synth_real" in line and line.endswith("0 training steps: an untrained network measures "
                                                                 "nothing") for line in lines), lines


def test_info_of_a_file_from_before_reasons_were_kept_is_unchanged():
    old = Path(__file__).parent / "data" / "medsynth_v1_2d.h5"
    assert "not measured" not in describe(old)
    assert unmeasured_groups({}) == [] and unmeasured_groups({"not_measured": None}) == []


def test_the_evaluate_page_shows_not_measured_and_the_reason_never_a_number(untrained, qtbot):
    from PySide6.QtCore import Qt

    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    _, result = untrained
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.show_result(result)
    t = panel.table
    rows = {t.item(r, 0).data(Qt.ItemDataRole.UserRole): [t.item(r, c).text() for c in range(4)]
            for r in range(t.rowCount())}
    name, value, ref, reading = rows["dice_ratio_synth_real"]
    assert name == "Dice ratio, synthetic / real" and value == "not measured" and ref == ""
    assert reading == "0 training steps: an untrained network measures nothing"
    for key in SEGMENTATION + CLASSIFICATION + ["mask_dice", "class_fidelity"]:
        assert rows[key][1] == "not measured", key
    assert "not measured" in panel.dice_plot.getPlotItem().titleLabel.text
    assert "not measured: 0 training steps" in panel.answer_texts[3]


def test_the_cli_refuses_fewer_than_one_utility_step(tmp_path, capsys):
    paths = make_files(tmp_path)
    before = paths["synth"].read_bytes()
    for steps in ("-1", "0"):
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", str(paths["synth"]), "--real", str(paths["test"]), "--utility-steps", steps])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("medsynth evaluate: error: argument --utility-steps") and "≥ 1" in err[-1]
    assert paths["synth"].read_bytes() == before  # nothing was run, nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth.h5", "test.h5", "train.h5"]


def _background(which: str):
    def change(name, s):
        if name == which:
            s.masks[:] = 0
    return change


@pytest.mark.parametrize(("which", "reason"), [
    ("test", "the held-out real masks are all background: there is nothing to score a segmenter on"),
    # A real arm that can only learn background scores Dice 0: the ratio would be 0 / 0.
    ("train", "the training masks are all background: there is nothing to learn to segment"),
])
def test_the_cli_says_not_measured_for_all_background_masks(tmp_path, capsys, which, reason):
    paths = make_files(tmp_path, change=_background(which))
    assert main(["evaluate", str(paths["synth"]), "--real", str(paths["test"]), "--utility-steps", "5"]) == 0
    out = capsys.readouterr().out
    assert f"  not measured — {reason}:" in out
    block = out.split(f"not measured — {reason}:")[1]
    assert "Dice ratio, synthetic / real  [dice_ratio_synth_real]" in block
    figures, summary = stored(paths["synth"])
    for key in SEGMENTATION + ["mask_dice"]:
        assert key not in figures and summary["not_measured"][key] == reason, key
    assert {"frd", "ms_ssim_synth", "nn_corr_max"} <= set(figures)  # the rest was measured


@pytest.mark.parametrize(("which", "reason"), [
    ("everywhere", "the training data hold one class only: a classifier learns nothing from them"),
    ("test", "the held-out real data hold one class only: always answering it would score 100%"),
])
def test_one_class_only_gives_no_accuracy(tmp_path, which, reason):
    def one_class(name, s):
        if which == "everywhere" or name == which:
            s.labels[:] = 0

    paths = make_files(tmp_path, change=one_class)
    result = evaluate(paths, utility_steps=5, skip=UNTRAINED_STAGES)
    figures, summary = stored(paths["synth"])
    for key in CLASSIFICATION:
        assert key not in figures and summary["not_measured"][key] == reason, key
    if which == "everywhere":  # class fidelity is judged on a share of the training data: one class there too
        assert "class_fidelity" not in figures and summary["not_measured"]["class_fidelity"] == reason
    assert result["summary"]["utility"]["classification"] == {"not_measured": reason}


def test_two_real_volumes_in_3d_measure_what_they_can_and_say_why_not_the_rest(tmp_path, capsys):
    """The 3D evaluate that ended in a traceback: one training and one held-out volume (NIfTI, nnU-Net layout)."""
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        volume = rng.normal(300, 40, (24, 24, 20)).astype(np.float32)
        mask = np.zeros(volume.shape, np.uint8)
        mask[8:14, 9:15, 6:12] = 1
        volume[mask > 0] += 400
        affine = np.diag([1.5, 1.5, 2.0, 1.0])
        nib.save(nib.Nifti1Image(volume, affine), images / f"case_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), labels / f"case_{i:03d}.nii.gz")
    synth = make_phantoms(6, size=16, dims=3, seed=900)
    synth_path = tmp_path / "synth3d.h5"
    with SampleWriter(synth_path, 6, synth.images.shape[1:], masks=True, labels=False, spacing=(2.0, 2.0, 2.0),
                      normalisation={"modality": "MR", "lo": 0.0, "hi": float(UNITS)},
                      config={"data": {"path": str(images), "dims": 3}, "model": {"image_size": 16}}) as w:
        w.append(synth.images, np.arange(6), synth.masks)
    assert main(["evaluate", str(synth_path), "--real", str(images / "case_000_0000.nii.gz"),
                 "--train-data", str(images / "case_001_0000.nii.gz"), "--utility-steps", "5"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    few = f"only 1 held-out real case; at least {MIN_CASES} cases in each set are needed"
    assert f"not measured — {few}:" in captured.out and "[frd]" in captured.out.split(few)[1]
    figures, summary = stored(synth_path)
    assert "frd" not in figures and summary["not_measured"]["frd"] == few
    assert summary["not_measured"]["ms_ssim_real"].startswith("only 1 training case")
    assert summary["not_measured"]["dice_ratio_synth_real"].startswith("only 1 training case and 1 held-out")
    assert {"ms_ssim_synth", "nn_corr_max", "nn_share_above"} <= set(figures)  # measured: 6 samples, 1 volume each
    # One held-out volume says nothing of how close new real cases come to training ones: no reference, and the
    # copy threshold falls back to 0.95, saying why.
    assert "nn_corr_max_real_vs_train" not in figures and summary["not_measured"]["nn_corr_max_real_vs_train"] == few
    assert summary["memorization"]["threshold"] == 0.95 and few in summary["memorization"]["threshold_rule"]


def test_too_few_samples_leave_distances_and_diversity_unmeasured(tmp_path):
    paths = make_files(tmp_path, n_synth=1)
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"never read: three samples decide before the weights are loaded")
    result = evaluate(paths, fid_weights=str(weights), skip=["labels", "utility"])
    figures, summary = stored(paths["synth"])
    one = f"only 1 synthetic case; at least {MIN_CASES} cases in each set are needed"
    for key in ("fid_2048", "fid_2048_real_vs_real", "kid_2048", "mifid_2048", "frd", "mmd", "ms_ssim_synth"):
        assert key not in figures and summary["not_measured"][key] == one, key
    assert "ms_ssim_real" in figures and "nn_corr_max" in figures  # 30 training images; a copy check of one sample
    like, diverse = (text for _, text in answers(result["figures"], result["summary"])[:2])
    assert like == f"FID not measured: {one}; FRD not measured: {one}" and diverse == f"not measured: {one}"
    # The samples-per-set setting can cut a set below the floor too, and the reason says so.
    paths = make_files(tmp_path / "capped")
    evaluate(paths, max_samples=3, skip=["fid", "labels", "utility", "memorization"])
    figures, summary = stored(paths["synth"])
    assert "frd" not in figures and summary["not_measured"]["frd"].endswith("(the samples-per-set setting cuts them)")
    assert "ms_ssim_synth" in figures  # diversity uses every sample


def test_a_real_arm_that_learned_nothing_makes_no_ratio():
    train, test, synth = make_phantoms(24, 16, seed=0), make_phantoms(8, 16, seed=500), make_phantoms(8, 16, seed=9)
    background_only = np.zeros_like(train.masks)
    r = U.segmentation_utility((train.images / UNITS, background_only), (test.images / UNITS, test.masks),
                               (synth.images / UNITS, synth.masks), steps=20)
    assert r["real"]["dice"] == 0.0 and r["floor"] > 0  # marking every pixel would have scored better
    assert "no better than the better of marking every pixel and an untrained segmenter" in r["not_measured"]
    assert math.isnan(r["ratio_synth_real"]) and math.isnan(r["ratio_both_real"])
    with pytest.raises(ValueError, match="untrained network measures nothing"):
        U.segmentation_utility((train.images / UNITS, train.masks), (test.images / UNITS, test.masks),
                               (synth.images / UNITS, synth.masks), steps=-1)
    with pytest.raises(ValueError, match="untrained network measures nothing"):
        U.classification_utility((train.images / UNITS, train.labels), (test.images / UNITS, test.labels),
                                 (synth.images / UNITS, synth.labels), steps=0)
    assert U.classification_floor(np.array([0, 0, 0, 1])) == 0.75


def test_a_3d_synthetic_file_is_not_compared_with_2d_real_images(tmp_path, capsys):
    flat = write_image_set(tmp_path / "slices.h5", make_phantoms(10, 16, seed=3))
    synth = make_phantoms(6, size=16, dims=3, seed=900)
    synth_path = tmp_path / "synth3d.h5"
    with SampleWriter(synth_path, 6, synth.images.shape[1:], masks=True, labels=False,
                      normalisation={"modality": "MR", "lo": 0.0, "hi": float(UNITS)}, config={}) as w:
        w.append(synth.images, np.arange(6), synth.masks)
    assert main(["evaluate", str(synth_path), "--real", str(flat), "--no-utility"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == \
        f"medsynth: error: {flat}: holds 2D images; the synthetic samples are 3D, so the two cannot be compared"
