"""Provenance names the training data without leaking its path: folder names often carry patient
names or record numbers. Outputs (checkpoints, HDF5 files, exports) hold the folder's base name and a
hash of its absolute path; only the run folder's config.json, which --resume reads, keeps the path."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from engine.config import path_sha256, public_config, public_path
from engine.inference.sample import SampleJob
from engine.jobs import Requests
from engine.training.train import TrainJob
from tests.conftest import tiny_config
from tests.test_partners import make_raw_folder


def _every_text(path: Path) -> str:
    """Every attribute of every object in an HDF5 file, and every string dataset, as one text."""
    parts: list[str] = []

    def visit(name: str, obj: object) -> None:
        for key, value in obj.attrs.items():
            parts.append(f"{name}@{key}={value!r}")
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "OSU":
            parts.append(repr(obj[:].tolist()))

    with h5py.File(path, "r", locking=False) as f:
        visit("/", f)
        f.visititems(visit)
    return "\n".join(parts)


def _train(data: Path, run: Path, steps: int = 10, **data_settings: object) -> None:
    cfg = tiny_config(steps=steps)
    cfg.data.path = str(data)
    cfg.data.class_conditional = False
    for key, value in data_settings.items():
        setattr(cfg.data, key, value)
    TrainJob(cfg, run).run(lambda e: None, Requests())


def test_a_synthetic_file_names_its_data_by_base_name_and_hash_only(tmp_path):
    # The place where a hospital keeps a patient's scans: the path is the leak.
    data = make_raw_folder(tmp_path / "Doe_John_MRN0012345" / "Dataset501_BraTS", "nnunet", cases=2)
    run = tmp_path / "run"
    _train(data, run)
    out = tmp_path / "synthetic.h5"
    SampleJob(run, 3, out, steps=2, batch=3, device="cpu").run(lambda e: None, Requests())

    text = _every_text(out)
    assert str(tmp_path) not in text and "Doe_John" not in text and "MRN0012345" not in text
    with h5py.File(out, "r", locking=False) as f:
        config = json.loads(f.attrs["config"])
    assert config["data"]["path"] == "Dataset501_BraTS"
    assert config["data"]["path_sha256"] == path_sha256(data)
    # What travels with the model (checkpoint state, run.json) is clean too.
    for state in [*run.glob("checkpoints/*/state.json"), run / "run.json"]:
        assert "Doe_John" not in state.read_text(), state
    # Only the run folder's own config.json keeps the path, and --resume finds the data through it.
    assert json.loads((run / "config.json").read_text())["data"]["path"] == str(data)
    resumed = TrainJob(None, run, resume=True, steps=14).run(lambda e: None, Requests())
    assert resumed["step"] == 14
    # An export's table says nothing of the data's place either.
    from engine.export import export

    export(out, tmp_path / "png", "png")
    assert "Doe_John" not in (tmp_path / "png" / "samples.csv").read_text()
    # Nor does an evaluation, in the file's /metrics or in its report, though it was given the full path.
    from engine.evaluation.evaluate import EvalSettings, EvaluateJob

    result = EvaluateJob(out, train_data=data, settings=EvalSettings(utility=False, device="cpu")).run(
        lambda e: None, Requests())
    assert "Doe_John" not in _every_text(out)
    assert "Doe_John" not in Path(result["report"]).read_text(encoding="utf-8")


def test_record_full_path_keeps_the_path_when_asked(tmp_path):
    data = make_raw_folder(tmp_path / "study" / "raw", "msd", cases=2)
    run = tmp_path / "run"
    _train(data, run, record_full_path=True)
    out = tmp_path / "synthetic.h5"
    SampleJob(run, 2, out, steps=2, batch=2, device="cpu").run(lambda e: None, Requests())
    with h5py.File(out, "r", locking=False) as f:
        assert json.loads(f.attrs["config"])["data"]["path"] == str(data)


def test_mask_conditioned_sampling_finds_its_masks_through_the_run_folder(tmp_path):
    data = make_raw_folder(tmp_path / "Doe_Jane" / "raw", "msd", cases=2)
    run = tmp_path / "run"
    _train(data, run, mask_mode="condition")
    out = tmp_path / "synthetic.h5"
    SampleJob(run, 2, out, steps=2, batch=2, device="cpu").run(lambda e: None, Requests())
    with h5py.File(out, "r", locking=False) as f:
        assert f["masks"][:2].any()  # the conditions came from the real training masks
    assert "Doe_Jane" not in _every_text(out)


def test_public_config_and_path_rules(tmp_path):
    values = {"data": {"path": str(tmp_path / "Smith_Anna" / "scans"), "record_full_path": False}}
    once = public_config(values)
    assert once["data"]["path"] == "scans" and len(once["data"]["path_sha256"]) == 16
    assert public_config(once) == once  # applying it again changes nothing
    assert values["data"]["path"].endswith("scans") and "path_sha256" not in values["data"]  # input untouched
    kept = public_config({"data": {"path": "/x/y", "record_full_path": True}})
    assert kept["data"]["path"] == "/x/y"
    assert public_path(tmp_path / "Smith_Anna") == f"Smith_Anna (sha256 {path_sha256(tmp_path / 'Smith_Anna')})"
    assert public_path(tmp_path / "a") != public_path(tmp_path / "b" / "a")
