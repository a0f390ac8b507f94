"""Network construction from a resolved config: diffusers UNet2DModel in 2D, MONAI's 3D UNet in 3D."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from diffusers import UNet2DModel

from engine.config import RunConfig


def mask_channels(cfg: RunConfig) -> int:
    return max(cfg.facts.mask_labels - 1, 0) if cfg.mask_mode != "none" else 0


def pixel_channels(cfg: RunConfig) -> int:
    """Channels of a training volume in pixel space: the image, then the jointly generated mask."""
    return cfg.facts.image_channels + (mask_channels(cfg) if cfg.mask_mode == "joint" else 0)


# Every Stable Diffusion 1.x / 2.x VAE: 4 latent channels, 8 times smaller on each axis (the loader refuses others).
SD_LATENT_CHANNELS = 4
SD_LATENT_FACTOR = 8


def io_channels(cfg: RunConfig) -> tuple[int, int, int]:
    """(network input, network output, condition) channel counts of the diffusion network."""
    if cfg.fine_tune:
        return SD_LATENT_CHANNELS, SD_LATENT_CHANNELS, 0
    k = mask_channels(cfg)
    out = cfg.autoencoder.latent_channels if cfg.autoencoder.enabled else pixel_channels(cfg)
    cond = k if cfg.mask_mode == "condition" else 0
    return out + cond, out, cond


def latent_factor(cfg: RunConfig) -> int:
    if cfg.fine_tune:
        return SD_LATENT_FACTOR
    return 2 ** (len(cfg.autoencoder.channels) - 1) if cfg.autoencoder.enabled else 1


def diffusion_size(cfg: RunConfig) -> int:
    """Edge length of what the diffusion network sees: the image, or the autoencoder's latent."""
    return cfg.model.image_size // latent_factor(cfg)


def diffusion_shape(cfg: RunConfig) -> tuple[int, ...]:
    """Shape of one sample the diffusion network denoises, without the batch axis."""
    return (io_channels(cfg)[1],) + (diffusion_size(cfg),) * max(cfg.facts.spatial_dims, 2)


def null_class(cfg: RunConfig) -> int | None:
    """Index of the "no class" embedding used for classifier-free guidance, or None."""
    return cfg.facts.num_classes if cfg.facts.num_classes > 0 else None


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
    if cfg.facts.spatial_dims == 3:
        model = _build_3d(cfg)
        if cfg.train.gradient_checkpointing:
            checkpoint_blocks(model.net)
        return model
    model = _build_2d(cfg)
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def unet_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The down, middle and up blocks of either UNet: the units gradient checkpointing recomputes."""
    net = getattr(model, "net", model)
    middle = getattr(net, "middle_block", None) or net.mid_block
    return [*net.down_blocks, middle, *net.up_blocks]


def checkpoint_blocks(net: torch.nn.Module) -> None:
    """Recompute each UNet block in the backward pass (MONAI's 3D UNet has no switch for it).

    The block's forward is replaced on the instance, so parameter names and checkpoints stay
    the same with and without it.
    """
    for block in unet_blocks(net):
        inner = block.forward

        def run(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = run


def _build_2d(cfg: RunConfig) -> torch.nn.Module:
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
        num_class_embeds=(cfg.facts.num_classes + 1) if cfg.facts.num_classes > 0 else None,
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
        num_class_embeds=(cfg.facts.num_classes + 1) if cfg.facts.num_classes > 0 else None,
    )
    return MonaiUNet3D(net)


def build_autoencoder(cfg: RunConfig) -> torch.nn.Module:
    """MONAI's KL autoencoder over the pixel-space channels (image, and the mask when joint)."""
    from monai.networks.nets import AutoencoderKL

    a = cfg.autoencoder
    ch = pixel_channels(cfg)
    levels = len(a.channels)
    return AutoencoderKL(
        spatial_dims=max(cfg.facts.spatial_dims, 2),
        in_channels=ch,
        out_channels=ch,
        channels=tuple(a.channels),
        num_res_blocks=a.layers_per_block,
        attention_levels=(False,) * (levels - 1) + (bool(a.attention),),
        latent_channels=a.latent_channels,
        norm_num_groups=math.gcd(*a.channels, 32),
        with_encoder_nonlocal_attn=bool(a.attention),
        with_decoder_nonlocal_attn=bool(a.attention),
        use_checkpoint=cfg.train.gradient_checkpointing,
    )


def count_parameters(model: torch.nn.Module, trained: bool = False) -> int:
    """Weights of the model, or with `trained` only those that train (a LoRA fine-tune freezes the rest)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trained)
