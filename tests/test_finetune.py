"""Fine-tuning a Stable-Diffusion-format model with text prompts, on a tiny SD model the test builds (tests/sd_tiny.py):
LoRA trains only adapters and lowers the loss, resuming equals the uninterrupted run, prompts and classes reach the
HDF5 file, a prompt changes the image a seed gives, the single-file and pickle forms, and the command line."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine import config
from engine.data.phantoms import make_phantoms
from engine.data.prepare import to_tensors
from engine.errors import InputError
from engine.inference.prompted import PromptedGenerator
from engine.inference.sample import SampleJob
from engine.io import medsynth_h5
from engine.jobs import Requests, execute
from engine.models import stable_diffusion as sd
from engine.models.diffusion import noise_levels
from engine.runtime import memory
from engine.training import checkpoints
from engine.training.jobs import train_job
from engine.training.run_dir import RunDir
from engine.training.steps import Batch, noised_loss
from medsynth.cli import main
from tests.conftest import StopAfter
from tests.sd_tiny import make_tiny_sd, write_ckpt, write_single_file

TEMPLATE = "phantom, {class}"


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def phantoms():
    return make_phantoms(16, size=32)


def fine_tune_config(model, steps: int = 6, rank: int = 4, lr: float = 1e-3, **pretrained) -> config.RunConfig:
    return config.resolve(config.FINE_TUNE_PRESET, None, {
        "pretrained": {"path": str(model), "prompt_template": TEMPLATE, "lora_rank": rank, **pretrained},
        "train": {"steps": steps, "batch": 4, "cpu_batch": 4, "lr": lr, "warmup_steps": 0, "log_every": 1,
                  "checkpoint_every": 3, "preview_every": 0},
        "model": {"image_size": 32}})


def train(cfg, run_dir, data, requests=None):
    events = []
    done = execute(train_job(cfg, run_dir, data=data), events.append, requests or Requests())
    return done, events


def sample(run, out, n=2, **kw):
    done = execute(SampleJob(run, n, out, steps=4, guidance=3.0, **kw), lambda e: None, Requests())
    assert not done.cancelled, done
    with medsynth_h5.open_file(out) as f:
        labels = f["labels"][:] if "labels" in f else None
        return f["images"][:], medsynth_h5.read_prompts(f), labels


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_sd, phantoms):
    run = tmp_path_factory.mktemp("lora") / "run"
    done, _ = train(fine_tune_config(tiny_sd, steps=30, lr=1e-2), run, phantoms)
    assert not done.cancelled, done
    return run


def held_loss(gen: PromptedGenerator, data, base: bool = False) -> float:
    """The fine-tune's loss on the training images at fixed noise and timesteps; `base`: with the adapters' B
    matrices zeroed, which is the pretrained model itself (LoRA starts there)."""
    if base:
        gen.model.load_state_dict({k: torch.zeros_like(v) if "lora_B" in k else v
                                   for k, v in gen.model.state_dict().items()})
    rows = torch.tensor(gen.use_prompts([TEMPLATE.replace("{class}", data.class_names[k]) for k in data.labels]))
    z = sd.encode_images(gen.parts, to_tensors(data, gen.norm, 32, "none", 0, False).x)
    g = torch.Generator().manual_seed(1)
    noise, t = torch.randn(z.shape, generator=g), torch.randint(0, 1000, (len(z),), generator=g)
    with torch.no_grad():
        return noised_loss(gen.model, Batch(z, noise, t, None, rows), noise_levels(gen.cfg.train, z.shape[2:]),
                           gen.cfg.train).item()


def test_lora_trains_only_adapters_from_the_models_own_schedule_and_lowers_the_loss(lora_run, tiny_sd, phantoms):
    ckpt = RunDir(lora_run).latest()
    weights = load_file(ckpt / "model.safetensors")
    assert weights and all("lora_" in k for k in weights)  # only the adapters: the base stays in the user's files
    unet_bytes = sum(p.stat().st_size for p in (tiny_sd / "unet").glob("*.safetensors"))
    assert (ckpt / "model.safetensors").stat().st_size < unet_bytes / 3
    assert set(load_file(ckpt / "ema.safetensors")) == set(weights)
    state = checkpoints.read_state(ckpt)
    scheduler = json.loads((tiny_sd / "scheduler" / "scheduler_config.json").read_text())
    cfg = state["config"]["train"]
    assert (cfg["beta_schedule"], cfg["beta_start"], cfg["beta_end"], cfg["objective"]) == (
        scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"], scheduler["prediction_type"])
    assert sorted(state["prompts"]) == sorted({TEMPLATE.replace("{class}", phantoms.class_names[k])
                                               for k in phantoms.labels})  # what the app offers as history
    before = held_loss(PromptedGenerator(ckpt, "cpu", use_ema=False), phantoms, base=True)
    after = held_loss(PromptedGenerator(ckpt, "cpu", use_ema=False), phantoms)
    assert after < 0.9 * before, (before, after)


def test_a_resumed_fine_tune_equals_the_uninterrupted_one(tmp_path, tiny_sd, phantoms):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(fine_tune_config(tiny_sd, steps=6), straight, phantoms)
    done, _ = train(fine_tune_config(tiny_sd, steps=6), split, phantoms, StopAfter(4))
    assert done.cancelled and done.result["step"] == 4
    assert all("lora_" in k for k in load_file(RunDir(split).latest() / "model.safetensors"))
    execute(train_job(None, split, resume=True, data=phantoms), lambda e: None, Requests())
    a, b = RunDir(straight).latest(), RunDir(split).latest()
    assert a.name == b.name == "step_0000006"
    for name in ("model", "ema", "optimizer"):
        wa, wb = load_file(a / f"{name}.safetensors"), load_file(b / f"{name}.safetensors")
        assert set(wa) == set(wb)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")


def test_samples_keep_their_prompt_and_class_and_a_seed_repeats_its_image(lora_run, tmp_path):
    images, prompts, labels = sample(lora_run, tmp_path / "a.h5", prompts=["phantom, 1 lesion"])
    assert prompts == ["phantom, 1 lesion"] * 2 and labels.tolist() == [1, 1]  # the prompt is class 1's
    again, _, _ = sample(lora_run, tmp_path / "again.h5", prompts=["phantom, 1 lesion"])
    np.testing.assert_array_equal(images, again)
    other, _, _ = sample(lora_run, tmp_path / "b.h5", prompts=["phantom, no lesion"])
    assert np.abs(images - other).mean() > 1e-3 * np.abs(images).mean()  # the prompt reaches the UNet
    free, prompts, labels = sample(lora_run, tmp_path / "free.h5", prompts=["a phantom seen from far away"])
    assert labels is None and prompts == ["a phantom seen from far away"] * 2  # no class: no /labels
    _, prompts, labels = sample(lora_run, tmp_path / "mix.h5", n=6, class_mix="0:1,2:1")
    assert set(labels.tolist()) <= {0, 2} and prompts == [TEMPLATE.replace("{class}", n) for n in
                                                          np.array(["no lesion", "1 lesion", "2 lesions"])[labels]]
    negative, _, _ = sample(lora_run, tmp_path / "neg.h5", prompts=["phantom, 1 lesion"], negative_prompt="blurry")
    assert not np.array_equal(negative, images)


def test_a_prompts_file_gives_each_row_its_samples_and_class(lora_run, tmp_path):
    rows = tmp_path / "prompts.csv"
    rows.write_text("prompt,n,class\n\"phantom, 2 lesions\",2,2 lesions\nround phantom,1,\n")
    job = SampleJob(lora_run, 3, tmp_path / "f.h5", steps=3, prompts_file=rows)
    assert not execute(job, lambda e: None, Requests()).cancelled
    with medsynth_h5.open_file(tmp_path / "f.h5") as f:
        assert medsynth_h5.read_prompts(f) == ["phantom, 2 lesions"] * 2 + ["round phantom"]
        assert "labels" not in f  # one prompt stands for no class
    with pytest.raises(InputError, match="asks for 3 samples, not 4"):
        execute(SampleJob(lora_run, 4, tmp_path / "g.h5", steps=3, prompts_file=rows), lambda e: None, Requests())


def test_a_model_not_trained_from_text_refuses_a_prompt(tiny_run, tmp_path):
    with pytest.raises(InputError, match="was not trained from text"):
        SampleJob(tiny_run, 1, tmp_path / "x.h5", prompts=["a lesion"])._generator()


def test_the_single_file_form_loads_the_same_model_and_fine_tunes(tiny_sd, tmp_path, phantoms):
    single = write_single_file(tiny_sd, tmp_path / "tiny.safetensors")
    with pytest.raises(InputError, match=r"tiny.safetensors: is a single-file checkpoint.*diffusers folder"):
        sd.find_source(config.PretrainedConfig(path=str(single)))
    pretrained = config.PretrainedConfig(path=str(single), config_folder=str(tiny_sd))
    assert sd.native_size(pretrained) == 32
    a, b = sd.load(sd.find_source(pretrained)), sd.load(sd.find_source(config.PretrainedConfig(path=str(tiny_sd))))
    for net in ("unet", "vae", "text_encoder"):
        wa, wb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert set(wa) == set(wb)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), net
    done, _ = train(fine_tune_config(single, steps=2, config_folder=str(tiny_sd)), tmp_path / "run", phantoms)
    assert not done.cancelled
    images, prompts, _ = sample(tmp_path / "run", tmp_path / "s.h5", prompts=["phantom, 2 lesions"])
    assert np.isfinite(images).all() and prompts == ["phantom, 2 lesions"] * 2


def test_a_pickle_checkpoint_loads_only_when_trusted(tiny_sd, tmp_path):
    ckpt = write_ckpt(tiny_sd, tmp_path / "tiny.ckpt")
    with pytest.raises(InputError, match=r"tiny.ckpt: is a pickle checkpoint \(.ckpt\), which can run code"):
        sd.find_source(config.PretrainedConfig(path=str(ckpt), config_folder=str(tiny_sd)))
    trusted = sd.load(sd.find_source(config.PretrainedConfig(path=str(ckpt), config_folder=str(tiny_sd),
                                                             trust_pickle=True)))
    base = sd.load(sd.find_source(config.PretrainedConfig(path=str(tiny_sd))))
    assert all(torch.equal(v, base.unet.state_dict()[k]) for k, v in trusted.unet.state_dict().items())


@pytest.mark.parametrize("fault", ["no_index", "no_vae", "no_weights", "no_vocab", "xl", "wrong_suffix", "missing"])
def test_a_model_that_cannot_be_used_is_one_line_naming_what_is_missing(tiny_sd, tmp_path, fault):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd, folder)
    path, expected = folder, None
    if fault == "no_index":
        (folder / "model_index.json").unlink()
        expected = "has no model_index.json"
    elif fault == "no_vae":
        shutil.rmtree(folder / "vae")
        expected = "lacks vae/"
    elif fault == "no_weights":
        for f in (folder / "unet").glob("*.safetensors"):
            f.unlink()
        expected = "lacks the weights of unet/"
    elif fault == "no_vocab":
        (folder / "tokenizer" / "vocab.json").unlink()
        expected = "lacks tokenizer/vocab.json"
    elif fault == "xl":
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = "StableDiffusionXLPipeline"
        (folder / "model_index.json").write_text(json.dumps(index))
        expected = "fine-tunes Stable Diffusion 1.x / 2.x"
    elif fault == "wrong_suffix":
        path = tmp_path / "model.pt"
        path.write_bytes(b"\0")
        expected = "is neither a diffusers model folder nor a .safetensors / .ckpt"
    else:
        path = tmp_path / "nowhere"
        expected = "does not exist"
    with pytest.raises(InputError) as err:
        sd.find_source(config.PretrainedConfig(path=str(path)))
    assert expected in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_full_fine_tuning_and_the_text_encoder_train_what_they_say(tiny_sd, tmp_path, phantoms):
    done, _ = train(fine_tune_config(tiny_sd, steps=1, rank=0), tmp_path / "full", phantoms)
    full = load_file(done.result["checkpoint"] + "/model.safetensors")
    unet = sd.load(sd.find_source(config.PretrainedConfig(path=str(tiny_sd)))).unet.state_dict()
    assert {k.removeprefix("unet.") for k in full} == set(unet)
    done, _ = train(fine_tune_config(tiny_sd, steps=1, train_text_encoder=True), tmp_path / "text", phantoms)
    keys = set(load_file(done.result["checkpoint"] + "/model.safetensors"))
    assert any(k.startswith("text_encoder.") and "lora_" in k for k in keys)
    assert any(k.startswith("unet.") and "lora_" in k for k in keys)
    assert all("lora_" in k for k in keys)


def test_the_memory_estimate_counts_the_trained_weights(tiny_sd):
    lora, full = fine_tune_config(tiny_sd, rank=4), fine_tune_config(tiny_sd, rank=0)
    for cfg in (lora, full):
        cfg.facts.image_channels, cfg.facts.spatial_dims = 1, 2
    (a,), (b,) = memory.estimate(lora, "cpu"), memory.estimate(full, "cpu")
    unet = sd.load(sd.find_source(lora.pretrained)).unet
    assert b.params == sum(p.numel() for p in unet.parameters())
    assert 0 < a.params < b.params / 10 and a.state_bytes < b.state_bytes and a.activation_bytes > 0


def test_a_stop_keeps_an_adapter_checkpoint(tiny_sd, tmp_path, phantoms):
    done, _ = train(fine_tune_config(tiny_sd, steps=50), tmp_path / "run", phantoms, StopAfter(2))
    assert done.cancelled and done.result["step"] == 2
    assert all("lora_" in k for k in load_file(done.result["checkpoint"] + "/model.safetensors"))


def xray_folder(root, n: int = 8):
    """Chest X-rays as users bring them: 16-bit grey PNGs with labels.csv naming normal / pneumonia."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["stem,class"]
    for i in range(n):
        img = (rng.random((48, 48)) * 20000 + 20000 * (i % 2)).astype(np.uint16)
        Image.fromarray(img).save(images / f"cxr_{i:02d}.png")
        rows.append(f"cxr_{i:02d},{'pneumonia' if i % 2 else 'normal'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_the_command_line_fine_tunes_on_xrays_and_generates_from_findings(tiny_sd, tmp_path, capsys):
    data = xray_folder(tmp_path / "cxr")
    run = tmp_path / "run"
    assert main(["train", str(data), "--from-pretrained", str(tiny_sd), "--out", str(run), "--steps", "2",
                 "--batch", "2", "--lora", "4", "--prompt-template", "chest x-ray, {class}"]) == 0
    cfg = RunDir(run).read_config()
    assert cfg.preset == config.FINE_TUNE_PRESET and cfg.model.image_size == 32  # the model's own size
    out = tmp_path / "pneumonia.h5"
    assert main(["sample", str(run), "--prompt", "chest x-ray, pneumonia", "--n", "2", "--steps", "3",
                 "--out", str(out)]) == 0
    with medsynth_h5.open_file(out) as f:
        header = medsynth_h5.read_header(f)
        assert medsynth_h5.read_prompts(f) == ["chest x-ray, pneumonia"] * 2
        assert f["labels"][:].tolist() == [1, 1] and header.class_names == ["normal", "pneumonia"]
        assert f["images"].shape == (2, 1, 32, 32)  # grey in, grey out
        assert header.normalisation["bits"] == 16  # the X-rays' own units
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert 'prompts: 1 distinct (e.g. "chest x-ray, pneumonia")' in capsys.readouterr().out
    plain = tmp_path / "plain.h5"
    assert main(["sample", "--from-pretrained", str(tiny_sd), "--prompt", "a chest x-ray", "--n", "1",
                 "--steps", "2", "--out", str(plain)]) == 0
    with h5py.File(plain) as f:
        assert f["images"].shape == (1, 3, 32, 32)


def test_the_command_line_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    data = xray_folder(tmp_path / "cxr", n=2)
    assert main(["train", str(data), "--from-pretrained", str(tmp_path / "sd-v1-5"), "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sd-v1-5: does not exist" in err[0]
    assert not (tmp_path / "run").exists()
    assert main(["sample", "--n", "1", "--out", str(tmp_path / "x.h5")]) == 2
    assert "give a run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_fine_tune_one_run(tiny_sd, tmp_path):
    """Accelerate's data-parallel path (gloo on the CPU, as on several GPUs): one run, adapters only, one report."""
    import subprocess
    import sys
    from pathlib import Path

    data = xray_folder(tmp_path / "cxr")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "medsynth",
                        "train", str(data), "--from-pretrained", str(tiny_sd), "--out", str(run), "--steps", "4",
                        "--batch", "2", "--lora", "4", "--device", "cpu"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert r.returncode == 0, r.stderr[-6000:]
    assert r.stderr.count("(2 processes") == 1 and r.stdout.count("trained to step 4") == 1
    assert all("lora_" in k for k in load_file(RunDir(run).latest() / "model.safetensors"))


def test_a_v_prediction_model_keeps_its_objective_and_its_samplers(tmp_path, phantoms):
    """SD 2.x at 768 px predicts v: the fine-tune trains v and samples with the samplers that fit it."""
    model = make_tiny_sd(tmp_path / "v", prediction_type="v_prediction")
    done, _ = train(fine_tune_config(model, steps=1), tmp_path / "run", phantoms)
    assert checkpoints.read_state(done.result["checkpoint"])["config"]["train"]["objective"] == "v_prediction"
    images, _, _ = sample(tmp_path / "run", tmp_path / "ddim.h5", prompts=["phantom, 1 lesion"], sampler_name="ddim")
    assert np.isfinite(images).all()
    with pytest.raises(InputError, match="sample it with dpm or ddim or ddpm"):
        SampleJob(tmp_path / "run", 1, tmp_path / "e.h5", sampler_name="euler", prompts=["x"])._choose_sampler(
            PromptedGenerator(done.result["checkpoint"], "cpu"))
