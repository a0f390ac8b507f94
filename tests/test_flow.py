"""Flow matching: the objective trains, records itself, resumes exactly and samples with the flow samplers only."""

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.config import from_dict, load, resolve
from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.inference.sample import SampleJob
from engine.jobs import Loss, Requests, execute
from engine.models.diffusion import flow_shift, noise_levels, sampler
from engine.settings import Objective, Sampler, sampler_fault, samplers_for
from engine.training.run_dir import RunDir
from engine.training.train import TrainJob
from medsynth.cli import main
from tests.conftest import StopAfter, tiny_config


def train(cfg, folder, data, requests=None):
    events = []
    events.append(execute(TrainJob(cfg, folder, data=data), events.append, requests or Requests()))
    return events


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, phantoms16):
    folder = tmp_path_factory.mktemp("flow") / "run"
    events = train(tiny_config(steps=60, objective="flow", lr=2e-3), folder, phantoms16)
    return folder, [e.loss for e in events if isinstance(e, Loss)]


def test_a_flow_model_learns_and_samples_with_euler_by_default(flow_run, tmp_path, capsys):
    folder, losses = flow_run
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2])
    state = json.loads((RunDir(folder).latest() / "state.json").read_text())
    assert state["config"]["train"]["objective"] == "flow"  # the checkpoint records it
    out = tmp_path / "s.h5"
    assert main(["sample", str(folder), "--n", "4", "--out", str(out)]) == 0  # sampler and steps: the model's
    assert "sampling 4 with euler x 10 steps" in capsys.readouterr().err
    with h5py.File(out) as f:
        images = f["images"][:]
        assert f.attrs["n_complete"] == 4 and json.loads(f.attrs["config"])["train"]["objective"] == "flow"
    # Phantoms span 0..1000: samples come back in the data's units, finite and not collapsed to one value.
    assert np.isfinite(images).all() and images.max() > 50 and images.std() > 10
    assert main(["info", str(folder)]) == 0
    assert "objective flow" in capsys.readouterr().out


def test_heun_samples_a_flow_model_and_repeats_its_seeds(flow_run, tmp_path):
    folder, _ = flow_run
    outs = []
    for name in ("a", "b"):
        SampleJob(folder, 3, tmp_path / f"{name}.h5", sampler_name="heun", steps=4, seed=5,
                  redraw_mismatches=False).run(lambda e: None, Requests())
        with h5py.File(tmp_path / f"{name}.h5") as f:
            outs.append(f["images"][:])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.isfinite(outs[0]).all()


def test_a_sampler_that_does_not_fit_the_objective_is_one_line_and_exit_2(flow_run, tiny_run, tmp_path, capsys):
    folder, _ = flow_run
    out = tmp_path / "x.h5"
    for run, asked, fits in ((folder, "ddim", "euler or heun"), (tiny_run, "euler", "dpm or ddim or ddpm")):
        capsys.readouterr()
        assert main(["sample", str(run), "--n", "2", "--out", str(out), "--sampler", asked]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"sample it with {fits} (not {asked})" in err[0], err
        assert not list(tmp_path.iterdir())  # nothing written, not even a partial file


def test_the_rule_of_which_sampler_fits_is_one_table():
    assert [s.value for s in samplers_for("flow")] == ["euler", "heun"]
    assert samplers_for("v_prediction")[0] == Sampler.DPM and samplers_for("epsilon") == samplers_for("v_prediction")
    assert {s for o in Objective for s in samplers_for(o)} == set(Sampler)  # every sampler fits some objective
    assert sampler_fault("euler", "flow") is None and "not dpm" in sampler_fault("dpm", "flow")


def test_the_flow_step_noises_along_a_straight_path_and_targets_the_velocity():
    from engine.training.steps import Batch, noised_loss

    tc = tiny_config(objective="flow").train
    x0, noise = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    levels = noise_levels(tc, (8, 8))
    sigma = levels[t]
    assert sigma[0] == 1.0 and torch.all(sigma[:-1] > sigma[1:])  # index 0 is pure noise, as DDPM's last step
    seen = {}

    def zero_net(inp, timesteps, class_labels=None):
        seen["inp"], seen["t"] = inp, timesteps
        return SimpleNamespace(sample=torch.zeros_like(x0))

    loss = noised_loss(zero_net, Batch(x0, noise, t), levels, tc)
    torch.testing.assert_close(loss, (noise - x0).pow(2).mean())
    s = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["inp"], (1 - s) * x0 + s * noise)
    torch.testing.assert_close(seen["t"], sigma * 1000)  # diffusers' flow timesteps: sigma x 1000


