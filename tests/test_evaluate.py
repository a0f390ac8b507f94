"""`medsynth evaluate` end to end on phantoms: a "perfect generator" (a fresh phantom draw) with three
planted copies of training images. The job must find exactly the copies, write every figure into
/metrics and a report, and the export gate must leave the copies out."""

import json

import h5py
import numpy as np
import pytest
import torch

from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.evaluation.evaluate import EvalSettings, EvaluateJob
from engine.io.medsynth_writer import SampleWriter, write_image_set
from engine.jobs import Requests, execute
from medsynth.cli import main
from tests.conftest import COPIES, StopAfter, make_evaluation_files


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
    # 120 steps: at 40 the real-trained segmenter and classifier learned nothing on these phantoms (no better than
    # marking every pixel or always answering the commonest class), so their figures are not measured.
    result = EvaluateJob(synth_path, real=test_path, settings=EvalSettings(utility_steps=120, nn_threshold=0.99)).run(
        events.append, Requests())
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
    rows = (tmp_path / "gated" / "samples.csv").read_text().splitlines()
    assert rows[0].endswith(",nn_corr") and len(rows) == 46 and all(float(r.split(",")[-1]) <= 0.99 for r in rows[1:])


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
    # Load and features (1 poll each) finish; radiomics stops at its 5th poll, after FRD and before MMD.
    stop_in_radiomics = StopAfter(6)
    settings = EvalSettings(skip=["fid", "labels", "utility"])
    done = execute(EvaluateJob(copy, real=test_path, settings=settings), lambda ev: None, stop_in_radiomics)
    assert done.cancelled and not done.result["complete"]
    assert set(done.result["summary"]["timings_s"]) == {"load", "features"}  # the stages that finished
    assert "frd" in done.result["figures"] and "mmd" not in done.result["figures"]
    with h5py.File(copy) as f:
        assert "frd" in f["metrics"].attrs and json.loads(f["metrics"].attrs["summary"])["complete"] is False


def test_cli_evaluate_and_its_bad_input(files, tmp_path, capsys):
    _, _, test_path, synth_path = files
    copy = tmp_path / "s.h5"
    copy.write_bytes(synth_path.read_bytes())
    assert main(["evaluate", str(copy), "--real", str(test_path), "--no-utility", "--utility-steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "frd" in out and "report:" in out
    # Named figures with their real-vs-real reference and a reading, as the app shows them.
    frd = next(line for line in out.splitlines() if "[frd]" in line)
    assert frd.strip().startswith("Fréchet radiomics distance:") and "real vs real" in frd and "—" in frd
    with h5py.File(copy) as f:
        mem = json.loads(f["metrics"].attrs["summary"])["memorization"]
        corr = f["metrics/nn_corr"][:]
    # No --threshold: a copy is what sits closer to training data than 99% of held-out real cases.
    assert mem["threshold_rule"].startswith("auto") and 0.95 <= mem["threshold"] < 0.99
    assert mem["threshold"] == pytest.approx(max(0.95, mem["real_vs_train"]["percentiles"]["p99"]))
    assert all(corr[i] > mem["threshold"] for i in COPIES)
    assert main(["evaluate", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.h5" in err[0]


class TinyEncoder3D(torch.nn.Module):
    """Stands in for a user's 3D feature network (e.g. a MedicalNet encoder), exported with torch.export."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3, 4))


def test_volumes_are_evaluated_with_a_users_3d_feature_network(tmp_path, monkeypatch_module):
    torch.manual_seed(0)
    net_path = tmp_path / "encoder.pt2"
    program = torch.export.export(TinyEncoder3D(), (torch.zeros(8, 1, 16, 16, 16),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(net_path))
    train = make_phantoms(24, size=16, dims=3, seed=0)
    train_path = write_image_set(tmp_path / "train.h5", train)
    test_path = write_image_set(tmp_path / "test.h5", make_phantoms(12, size=16, dims=3, seed=700))
    synth = make_phantoms(12, size=16, dims=3, seed=900)
    synth.images[5], synth.masks[5] = train.images[3], train.masks[3]
    synth_path = tmp_path / "synth.h5"
    with SampleWriter(synth_path, 12, synth.images.shape[1:], masks=True, labels=False,
                      normalisation={"modality": "MR", "lo": 0.0, "hi": 1000.0},
                      config={"data": {"path": str(train_path)}}) as w:
        w.append(synth.images, np.arange(12), synth.masks)
    settings = EvalSettings(features_net=str(net_path), utility_steps=10, nn_threshold=0.99)
    result = EvaluateJob(synth_path, real=test_path, settings=settings).run(lambda ev: None, Requests())
    f = result["figures"]
    for key in ("fd_net", "fd_net_real_vs_real", "frd", "ms_ssim_synth"):
        assert key in f and np.isfinite(f[key]), key
    # Ten steps teach a 3D segmenter nothing: its figures are not measured, and say why, rather than lie.
    missing = result["summary"]["not_measured"]
    for key in ("mask_dice", "dice_real", "dice_synth", "dice_ratio_synth_real"):
        assert key not in f and "no better than the better of marking every pixel" in missing[key], key
        assert "after 10 training steps" in missing[key]
    assert f["nn_share_above"] == pytest.approx(1 / 12)
    assert result["summary"]["memorization"]["closest"][0][:2] == [5, 3]
    assert result["summary"]["features_net"]["dim"] == 6
    with pytest.raises(InputError, match="missing.pt"):
        EvaluateJob(synth_path, real=test_path, settings=EvalSettings(features_net=str(tmp_path / "missing.pt")))
