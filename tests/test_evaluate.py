"""`medsynth evaluate` end to end on phantoms: a "perfect generator" (a fresh phantom draw) with three
planted copies of training images. The job must find exactly the copies, write every figure into
/metrics and a report, and the export gate must leave the copies out."""

import json

import h5py
import numpy as np
import pytest

from engine.cli import main
from engine.evaluate import EvalSettings, EvaluateJob
from engine.jobs import Done
from tests.conftest import COPIES, make_evaluation_files


@pytest.fixture(scope="module")
def files(tmp_path_factory, monkeypatch_module):
    return make_evaluation_files(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    # No FID weights anywhere: the report must say so and every other figure must still come.
    mp = pytest.MonkeyPatch()
    mp.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)
    mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def evaluated(files):
    _, _, test_path, synth_path = files
    events = []
    result = EvaluateJob(synth_path, real=test_path, settings=EvalSettings(utility_steps=40, nn_threshold=0.99)).run(
        events.append, lambda: False)
    return result, events


def test_every_figure_lands_in_metrics_and_the_copies_are_found(files, evaluated):
    _, _, _, synth_path = files
    result, _ = evaluated
    assert result["complete"]
    with h5py.File(synth_path) as f:
        m = f["metrics"]
        figures = dict(m.attrs)
        summary = json.loads(m.attrs["summary"])
        corr, idx = m["nn_corr"][:], m["nn_index"][:]
    for key in ("frd", "frd_real_vs_real", "mmd", "ms_ssim_synth", "ms_ssim_real", "nn_corr_max", "nn_share_above",
                "mask_dice", "class_fidelity", "dice_real", "dice_synth", "dice_both", "dice_ratio_synth_real"):
        assert key in figures and np.isfinite(figures[key]), key
    assert len(corr) == 48
    # Phantoms share their anatomy, so unrelated ones correlate up to ~0.96 (as held-out real ones do);
    # copies sit at 1.0, which a threshold of 0.99 separates.
    assert sorted(np.flatnonzero(corr > 0.99).tolist()) == list(COPIES)
    assert summary["memorization"]["real_vs_train"]["max"] < 0.99
    assert [int(idx[i]) for i in COPIES] == [10, 20, 30]
    assert figures["nn_share_above"] == pytest.approx(3 / 48)
    assert summary["fid"]["available"] is False and "not found" in summary["fid"]["note"]
    # A fresh draw of the same generator is as far from the test set as the training set is.
    assert figures["frd"] < 3 * figures["frd_real_vs_real"] + 1.0


def test_the_report_answers_the_four_questions(files, evaluated):
    result, _ = evaluated
    text = open(result["report"], encoding="utf-8").read()
    for question in ("Is it like my data?", "Is it diverse?", "Does it copy patients?", "Does it help segmentation?"):
        assert question in text
    assert "3 of 48 samples" in text and "FID not computed" in text
    assert text.count("<svg") >= 3 and "data:image/png;base64," in text


def test_export_gate_leaves_out_the_copies(files, evaluated, tmp_path, capsys):
    _, train_path, _, synth_path = files
    assert main(["export", str(synth_path), "--to", str(tmp_path / "gated"), "--format", "png",
                 "--max-corr", "0.99"]) == 0
    names = sorted(p.stem for p in (tmp_path / "gated" / "images").iterdir())
    assert len(names) == 45 and not {f"synth_{i:05d}" for i in COPIES} & set(names)
    assert "left out 3" in capsys.readouterr().out


def test_export_gate_computes_correlations_from_train_data_when_the_file_has_none(files, tmp_path):
    from engine.export import export

    _, train_path, _, synth_path = files
    bare = tmp_path / "bare.h5"
    with h5py.File(synth_path) as src, h5py.File(bare, "w") as dst:
        for key in ("images", "masks", "labels", "seeds"):
            src.copy(key, dst)
        dst.attrs.update(src.attrs)
    with pytest.raises(Exception, match="run medsynth evaluate"):
        export(bare, tmp_path / "refused", "png", max_corr=0.99)
    assert not (tmp_path / "refused").exists()
    r = export(bare, tmp_path / "gated", "png", max_corr=0.99, train_data=train_path)
    assert r["n"] == 45 and r["left_out"] == 3


def test_a_cancelled_evaluation_keeps_what_it_measured(files, tmp_path):
    _, _, test_path, synth_path = files
    copy = tmp_path / "synth.h5"
    copy.write_bytes(synth_path.read_bytes())
    polls = {"n": 0}

    def stop_in_diversity() -> bool:
        polls["n"] += 1
        return polls["n"] > 6  # load (1 poll) and radiomics (5) finish; diversity is stopped

    events = []
    settings = EvalSettings(skip=["fid", "labels", "utility"])
    EvaluateJob(copy, real=test_path, settings=settings).run(events.append, stop_in_diversity)
    done = [e for e in events if isinstance(e, Done)][0]
    assert done.cancelled and not done.result["complete"]
    with h5py.File(copy) as f:
        assert "frd" in f["metrics"].attrs and json.loads(f["metrics"].attrs["summary"])["complete"] is False


def test_cli_evaluate_and_its_bad_input(files, tmp_path, capsys):
    _, _, test_path, synth_path = files
    copy = tmp_path / "s.h5"
    copy.write_bytes(synth_path.read_bytes())
    assert main(["evaluate", str(copy), "--real", str(test_path), "--no-utility", "--utility-steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "frd" in out and "report:" in out
    assert main(["evaluate", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.h5" in err[0]
