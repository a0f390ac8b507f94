"""Network construction from a resolved config (2D: diffusers UNet2DModel)."""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DModel

from engine.config import RunConfig


def mask_channels(cfg: RunConfig) -> int:
    return max(cfg.model.mask_labels - 1, 0) if cfg.data.mask_mode != "none" else 0


def io_channels(cfg: RunConfig) -> tuple[int, int, int]:
    """(network input, network output, condition) channel counts."""
    k = mask_channels(cfg)
    out = cfg.model.image_channels + (k if cfg.data.mask_mode == "joint" else 0)
    cond = k if cfg.data.mask_mode == "condition" else 0
    return out + cond, out, cond


def null_class(cfg: RunConfig) -> int | None:
    """Index of the "no class" embedding used for classifier-free guidance, or None."""
    return cfg.model.num_classes if cfg.model.num_classes > 0 else None


def build_model(cfg: RunConfig) -> UNet2DModel:
    m = cfg.model
    in_ch, out_ch, _ = io_channels(cfg)
    levels = len(m.block_out_channels)
    attention = (list(m.attention_levels) + [False] * levels)[:levels]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    groups = math.gcd(*m.block_out_channels, 32)
    return UNet2DModel(
        sample_size=m.image_size,
        in_channels=in_ch,
        out_channels=out_ch,
        block_out_channels=tuple(m.block_out_channels),
        layers_per_block=m.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=m.attention_head_dim,
        norm_num_groups=groups,
        dropout=m.dropout,
        # One extra embedding is the "no class" token for classifier-free guidance.
        num_class_embeds=(m.num_classes + 1) if m.num_classes > 0 else None,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