def test_3d_flow_shifts_its_timesteps_as_monai_rflow_does():
    from monai.networks.schedulers.rectified_flow import timestep_transform

    tc = tiny_config(objective="flow").train
    assert flow_shift((28, 28)) == 1.0 and flow_shift((32, 32, 32)) == 1.0
    assert flow_shift((64, 64, 64)) == pytest.approx(2.0)
    # diffusers' shifted training sigmas for a 64^3 input are MONAI's (MAISI's) transformed timesteps / 1000.
    levels = noise_levels(tc, (64, 64, 64))
    linear = torch.arange(1000, 0, -1).float()
    theirs = timestep_transform(linear, torch.tensor(64 ** 3), spatial_dim=3) / 1000
    torch.testing.assert_close(levels, theirs.float(), rtol=1e-5, atol=1e-6)
    assert levels[500] > noise_levels(tc, (32, 32, 32))[500]  # a larger volume trains at higher noise
    euler = sampler("euler", tc, spatial=(64, 64, 64))
    assert euler.config.shift == pytest.approx(2.0)  # and samples on the same shifted schedule


def test_a_tiny_3d_flow_model_trains_and_samples(tmp_path):
    from tests.test_volumes import tiny_3d

    cfg = tiny_3d(6)
    cfg.train.objective = "flow"
    events = train(cfg, tmp_path / "run", make_phantoms(6, size=16, dims=3))
    assert all(np.isfinite([e.loss for e in events if isinstance(e, Loss)]))
    out = tmp_path / "v.h5"
    SampleJob(tmp_path / "run", 2, out, steps=3, batch=2, redraw_mismatches=False).run(lambda e: None, Requests())
    with h5py.File(out) as f:
        assert f["images"].shape == (2, 1, 16, 16, 16) and np.isfinite(f["images"][:]).all()
        assert f["masks"].shape == (2, 16, 16, 16)


def test_a_resumed_flow_run_equals_the_uninterrupted_one(tmp_path, phantoms16):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(steps=14, objective="flow"), straight, phantoms16)
    done = train(tiny_config(steps=14, objective="flow"), split, phantoms16, StopAfter(6))[-1]
    assert done.cancelled and done.result["step"] == 6
    events = []
    execute(TrainJob(None, split, resume=True, data=phantoms16), events.append, Requests())
    assert load(split / "config.json").train.objective == "flow"
    a, b = RunDir(straight).latest(), RunDir(split).latest()
    for name in ("model", "ema", "optimizer"):
        wa, wb = load_file(a / f"{name}.safetensors"), load_file(b / f"{name}.safetensors")
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")


def test_configs_written_before_flow_read_prediction_as_the_objective(tmp_path):
    old = tiny_config().to_dict()
    old["train"]["prediction"] = old["train"].pop("objective")
    old["train"]["prediction"] = "epsilon"
    assert from_dict(old).train.objective == "epsilon"
    toml = tmp_path / "t.toml"
    toml.write_text('[train]\nprediction = "epsilon"\n')
    assert resolve("demo", toml, {}).train.objective == "epsilon"
    toml.write_text('[train]\nprediction = "epsilon"\nobjective = "flow"\n')  # the new name wins
    assert resolve("demo", toml, {}).train.objective == "flow"
    toml.write_text('[train]\nobjective = "rectified"\n')
    with pytest.raises(InputError, match=r"t.toml: train.objective = 'rectified'; expected one of"):
        resolve("demo", toml, {})


