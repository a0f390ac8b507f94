"""Every setting's type and range, declared once (engine.settings) and checked wherever a value comes in: presets,
a --config TOML, a run folder's config.json, the command line's flags and the app's fields. A wrong value is one
line naming the file (or the flag) and the key, before anything is written."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import string
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import (
    SPECS,
    from_dict,
    load,
    load_preset,
    merge,
    preset_names,
    resolve,
    size_multiple,
    spec,
)
from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.io.medsynth_writer import write_image_set
from engine.settings import OPTIONS, OVERRIDES, RANGES, Spec, allowed
from medsynth.cli import main

SECTIONS = ("model", "train", "data", "autoencoder")
# Each file's hypothesis examples: enough to reach every declared setting several times, within seconds.
EXAMPLES = 300
HYPOTHESIS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- wrong values, made from the declaration itself ------------------------------------------------------------
WORDS = st.text(alphabet=string.ascii_letters, min_size=1, max_size=8)
BIG = 2**62  # TOML's integers are 64-bit


def _below(s: Spec) -> st.SearchStrategy:
    if s.kind is int:
        return st.integers(-BIG, int(s.low) - (0 if s.above else 1))
    return st.floats(max_value=s.low, exclude_max=not s.above, allow_nan=False, allow_infinity=False)


def _above(s: Spec) -> st.SearchStrategy:
    if s.kind is int:
        return st.integers(int(s.high) + (0 if s.below else 1), BIG)
    return st.floats(min_value=s.high, exclude_min=not s.below, allow_nan=False, allow_infinity=False)


def wrong_one(s: Spec) -> st.SearchStrategy:
    """A single value the Spec refuses: the wrong type, or a number outside its range."""
    if s.kind is bool:
        return st.one_of(WORDS, st.integers(-5, 5), st.floats(allow_nan=False))
    if s.kind is str:
        return st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2))
    options = [WORDS, st.booleans(), st.lists(st.integers(0, 9), min_size=1, max_size=2)]
    if s.kind is int:
        options.append(st.floats(-1e6, 1e6).filter(lambda x: x != int(x)))
    else:
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    if s.low is not None:
        options.append(_below(s))
    if s.high is not None:
        options.append(_above(s))
    return st.one_of(options)


def right_one(s: Spec) -> st.SearchStrategy:
    if s.kind is bool:
        return st.booleans()
    if s.kind is str:
        return WORDS
    low = None if s.low is None else s.low + (1 if s.above and s.kind is int else 0)
    high = None if s.high is None else s.high - (1 if s.below and s.kind is int else 0)
    if s.kind is int:
        return st.integers(int(low) if low is not None else -BIG, min(int(high), BIG) if high is not None else BIG)
    return st.floats(low, high, exclude_min=s.above, exclude_max=s.below, allow_nan=False, allow_infinity=False)


def wrong_value(section: str, key: str) -> st.SearchStrategy:
    s, choices = SPECS[section, key], allowed(section, key)
    if choices:
        return st.one_of(WORDS.filter(lambda w: w not in choices), st.integers(4, 99), st.booleans())
    if not s.many:
        return wrong_one(s)
    one = dataclasses.replace(s, many=False, counts=None)
    options = [WORDS, st.integers(), st.booleans(),
               st.lists(right_one(one), max_size=3).flatmap(
                   lambda good: st.tuples(st.integers(0, len(good)), wrong_one(one)).map(
                       lambda bad: [*good[:bad[0]], bad[1], *good[bad[0]:]]))]
    if s.counts is not None:
        options.append(st.lists(right_one(one), max_size=10).filter(lambda v: len(v) not in s.counts))
    return st.one_of(options)


def right_value(section: str, key: str) -> st.SearchStrategy:
    s, choices = SPECS[section, key], allowed(section, key)
    if choices:
        return st.sampled_from(choices)
    if not s.many:
        return right_one(s)
    one = dataclasses.replace(s, many=False, counts=None)
    counts = s.counts if s.counts is not None else range(0, 4)
    return st.sampled_from(list(counts)).flatmap(lambda n: st.lists(right_one(one), min_size=n, max_size=n))


CONFIG_KEYS = sorted(k for k in SPECS if k[0] in SECTIONS)
ALL_KEYS = sorted(SPECS)


def wrong_setting(keys: list[tuple[str, str]]) -> st.SearchStrategy:
    return st.sampled_from(keys).flatmap(lambda k: st.tuples(st.just(k), wrong_value(*k)))


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


# -- the declaration -------------------------------------------------------------------------------------------
def test_every_number_and_list_setting_declares_its_range():
    # A new numeric setting without a declared range fails here, not in a user's run.
    for (section, key), s in SPECS.items():
        if s.kind in (int, float) or s.many:
            assert (section, key) in RANGES or allowed(section, key), (section, key)
    assert set(RANGES) <= set(SPECS), set(RANGES) - set(SPECS)
    for s in OPTIONS.values():
        assert s.kind in (int, float)


def test_the_types_come_from_the_config_fields():
    from engine.config import ModelConfig, TrainConfig

    assert spec("train", "lr").kind is float and spec("train", "steps").kind is int
    assert spec("model", "attention_levels").kind is bool and spec("model", "attention_levels").many
    hints = typing.get_type_hints(TrainConfig) | typing.get_type_hints(ModelConfig)
    assert hints["lr"] is float and hints["block_out_channels"] == list[int]


def test_every_preset_is_within_the_declared_ranges():
    for name in preset_names():
        cfg = load_preset(name)
        for (section, key), s in SPECS.items():
            value = getattr(getattr(cfg, section), key)
            assert s.check(value) == value, (name, section, key)
        assert cfg.model.image_size % size_multiple(cfg) == 0, name


def test_messages_say_what_a_value_must_be():
    assert Spec(1, kind=int).describe() == "a whole number ≥ 1"
    assert Spec(0, 1, above=True, kind=float).describe() == "a number > 0 and ≤ 1"
    assert spec("data", "spacing").describe() == "a list of 0 or 3 numbers > 0"
    assert spec("model", "block_out_channels").describe() == "a list of 1 to 8 whole numbers ≥ 1"
    assert Spec(1, kind=int).parse("1e4") == 10000 and spec("train", "lr").check(1) == 1.0
    with pytest.raises(ValueError, match=r"must be a whole number ≥ 1 \(got 2.5\)"):
        Spec(1, kind=int).parse("2.5")


@HYPOTHESIS
@given(st.sampled_from(ALL_KEYS).flatmap(lambda k: st.tuples(st.just(k), right_value(*k))))
def test_values_within_the_declared_ranges_are_taken(setting):
    (section, key), value = setting
    s = SPECS[section, key]
    got = s.check(value)
    assert got == value and type(got) is type(value)
    if s.kind is float and not s.many and value == int(value):
        assert type(s.check(int(value))) is float  # TOML's 1 for a number setting is 1.0


@HYPOTHESIS
@given(wrong_setting(CONFIG_KEYS))
def test_a_wrong_value_from_any_source_names_the_source_and_the_key(setting):
    (section, key), value = setting
    for source in ("run.toml", "command line", "/runs/a/config.json"):
        with pytest.raises(InputError) as caught:
            merge(load_preset("demo"), {section: {key: value}}, source)
        assert str(caught.value).startswith(f"{source}: {section}.{key} "), str(caught.value)
        assert "\n" not in str(caught.value)


# -- a --config TOML: refused before the run folder exists -------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_set(tmp_path_factory.mktemp("data") / "d.h5", make_phantoms(8, 16))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize(("toml", "message"), [
    ("[train]\ncheckpoint_every = 0", "train.checkpoint_every must be a whole number ≥ 1 (got 0)"),
    ("[train]\nlog_every = 0", "train.log_every must be a whole number ≥ 1 (got 0)"),
    ('[train]\nsteps = "abc"', "train.steps must be a whole number ≥ 1 (got 'abc')"),
    ('[train]\nlr = "fast"', "train.lr must be a number > 0 and ≤ 1 (got 'fast')"),
    ('[model]\nimage_size = "big"', "model.image_size must be a whole number from 8 to 2048 (got 'big')"),
    ("[train]\nbatch = -4", "train.batch must be a whole number ≥ 1 (got -4)"),
    ("[model]\nblock_out_channels = []", "model.block_out_channels must be a list of 1 to 8 whole numbers ≥ 1"),
    ('[model]\nattention_levels = "yes"', "model.attention_levels must be a list of 0 to 8 true / false values"),
    ("[model]\nimage_size = 30", "model.image_size 30 must be a multiple of 4 for the 3 levels"),
    ("[model]\nattention_head_dim = 128", "model.attention_head_dim 128 must be at most the channels"),
    ('[train]\nbeta_schedule = "cubic"', "train.beta_schedule = 'cubic'; expected one of"),
    ("[train]\nema_decay = 1.0", "train.ema_decay must be a number ≥ 0 and < 1 (got 1.0)"),
    ("[data]\nspacing = [1.0, 1.0]", "data.spacing must be a list of 0 or 3 numbers > 0 (got [1.0, 1.0])"),
    ("model = 3", "[model] must be a table of settings (got 3)"),
])
def test_the_reported_faults_of_a_toml_are_one_line_and_no_run_folder(data, tmp_path, capsys, toml, message):
    config = tmp_path / "run.toml"
    config.write_text(toml + "\n")
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--config", str(config)]) == 2
    assert one_error_line(capsys).startswith(f"medsynth: error: {config}: {message}")
    assert not out.exists()


@HYPOTHESIS
@given(setting=wrong_setting(CONFIG_KEYS))
def test_any_wrong_toml_value_is_refused_before_the_run_folder(data, tmp_path_factory, capsys, setting):
    (section, key), value = setting
    root = tmp_path_factory.mktemp("toml")
    config = root / "run.toml"
    config.write_text(f"[{section}]\n{key} = {toml_value(value)}\n")
    out = root / "run"
    assert main(["train", str(data), "--out", str(out), "--config", str(config)]) == 2
    assert one_error_line(capsys).startswith(f"medsynth: error: {config}: {section}.{key} ")
    assert not out.exists()


def test_settings_fine_alone_but_not_together_name_the_last_source_that_set_them(data, tmp_path, capsys):
    config = tmp_path / "deep.toml"
    config.write_text("[model]\nblock_out_channels = [16, 32, 32, 32]\n"
                      "attention_levels = [false, false, false, true]\n")
    assert resolve("demo", config, {}).model.block_out_channels == [16, 32, 32, 32]  # 32 px: a multiple of 8
    with pytest.raises(InputError, match=r"^command line: model.image_size 20 must be a multiple of 8 for the 4"):
        resolve("demo", config, {"model": {"image_size": 20}})
    # The preset's 28 px suits its 3 levels; the TOML's fourth level makes it wrong, so the TOML is named.
    with pytest.raises(InputError, match=rf"^{config}: model.image_size 28 must be a multiple of 8"):
        resolve("medmnist-28", config, {})
    assert resolve("medmnist-28", config, {"model": {"image_size": 32}}).model.image_size == 32
    # A latent preset: the autoencoder's levels halve the image too.
    assert size_multiple(load_preset("brain-128")) == 16
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--preset", "brain-128", "--size", "120"]) == 2
    assert one_error_line(capsys) == "medsynth: error: command line: model.image_size 120 must be a multiple of 16 " \
                                     "for the 3 levels in model.block_out_channels and 3 in autoencoder.channels " \
                                     "(each level after the first halves it)"
    assert not (tmp_path / "run").exists()


# -- a run folder's config.json: refused on resume, naming the file, the folder untouched -----------------------
def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory):
    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("resume") / "run"))


@HYPOTHESIS
@given(setting=wrong_setting(ALL_KEYS))
def test_any_wrong_config_json_value_is_refused_on_resume_with_the_file_named(run_copy, capsys, setting):
    (section, key), value = setting
    path = run_copy / "config.json"
    good = path.read_text()
    values = json.loads(good)
    values.setdefault(section, {})[key] = value
    path.write_text(json.dumps(values))
    before = snapshot(run_copy)
    try:
        assert main(["train", "--resume", "--out", str(run_copy)]) == 2
        assert one_error_line(capsys).startswith(f"medsynth: error: {path}: {section}.{key} ")
        assert snapshot(run_copy) == before
    finally:
        path.write_text(good)


@pytest.mark.parametrize(("change", "message"), [
    (lambda v: v["train"].update(who=1), "unknown setting train.who"),
    (lambda v: v["train"].update(steps="many"), "train.steps must be a whole number ≥ 1 (got 'many')"),
    (lambda v: v.update(facts={"num_classes": "four"}), "facts.num_classes must be a whole number ≥ 0"),
    (lambda v: v.update(facts=[1]), "[facts] must be a table of settings"),
    (lambda v: v["facts"].update(mask_mode="both"), "facts.mask_mode = 'both'; expected one of"),
    (lambda v: v["model"].update(image_size=17), "model.image_size 17 must be a multiple of 2"),
])
def test_config_json_faults_name_the_file(run_copy, capsys, change, message):
    path = run_copy / "config.json"
    good = path.read_text()
    values = json.loads(good)
    change(values)
    path.write_text(json.dumps(values))
    try:
        with pytest.raises(InputError, match=rf"^{path}: ") as caught:
            load(path)
        assert message in str(caught.value)
        assert main(["train", "--resume", "--out", str(run_copy), "--steps", "30"]) == 2
        assert one_error_line(capsys).startswith(f"medsynth: error: {path}: ")
        assert not (run_copy / "checkpoints" / "step_0000030").exists()
    finally:
        path.write_text(good)
    path.write_text("[1, 2]")
    try:
        with pytest.raises(InputError, match=rf"^{path}: does not hold a config"):
            load(path)
    finally:
        path.write_text(good)


def test_from_dict_names_the_file_it_is_given(tiny_run):
    state = json.loads(next((tiny_run / "checkpoints").glob("step_*/state.json")).read_text())
    assert from_dict(state["config"], "x/state.json").train.steps == 20
    state["config"]["train"]["lr"] = -1
    with pytest.raises(InputError, match=r"^x/state.json: train.lr must be a number > 0 and ≤ 1 \(got -1\)$"):
        from_dict(state["config"], "x/state.json")


# -- flags -------------------------------------------------------------------------------------------------------
FLAG_CASES = [
    (["train", "D", "--out", "R", "--batch", "0"], "argument --batch: must be a whole number ≥ 1 (got 0)"),
    (["train", "D", "--out", "R", "--lr", "-1"], "argument --lr: must be a number > 0 and ≤ 1 (got -1)"),
    (["train", "D", "--out", "R", "--size", "7"], "argument --size: must be a whole number from 8 to 2048 (got 7)"),
    (["train", "D", "--out", "R", "--size", "0"], "argument --size: must be a whole number from 8 to 2048 (got 0)"),
    (["train", "D", "--out", "R", "--steps", "0"], "argument --steps: must be a whole number ≥ 1 (got 0)"),
    (["train", "--resume", "--out", "R", "--steps", "0"], "argument --steps: must be a whole number ≥ 1 (got 0)"),
    (["train", "D", "--out", "R", "--memory-limit", "-1"], "argument --memory-limit: must be a number ≥ 0 (got -1)"),
    (["train", "D", "--out", "R", "--spacing", "1", "0", "1"], "argument --spacing: must be a number > 0 (got 0)"),
    (["train", "D", "--out", "R", "--seed", "-3"], "argument --seed: must be a whole number from 0 to"),
    (["sample", "R", "--n", "2", "--out", "x.h5", "--steps", "0"], "argument --steps: must be a whole number ≥ 1"),
    (["sample", "R", "--n", "0", "--out", "x.h5"], "argument --n: must be a whole number ≥ 1 (got 0)"),
    (["sample", "R", "--n", "2", "--out", "x.h5", "--guidance", "-5"], "argument --guidance: must be a number ≥ 0"),
    (["sample", "R", "--n", "2", "--out", "x.h5", "--batch", "abc"], "argument --batch: must be a whole number ≥ 1"),
    (["evaluate", "f.h5", "--threshold", "5"], "argument --threshold: must be a number from 0 to 1 (got 5)"),
    (["evaluate", "f.h5", "--max-samples", "0"], "argument --max-samples: must be a whole number ≥ 1 (got 0)"),
    (["export", "f.h5", "--to", "o", "--format", "png", "--max-corr", "1.5"], "argument --max-corr: must be a number"),
    (["demo", "--steps", "0"], "argument --steps: must be a whole number ≥ 1 (got 0)"),
]


@pytest.mark.parametrize(("argv", "message"), FLAG_CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_flag_values_out_of_range_are_argparse_errors(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


FLAG_SPECS = [("--batch", spec(*OVERRIDES["batch"])), ("--lr", spec(*OVERRIDES["lr"])),
              ("--size", spec(*OVERRIDES["size"])), ("--memory-limit", spec(*OVERRIDES["memory_limit"])),
              ("--steps", spec(*OVERRIDES["steps"])), ("--autoencoder-steps", spec(*OVERRIDES["autoencoder_steps"]))]


@HYPOTHESIS
@given(st.sampled_from(FLAG_SPECS).flatmap(lambda f: st.tuples(st.just(f[0]), wrong_one(f[1]).filter(
    lambda v: not isinstance(v, list)))))
def test_any_wrong_train_flag_is_one_argparse_error(capsys, flag_value):
    flag, value = flag_value
    word = toml_value(value).strip('"')
    with pytest.raises(SystemExit) as caught:
        main(["train", "D", "--out", "R", f"{flag}={word}"])
    assert caught.value.code == 2
    assert f"error: argument {flag}: must be " in capsys.readouterr().err


def test_flags_take_what_the_declaration_allows(tmp_path):
    from medsynth.cli import build_parser

    args = build_parser().parse_args(["train", "D", "--out", "R", "--steps", "1e3", "--lr", "1", "--size", "8",
                                      "--spacing", "1", "1", "2.5", "--memory-limit", "0"])
    assert (args.steps, args.lr, args.size, args.spacing, args.memory_limit) == (1000, 1.0, 8, [1.0, 1.0, 2.5], 0.0)
    args = build_parser().parse_args(["sample", "R", "--n", "1", "--out", "x", "--guidance", "0", "--steps", "1"])
    assert (args.n, args.guidance, args.steps) == (1, 0.0, 1)


# -- the app -----------------------------------------------------------------------------------------------------
def test_the_app_spin_boxes_take_the_declared_ranges(qtbot):
    from medsynth_gui.panels.generate_panel import GeneratePanel
    from medsynth_gui.panels.train_panel import TrainPanel

    train, generate = TrainPanel(), GeneratePanel()
    qtbot.addWidget(train)
    qtbot.addWidget(generate)
    assert train.steps_spin.minimum() == spec("train", "steps").low == 1  # no untrained run from the app
    assert train.batch_spin.minimum() == 1 and train.lr_spin.minimum() > 0 and train.lr_spin.maximum() == 1
    assert (train.size_spin.minimum(), train.size_spin.maximum()) == (8, 2048)
    assert generate.steps_spin.minimum() == OPTIONS["sample", "steps"].low
    assert generate.guidance.minimum() == 0 and generate.n_spin.minimum() == 1
    assert generate.seed_spin.maximum() == OPTIONS["sample", "seed"].high
    train.preset.setCurrentText("brain-128")
    assert train.size_spin.singleStep() == 16  # the arrows step through sizes the networks take


def test_the_train_panel_refuses_a_size_the_networks_cannot_take(qtbot, data, tmp_path):
    from medsynth_gui.panels.train_panel import TrainPanel

    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.preset.setCurrentText("demo")
    panel.data_edit.setText(str(data))
    panel.run_edit.setText(str(tmp_path / "run"))
    panel.size_spin.setValue(30)
    panel.start()
    assert panel.error.text().startswith("Train panel: model.image_size 30 must be a multiple of 4")
    assert "--" not in panel.error.text() and not panel.runner.running
    assert not (tmp_path / "run").exists()


def test_sampling_with_more_steps_than_the_model_has_noise_levels_is_refused(tiny_run, tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert main(["sample", str(tiny_run), "--n", "2", "--steps", "5000", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "was trained with 1000 noise levels: sample it with at most that many steps (not 5000)" in line
    assert str(tiny_run) in line and not out.exists()


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xfe\x00bad", "is not valid TOML ('utf-8' codec can't decode"),
    (b"[train]\nsteps = " + b"9" * 5000 + b"\n", "is not valid TOML (Exceeds the limit"),
    (None, "cannot be read (Is a directory)"),
])
def test_a_toml_that_cannot_be_read_is_one_line(data, tmp_path, capsys, content, message):
    config = tmp_path / "run.toml"
    config.mkdir() if content is None else config.write_bytes(content)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    assert one_error_line(capsys).startswith(f"medsynth: error: {config}: {message}")
    assert not (tmp_path / "run").exists()


def test_a_config_json_that_is_not_text_names_the_file(run_copy, capsys):
    path = run_copy / "config.json"
    good = path.read_bytes()
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    try:
        assert main(["train", "--resume", "--out", str(run_copy)]) == 2
        assert one_error_line(capsys).startswith(f"medsynth: error: {path}: is not valid JSON")
    finally:
        path.write_bytes(good)


def test_numbers_beyond_any_float_and_long_values_are_refused_in_one_short_line():
    with pytest.raises(ValueError, match=r"^must be a number > 0 and ≤ 1 \(got 1000"):
        spec("train", "lr").check(10**400)
    with pytest.raises(ValueError) as caught:
        spec("model", "block_out_channels").check(["x"] * 1000)
    assert len(str(caught.value)) < 150 and str(caught.value).endswith("…)")
    with pytest.raises(InputError) as caught:
        merge(load_preset("demo"), {"train": {"loss": "x" * 10_000}}, "run.toml")
    assert str(caught.value).startswith("run.toml: train.loss = 'xxx") and len(str(caught.value)) < 200
