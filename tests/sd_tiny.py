"""A tiny Stable-Diffusion-format model built in the test, with no download.

Three forms of the same weights, the ones users bring:
- make_tiny_sd: a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/);
- write_single_file: one .safetensors in the original CompVis/LDM key layout real SD 1.x single files have;
- write_ckpt: the same layout pickled as {"state_dict": ...} (.ckpt).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Real SD 1.x's noise schedule (its scheduler_config.json), so schedulers built from the folder behave like SD's.
SD_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "skip_prk_steps": True,
}
VAE_SCALING = 0.18215  # SD 1.x's latent scaling factor
TEXT_DIM = 32  # the text encoder's width = the UNet's cross-attention width


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE's map from each byte to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


# A few merges, so some words tokenize to more than single characters (as with the real vocabulary).
_MERGES = ["c h", "e s", "x -", "r a", "p n", "e u", "m o", "n i", "s t", "o n", "i a</w>", "s t</w>"]


def write_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer whose vocabulary covers every byte, with and without the end-of-word mark."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    for m in _MERGES:
        tokens.append(m.replace(" ", ""))
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }), encoding="utf-8")


def make_tiny_sd(root: Path, *, prediction_type: str = "epsilon", sample_size: int = 32) -> Path:
    """Build and save a tiny SD 1.x-shaped pipeline under root/"tiny-sd"; returns the folder."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(root) / "tiny-sd"
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=sample_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),  # 4 levels: downsamples by 8, like SD's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size,
        scaling_factor=VAE_SCALING,
    )
    write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, vocab_size=len(tokenizer), projection_dim=TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = PNDMScheduler(prediction_type=prediction_type, **SD_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