def test_the_generate_panel_offers_only_the_samplers_that_fit_the_model(flow_run, tiny_run, qtbot):
    from medsynth_gui.panels.generate_panel import GeneratePanel

    panel = GeneratePanel()
    qtbot.addWidget(panel)
    combo = panel.sampler
    panel.set_checkpoint(str(flow_run[0]))
    assert [combo.itemText(i) for i in range(combo.count())] == [Sampler.EULER.label, Sampler.HEUN.label]
    assert combo.value() == "euler" and panel.steps_spin.value() == 10
    assert "flow matching objective" in panel.model_info.text()
    panel.set_checkpoint(str(tiny_run))
    assert [combo.itemData(i) for i in range(combo.count())] == ["dpm", "ddim", "ddpm"]
    assert combo.value() == "dpm" and panel.steps_spin.value() == 25
    combo.set_value("ddim")
    panel.set_checkpoint(str(tiny_run))  # a choice that still fits stays
    assert combo.value() == "ddim"


def test_the_train_panel_sets_the_objective(qtbot):
    from medsynth_gui.panels.train_panel import TrainPanel

    panel = TrainPanel()
    qtbot.addWidget(panel)
    assert [panel.objective_combo.itemData(i) for i in range(panel.objective_combo.count())] == Objective.values()
    assert panel.objective_combo.value() == "v_prediction"  # the demo preset's
    panel.objective_combo.set_value("flow")
    assert panel.config().train.objective == "flow"


def test_euler_at_10_steps_keeps_the_phantom_rules_at_least_as_well_as_v_at_25(tmp_path):
    """The same budget (network, batch, steps, seed, data); flow sampled with Euler x 10, v with its default
    DPM-Solver++ x 25: 2.5x fewer network calls, and the lesion count and contrast rules at least as well kept."""
    from engine.evaluation.metrics.phantom_fidelity import phantom_fidelity
    from engine.inference.sample import Generator

    data = make_phantoms(256, size=16, seed=1)
    n = 32
    seeds, labels = list(range(n)), [s % 4 for s in range(n)]
    got = {}
    for objective, name, steps in (("v_prediction", "dpm", 25), ("flow", "euler", 10)):
        train(tiny_config(steps=150, objective=objective, lr=2e-3, checkpoint_every=1000), tmp_path / objective, data)
        images, masks = Generator(tmp_path / objective, device="cpu").generate(seeds, labels, name, steps)
        got[objective] = phantom_fidelity(images, masks, np.array(labels))
    flow, v = got["flow"], got["v_prediction"]
    for key in ("mask_class_agreement", "image_mask_agreement"):
        assert flow[key] >= v[key] - 1 / n, (key, got)  # one sample's worth of slack for other machines' rounding
    assert flow["image_mask_agreement"] > 0.75, got  # the contrast rule learned, not a tie at chance


def test_a_latent_flow_model_learns_its_latents_and_samples_volumes(tmp_path):
    from engine.models.networks import diffusion_shape
    from tests.test_latent import tiny_latent

    cfg = tiny_latent()
    cfg.train.objective = "flow"
    events = train(cfg, tmp_path / "run", make_phantoms(6, size=16, dims=3, seed=3))
    assert events[-1].result["step"] == 4 and all(np.isfinite([e.loss for e in events if isinstance(e, Loss)]))
    latent = diffusion_shape(cfg)[1:]
    assert latent == (8, 8, 8) and flow_shift(latent) == pytest.approx(0.25)  # the latent's size sets it
    out = tmp_path / "v.h5"
    SampleJob(tmp_path / "run", 2, out, steps=3, batch=2, redraw_mismatches=False).run(lambda e: None, Requests())
    with h5py.File(out) as f:
        assert f["images"].shape == (2, 1, 16, 16, 16) and np.isfinite(f["images"][:]).all()
        assert f["masks"].shape == (2, 16, 16, 16)


def test_objective_is_a_train_flag_with_prediction_its_old_name():
    from medsynth.cli import _overrides, build_parser

    for flag in ("--objective", "--prediction"):
        args = build_parser().parse_args(["train", "d.h5", "--out", "r", flag, "flow"])
        assert _overrides(args)["train"] == {"objective": "flow"}
