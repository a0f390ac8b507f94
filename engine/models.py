"""Network construction from a resolved config: diffusers UNet2DModel in 2D, MONAI's 3D UNet in 3D."""

from __future__ import annotations

import math
from types import SimpleNamespace

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


class MonaiUNet3D(torch.nn.Module):
    """MONAI's 3D diffusion UNet behind the call signature of diffusers' UNet2DModel,
    so training and sampling code does not care which one it drives."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(sample=self.net(x, timesteps, class_labels=class_labels))


def build_model(cfg: RunConfig) -> torch.nn.Module:
    if cfg.model.spatial_dims == 3:
        return _build_3d(cfg)
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


def _build_3d(cfg: RunConfig) -> MonaiUNet3D:
    from monai.networks.nets import DiffusionModelUNet

    m = cfg.model
    in_ch, out_ch, _ = io_channels(cfg)
    levels = len(m.block_out_channels)
    net = DiffusionModelUNet(
        spatial_dims=3,
        in_channels=in_ch,
        out_channels=out_ch,
        channels=tuple(m.block_out_channels),
        num_res_blocks=m.layers_per_block,
        attention_levels=tuple((list(m.attention_levels) + [False] * levels)[:levels]),
        norm_num_groups=math.gcd(*m.block_out_channels, 32),
        num_head_channels=m.attention_head_dim,
        num_class_embeds=(m.num_classes + 1) if m.num_classes > 0 else None,
    )
    return MonaiUNet3D(net)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
