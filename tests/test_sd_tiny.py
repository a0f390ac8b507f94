"""The tiny Stable-Diffusion-format model the fine-tuning tests build: each form loads offline with diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.sd_tiny import make_tiny_sd, write_ckpt, write_single_file

PROMPTS = ["chest x-ray, pneumonia", "chest x-ray, normal"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may reach the Hub. huggingface_hub reads HF_HUB_OFFLINE once, at import, so set its constant too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("sd"))


def _images(pipe, prompts: list[str]) -> np.ndarray:
    out = pipe(prompts, num_inference_steps=2, height=32, width=32, output_type="np",
               generator=[torch.Generator().manual_seed(0) for _ in prompts])
    return out.images


def test_folder_has_the_diffusers_layout(folder):
    for part in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                 "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json"):
        assert (folder / part).is_file(), part


def test_tokenizer_covers_words(folder):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    ids = tok(PROMPTS[0]).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    # CLIP's decoder puts a space at every word end, punctuation included (as the real vocabulary does)
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == PROMPTS[0].replace(" ", "")


def test_folder_runs_and_prompt_reaches_the_unet(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    images = _images(pipe, PROMPTS)
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    assert np.abs(images[0] - images[1]).max() > 1e-3  # same seed, different prompt: different image
    again = _images(pipe, PROMPTS[:1])
    # same seed, same prompt: same image (up to batch-size rounding)
    np.testing.assert_allclose(again[0], images[0], atol=1e-5)


def test_build_is_reproducible(folder, tmp_path):
    from safetensors.torch import load_file

    other = make_tiny_sd(tmp_path)
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        a, b = load_file(folder / part), load_file(other / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def _weights(pipe) -> dict[str, dict[str, torch.Tensor]]:
    return {n: getattr(pipe, n).state_dict() for n in ("unet", "vae", "text_encoder")}


def _assert_same_weights(a, b) -> None:
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        diff = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not diff, f"{part}: {len(diff)} tensors differ, e.g. {diff[:3]}"


def test_single_file_has_the_original_layout(folder, tmp_path):
    from safetensors.torch import load_file

    keys = set(load_file(write_single_file(folder, tmp_path / "sd.safetensors")))
    # Names every real SD 1.x single file has (and diffusers reads to recognise one).
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.0.weight",
                "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.out.2.weight", "first_stage_model.encoder.down.0.block.0.conv1.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
                "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in keys, key
    assert not any(k.startswith(("unet.", "vae.", "text_encoder.")) for k in keys)


@pytest.mark.parametrize("form", ["safetensors", "ckpt"])
def test_single_file_loads_offline_with_the_folders_weights(folder, tmp_path, form):
    from diffusers import StableDiffusionPipeline

    path = (write_single_file if form == "safetensors" else write_ckpt)(folder, tmp_path / f"sd.{form}")
    # The config folder is a model with other weights: what loads must come from the file, not the folder.
    other = make_tiny_sd(tmp_path / "other", seed=1)
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(other), local_files_only=True)
    ref = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    _assert_same_weights(_weights(ref), _weights(pipe))
    images = _images(pipe, PROMPTS)
    assert np.isfinite(images).all() and np.abs(images[0] - images[1]).max() > 1e-3
    np.testing.assert_allclose(images, _images(ref, PROMPTS), atol=1e-5)


def test_ckpt_is_a_pickled_state_dict(folder, tmp_path):
    from safetensors.torch import load_file

    sd = torch.load(write_ckpt(folder, tmp_path / "sd.ckpt"), weights_only=True)["state_dict"]
    flat = load_file(write_single_file(folder, tmp_path / "sd.safetensors"))
    assert sd.keys() == flat.keys() and all(torch.equal(sd[k], flat[k]) for k in sd)


def test_single_file_without_a_config_folder_needs_the_hub(folder, tmp_path, monkeypatch):
    """Why the recipe passes config=: on its own, diffusers guesses the model type from the keys and fetches that
    model's configs (SD 1.5's for this layout) from the Hub, which offline is an error, not a silent download."""
    import huggingface_hub.constants
    from diffusers import StableDiffusionPipeline
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    path = write_single_file(folder, tmp_path / "sd.safetensors")
    with pytest.raises(LocalEntryNotFoundError, match="outgoing traffic has been disabled"):
        StableDiffusionPipeline.from_single_file(str(path), local_files_only=True)


def test_single_file_block_numbering_with_sds_own_layer_count(tmp_path):
    """SD 1.x has 2 resnets per down level (3 per up level): the LDM block numbers then skip as in the real files."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    folder = make_tiny_sd(tmp_path, layers_per_block=2)
    path = write_single_file(folder, tmp_path / "sd.safetensors")
    keys = set(load_file(path))
    for key in ("input_blocks.2.1.proj_in.weight", "input_blocks.3.0.op.weight", "input_blocks.5.0.in_layers.2.weight",
                "output_blocks.2.1.conv.weight", "output_blocks.5.1.proj_out.weight"):
        assert "model.diffusion_model." + key in keys, key
    loaded = UNet2DConditionModel.from_single_file(str(path), config=str(folder), subfolder="unet",
                                                   local_files_only=True)
    ref = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    _assert_same_weights({"unet": ref.state_dict()}, {"unet": loaded.state_dict()})


def test_prediction_type_and_size_reach_the_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = make_tiny_sd(tmp_path, prediction_type="v_prediction", sample_size=64)
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.num_train_timesteps == 1000
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    # Training takes a DDPM scheduler from the same config, as diffusers' fine-tuning scripts do.
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    assert ddpm.config.prediction_type == "v_prediction"
    torch.testing.assert_close(ddpm.alphas_cumprod, pipe.scheduler.alphas_cumprod)
    images = pipe(PROMPTS[0], num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_unet_takes_a_lora_adapter(folder):
    """The attention projections diffusers' LoRA scripts target exist, so peft can wrap the tiny UNet."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    trained = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert sum(p.numel() for n, p in unet.named_parameters() if p.requires_grad) < 0.1 * unet.num_parameters()


def test_config_folder_needs_no_weights(folder, tmp_path):
    """A user with only a single file needs the architecture's configs and tokenizer beside it, not its weights:
    a copy of the folder without its .safetensors is enough for config=."""
    import shutil

    from diffusers import StableDiffusionPipeline

    configs = tmp_path / "configs"
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    assert not list(configs.rglob("*.safetensors"))
    path = write_single_file(folder, tmp_path / "sd.safetensors")
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(configs), local_files_only=True)
    ref = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    _assert_same_weights(_weights(ref), _weights(pipe))


def test_a_file_that_is_not_sd_fails_loading(folder, tmp_path):
    """What diffusers says for a .safetensors that holds no SD networks (the loader must turn it into one line)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SingleFileComponentError, match="missing in the checkpoint"):
        StableDiffusionPipeline.from_single_file(str(tmp_path / "other.safetensors"), config=str(folder),
                                                 local_files_only=True)
