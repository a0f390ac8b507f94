"""One source of truth for settings: declared choices read by the config, the CLI and the app; one override
builder; data facts apart from the user's choices; one device rule; the Python version the code needs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from engine.config import RESOURCES, DataFacts, from_dict, load, load_preset, merge, resolve
from engine.errors import InputError
from engine.export import export
from engine.io.medsynth_writer import write_image_set
from engine.jobs import Requests
from engine.runtime.devices import pick_device
from engine.settings import (
    CHOICES,
    OVERRIDES,
    Choice,
    Device,
    ExportFormat,
    LossKind,
    MaskMode,
    Objective,
    Sampler,
    allowed,
    overrides,
)
from medsynth.cli import _overrides, build_parser
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
FACT_NAMES = {"spatial_dims", "in_channels", "image_channels", "mask_labels", "num_classes"}
# Run folders written before the facts had their own section: the bundled demo model, and the kept old run
# folder fixture where this checkout has it.
OLD_RUNS = [RESOURCES / "demo" / "run", ROOT / "tests" / "data" / "run_v0.1.0"]


def _option(parser: argparse.ArgumentParser, command: str, flag: str) -> argparse.Action:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return next(a for a in sub._actions if flag in a.option_strings)


@pytest.mark.parametrize(("command", "flag", "kind"), [
    ("train", "--loss", LossKind), ("train", "--objective", Objective), ("train", "--prediction", Objective),
    ("train", "--mask-mode", MaskMode),
    ("train", "--device", Device), ("sample", "--sampler", Sampler), ("sample", "--device", Device),
    ("evaluate", "--device", Device),
])
def test_cli_choices_are_the_declared_ones(command, flag, kind):
    assert list(_option(build_parser(), command, flag).choices) == kind.values()


def test_the_readme_lists_the_declared_choices():
    text = (ROOT / "README.md").read_text()
    for flag, kind in (("--loss", LossKind), ("--objective", Objective), ("--mask-mode", MaskMode),
                       ("--device", Device), ("--sampler", Sampler), ("--format", ExportFormat)):
        assert f"{flag} {'|'.join(kind.values())}" in text, flag


def test_export_formats_are_the_declared_ones(tmp_path):
    # --format has no argparse choices (a wrong name is one error line naming the file); its help lists them.
    assert _option(build_parser(), "export", "--format").metavar == "{png,nifti,nnunet}"
    assert ExportFormat.values() == ["png", "nifti", "nnunet"]
    with pytest.raises(InputError, match=r"formats are png, nifti, nnunet"):
        export(tmp_path / "x.h5", tmp_path / "out", "tiff")


def test_the_config_takes_exactly_the_declared_values():
    for (section, key), _ in CHOICES.items():
        for value in allowed(section, key):
            assert getattr(merge(load_preset("demo"), {section: {key: value}}, "t"), section).__dict__[key] == value
        with pytest.raises(InputError, match=rf"t: {section}\.{key} = 'bogus'; expected one of"):
            merge(load_preset("demo"), {section: {key: "bogus"}}, "t")
    assert allowed("train", "steps") is None


def test_every_preset_uses_only_declared_values():
    from engine.config import preset_names

    for name in preset_names():
        cfg = load_preset(name)
        for (section, key), _ in CHOICES.items():
            assert getattr(getattr(cfg, section), key) in allowed(section, key), (name, section, key)


def test_app_combos_list_the_declared_choices_by_label(qtbot):
    from medsynth_gui.panels.generate_panel import GeneratePanel
    from medsynth_gui.panels.train_panel import TrainPanel

    train, generate = TrainPanel(), GeneratePanel()
    qtbot.addWidget(train)
    qtbot.addWidget(generate)
    combos = [(train.loss_combo, LossKind), (train.mask_combo, MaskMode), (train.device_combo, Device),
              (generate.sampler, Sampler)]
    for combo, kind in combos:
        texts = [combo.itemText(i) for i in range(combo.count())]
        data = [combo.itemData(i) for i in range(combo.count())]
        assert texts == [m.label for m in kind] and data == kind.values(), kind
        assert not set(texts) & set(kind.values()), f"{kind.__name__}: a raw flag name is shown"
    # Choosing by value selects the labelled item; the step count follows the sampler chosen.
    generate.sampler.set_value("ddpm")
    assert generate.sampler.currentText() == Sampler.DDPM.label and generate.steps_spin.value() == 1000


def test_a_choice_is_its_value_and_carries_a_label():
    assert LossKind.HUBER == "huber" and LossKind("huber").label.startswith("Huber")
    assert json.dumps({"loss": LossKind.HUBER}) == '{"loss": "huber"}'
    assert issubclass(LossKind, Choice) and LossKind.items()[0] == ("Squared error (L2)", "l2")


def test_cli_and_panel_build_the_same_config(qtbot, tmp_path):
    from medsynth_gui.panels.train_panel import TrainPanel

    data = tmp_path / "d.h5"
    args = build_parser().parse_args(["train", str(data), "--out", str(tmp_path / "r"), "--preset", "pairs-64",
                                      "--steps", "7", "--batch", "3", "--lr", "0.01", "--loss", "huber",
                                      "--mask-mode", "condition", "--device", "cpu", "--size", "16"])
    from_cli = resolve(args.preset, None, _overrides(args))
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.preset.setCurrentText("pairs-64")
    panel.data_edit.setText(str(data))
    panel.steps_spin.setValue(7)
    panel.batch_spin.setValue(3)
    panel.lr_spin.setValue(0.01)
    panel.loss_combo.set_value("huber")
    panel.mask_combo.set_value("condition")
    panel.device_combo.set_value("cpu")
    panel.size_spin.setValue(16)
    panel.classes_check.setChecked(load_preset("pairs-64").data.class_conditional)
    assert panel.config().to_dict() == from_cli.to_dict()
    assert (from_cli.train.steps, from_cli.train.loss, from_cli.data.mask_mode, from_cli.model.image_size) == \
        (7, "huber", "condition", 16)


def test_absent_flags_keep_the_preset_and_every_flag_has_a_home():
    args = build_parser().parse_args(["train", "d.h5", "--out", "r"])
    assert _overrides(args) == {"data": {"path": "d.h5"}, "model": {}, "train": {}, "autoencoder": {},
                                "pretrained": {}}
    args = build_parser().parse_args(["train", "d.h5", "--out", "r", "--gradient-checkpointing",
                                      "--record-full-path", "--memory-limit", "3", "--spacing", "1", "1", "2",
                                      "--autoencoder-steps", "5", "--prediction", "epsilon", "--seed", "4"])
    got = _overrides(args)
    assert got["train"] == {"gradient_checkpointing": True, "memory_limit_gib": 3.0, "objective": "epsilon",
                            "seed": 4}
    assert got["data"] == {"path": "d.h5", "record_full_path": True, "spacing": [1.0, 1.0, 2.0]}
    assert got["autoencoder"] == {"steps": 5}
    for section, key in OVERRIDES.values():
        assert key in getattr(load_preset("demo"), section).__dict__, (section, key)
    with pytest.raises(TypeError, match="no setting is overridden by 'colour'"):
        overrides(colour="red")
    assert overrides(loss=LossKind.L1)["train"] == {"loss": "l1"}


def test_data_facts_live_apart_from_the_users_choices(tiny_run, tmp_path, phantoms16):
    saved = json.loads((tiny_run / "config.json").read_text())
    assert FACT_NAMES.isdisjoint(saved["model"])
    assert saved["facts"] == {"spatial_dims": 2, "in_channels": 3, "image_channels": 1, "mask_labels": 3,
                              "num_classes": 4, "mask_mode": "joint"}
    state = json.loads(sorted((tiny_run / "checkpoints").iterdir())[-1].joinpath("state.json").read_text())
    assert state["config"]["facts"] == saved["facts"] and FACT_NAMES.isdisjoint(state["config"]["model"])
    assert load(tiny_run / "config.json").facts == DataFacts(**saved["facts"])
    # What the user chose is what training keeps: the data fills the facts, not the model settings.
    from engine.training.train import TrainJob

    cfg = tiny_config(steps=1)
    chosen = json.dumps(cfg.to_dict()["model"])
    TrainJob(cfg, tmp_path / "run", data=phantoms16).run(lambda ev: None, Requests())
    assert json.dumps(cfg.to_dict()["model"]) == chosen and cfg.facts.num_classes == 4


def test_data_without_masks_leaves_the_chosen_mask_mode_alone(tmp_path, phantoms16):
    from engine.inference.sample import Generator
    from engine.training.train import TrainJob

    cfg = tiny_config(steps=1, mask_mode="joint")
    images_only = dataclasses.replace(phantoms16, masks=None, label_names={})
    TrainJob(cfg, tmp_path / "run", data=images_only).run(lambda ev: None, Requests())
    saved = load(tmp_path / "run" / "config.json")
    assert saved.data.mask_mode == "joint"  # what the user chose
    assert saved.facts.mask_mode == saved.mask_mode == "none" and saved.facts.mask_labels == 0
    assert saved.facts.in_channels == 1
    images, masks = Generator(tmp_path / "run", device="cpu").generate([0], [0], "ddim", 2)
    assert masks is None and images.shape[1] == 1


def test_facts_cannot_be_set_by_a_preset_a_toml_or_an_override(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text("[facts]\nnum_classes = 9\n")
    with pytest.raises(InputError, match=r"mine.toml: unknown section \[facts\]"):
        resolve("demo", toml, {})
    toml.write_text("[model]\nnum_classes = 9\n")
    with pytest.raises(InputError, match=r"mine.toml: unknown setting model.num_classes"):
        resolve("demo", toml, {})


@pytest.mark.parametrize("run", OLD_RUNS, ids=lambda p: p.name)
def test_old_run_folders_with_inline_facts_still_read(run, tmp_path):
    if not run.exists():
        pytest.skip(f"{run} is not in this checkout")
    old = json.loads((run / "config.json").read_text())
    assert FACT_NAMES <= set(old["model"]) and "facts" not in old  # really written before the change
    cfg = load(run / "config.json")
    assert cfg.facts == DataFacts(**{k: old["model"][k] for k in FACT_NAMES})
    assert cfg.mask_mode == old["data"]["mask_mode"]  # old runs wrote the mode the model was trained in there
    assert FACT_NAMES.isdisjoint(cfg.to_dict()["model"])
    assert from_dict(old).to_dict() == cfg.to_dict()
    from engine.inference.sample import Generator
    from engine.info import describe

    copy = shutil.copytree(run, tmp_path / run.name)
    gen = Generator(copy, device="cpu")
    assert gen.num_classes == cfg.facts.num_classes
    images, masks = gen.generate([0], [0], "ddim", 2)
    assert images.shape[1] == cfg.facts.image_channels and masks is not None
    assert f"{cfg.facts.num_classes} classes" in describe(copy)


def test_one_device_rule_for_train_sample_and_evaluate(tiny_run, tmp_path, phantoms16):
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == pick_device(Device.CPU) == "cpu"
    with pytest.raises(InputError, match="device 'tpu'; expected one of auto, cpu, cuda"):
        pick_device("tpu")
    if torch.cuda.is_available():
        return
    # Without a GPU, asking for one is the same one clear line from every job.
    message = "a CUDA GPU was asked for but torch finds none on this machine"
    from engine.evaluation.evaluate import EvalSettings, EvaluateJob
    from engine.inference.sample import SampleJob
    from engine.training.train import TrainJob

    with pytest.raises(InputError, match=message):
        TrainJob(tiny_config(steps=1, device="cuda"), tmp_path / "t", data=phantoms16).run(lambda ev: None,
                                                                                          Requests())
    with pytest.raises(InputError, match=message):
        SampleJob(tiny_run, 1, tmp_path / "s.h5", device="cuda").run(lambda ev: None, Requests())
    synth = write_image_set(tmp_path / "synth.h5", phantoms16)
    with pytest.raises(InputError, match=message):
        EvaluateJob(synth, None, None, EvalSettings(device="cuda", utility=False)).run(lambda ev: None, Requests())


def test_the_python_the_code_needs_is_the_one_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # tomllib (config.py) and StrEnum (settings.py, evaluation/stages.py) are Python 3.11.
    assert project["project"]["requires-python"] == ">=3.11"
    assert project["tool"]["ruff"]["target-version"] == "py311"
    assert sys.version_info >= (3, 11)
