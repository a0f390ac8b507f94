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


def make_tiny_sd(root: Path, *, prediction_type: str = "epsilon", sample_size: int = 32, seed: int = 0,
                 layers_per_block: int = 1) -> Path:
    """Build and save a tiny SD 1.x-shaped pipeline under root/"tiny-sd"; returns the folder (about 4 MB, 0.1 s).
    The same seed gives the same weights; sample_size is the image side the pipeline makes by default (latents are
    8x smaller); layers_per_block=2 is SD's own count, for tests of the single-file layout's block numbering."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(root) / "tiny-sd"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=layers_per_block,
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


# --- the original CompVis/LDM single-file layout -------------------------------------------------------------------
# Real SD 1.x single files (v1-5-pruned.safetensors, ...) hold the three networks under these prefixes.
LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_TEXT = "cond_stage_model.transformer.text_model."

_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_LDM_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}  # the VAE's resnets keep diffusers' other names
_LDM_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, table: dict[str, str]) -> str:
    """Rename the leading layer name of `rest` ("conv1.weight" → "in_layers.2.weight") by `table`."""
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_key(key: str, layers: int) -> str:
    """One diffusers UNet2DConditionModel key → its LDM name (SD 1.x: each down level has `layers` resnets, each up
    level `layers + 1`; level i's input blocks start at 1 + i * (layers + 1), its downsampler closes the level)."""
    parts = key.split(".")
    top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for new, old in top.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if parts[0] == "down_blocks":
        level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        first = 1 + level * (layers + 1)
        if kind == "resnets":
            return f"input_blocks.{first + j}.0.{_rename(rest, _LDM_RESNET)}"
        if kind == "attentions":
            return f"input_blocks.{first + j}.1.{rest}"
        return f"input_blocks.{first + layers}.0.op.{rest.removeprefix('conv.')}"  # downsamplers.0.conv
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * j}.{_rename(rest, _LDM_RESNET)}"
    if parts[0] == "up_blocks":
        level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        first = level * (layers + 1)
        if kind == "resnets":
            return f"output_blocks.{first + j}.0.{_rename(rest, _LDM_RESNET)}"
        if kind == "attentions":
            return f"output_blocks.{first + j}.1.{rest}"
        raise AssertionError("upsamplers are placed by _unet_to_ldm, which knows whether the level has attention")
    raise AssertionError(f"no LDM name for UNet key {key}")


def _unet_to_ldm(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "up_blocks" and parts[2] == "upsamplers":
            level = int(parts[1])
            # The upsampler follows the level's last resnet (and its attention, if the level has one).
            has_attn = any(k.startswith(f"up_blocks.{level}.attentions.") for k in sd)
            name = f"output_blocks.{level * (layers + 1) + layers}.{2 if has_attn else 1}.{'.'.join(parts[4:])}"
        else:
            name = _unet_key(key, layers)
        out[LDM_UNET + name] = value
    return out


def _vae_to_ldm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AutoencoderKL keys → LDM's: levels are `down.i` / `up.(n-1-i)` (LDM counts decoder levels from the bottom),
    resnets `block.j`, the mid block `block_1` / `attn_1` / `block_2`; attention is 1x1 convs there, linears here."""
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.up_blocks."))
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] in ("quant_conv", "post_quant_conv"):
            name = key
        elif parts[1] in ("conv_in", "conv_out"):
            name = key
        elif parts[1] == "conv_norm_out":
            name = f"{parts[0]}.norm_out.{parts[2]}"
        elif parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2]) if parts[1] == "down_blocks" else levels - 1 - int(parts[2])
            stage = "down" if parts[1] == "down_blocks" else "up"
            rest = ".".join(parts[5:])
            if parts[3] == "resnets":
                name = f"{parts[0]}.{stage}.{level}.block.{parts[4]}.{_rename(rest, _LDM_VAE_RESNET)}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                name = f"{parts[0]}.{stage}.{level}.{'downsample' if stage == 'down' else 'upsample'}.{rest}"
        elif parts[1] == "mid_block":
            rest = ".".join(parts[4:])
            if parts[2] == "resnets":
                name = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{_rename(rest, _LDM_VAE_RESNET)}"
            else:
                name = f"{parts[0]}.mid.attn_1.{_rename(rest, _LDM_VAE_ATTN)}"
                if value.ndim == 2:
                    value = value[:, :, None, None]
        else:
            raise AssertionError(f"no LDM name for VAE key {key}")
        out[LDM_VAE + name] = value
    return out


def _text_to_ldm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 saves CLIPTextModel without its "text_model." level; LDM keeps it under the wrapper.
    out = {LDM_TEXT + k.removeprefix("text_model."): v for k, v in sd.items()}
    positions = out[LDM_TEXT + "embeddings.position_embedding.weight"].shape[0]
    out[LDM_TEXT + "embeddings.position_ids"] = torch.arange(positions)[None]  # real SD 1.x files carry it
    return out


def ldm_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's UNet, VAE and text encoder as one state dict in the original LDM layout."""
    from safetensors.torch import load_file

    folder = Path(folder)
    layers = json.loads((folder / "unet" / "config.json").read_text())["layers_per_block"]
    sd = _unet_to_ldm(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"), layers)
    sd.update(_vae_to_ldm(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")))
    sd.update(_text_to_ldm(load_file(folder / "text_encoder" / "model.safetensors")))
    return {k: v.contiguous() for k, v in sd.items()}


def write_single_file(folder: Path, out: Path) -> Path:
    """The folder's weights as one .safetensors in the original LDM layout, like a downloaded SD 1.x checkpoint."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm_state_dict(folder), str(out))
    return out


def write_ckpt(folder: Path, out: Path) -> Path:
    """The same weights pickled as {"state_dict": ...}, the .ckpt form the original training code saved."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": ldm_state_dict(folder), "global_step": 0}, out)
    return out
