"""The tiny Stable-Diffusion-format model the fine-tuning tests build: each form loads offline with diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.sd_tiny import make_tiny_sd

PROMPTS = ["chest x-ray, pneumonia", "chest x-ray, normal"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


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
