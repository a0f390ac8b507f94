"""A loaded checkpoint ready to sample: what the sample job and the benches draw with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.config import from_dict
from engine.data.prepare import Normalisation, decode_masks
from engine.errors import InputError
from engine.jobs import Requests
from engine.models.diffusion import denoise, sampler
from engine.models.networks import build_autoencoder, build_model, diffusion_shape, io_channels, null_class
from engine.runtime.devices import pick_device
from engine.settings import SAMPLER_STEPS, sampler_fault, samplers_for
from engine.training import autoencoder, checkpoints
from engine.training.run_dir import resolve_checkpoint


class Generator:
    """A loaded checkpoint ready to sample: used by the sample job, previews and benches."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", use_ema: bool = True) -> None:
        self.ckpt = resolve_checkpoint(checkpoint)
        self.state = checkpoints.read_state(self.ckpt)
        self.cfg = from_dict(self.state["config"])
        self.norm = Normalisation.from_dict(self.state["normalisation"])
        self.class_names = list(self.state.get("class_names") or [])
        self.device = torch.device(pick_device(device))
        self.model = self._network()
        weights = checkpoints.read_weights(self.ckpt, "ema" if use_ema else "model")
        self.model.load_state_dict(weights)
        self.model.to(self.device).eval()
        self.sha256 = checkpoints.sha256(self.ckpt / ("ema.safetensors" if use_ema else "model.safetensors"))
        self._finish_loading()

    def _network(self) -> torch.nn.Module:
        return build_model(self.cfg)

    def _finish_loading(self) -> None:
        # A latent model's checkpoint carries its autoencoder, which turns latents into volumes.
        self.autoencoder = None
        self.latent_scale = float(self.state.get("latent_scale") or 1.0)
        if self.cfg.autoencoder.enabled:
            self.autoencoder = build_autoencoder(self.cfg)
            self.autoencoder.load_state_dict(checkpoints.read_weights(self.ckpt, "autoencoder"))
            self.autoencoder.to(self.device).eval()
        self.null = null_class(self.cfg)
        self.out_channels = io_channels(self.cfg)[1]
        self.cond_channels = io_channels(self.cfg)[2]

    @property
    def latent(self) -> bool:
        return self.autoencoder is not None

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents back to normalised pixels."""
        with self.autocast():
            return autoencoder.decode(self.autoencoder, x, self.latent_scale)

    def fitting_sampler(self, asked: str | None) -> str:
        """The sampler asked for, or the model's default; InputError when it does not fit the model's objective."""
        if asked is None:
            return samplers_for(self.cfg.train.objective)[0].value
        fault = sampler_fault(asked, self.cfg.train.objective)
        if fault:
            raise InputError(self.ckpt, fault)
        return asked

    @property
    def num_classes(self) -> int:
        return self.cfg.facts.num_classes

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def generate(self, seeds: list[int], labels: list[int] | None, sampler_name: str | None = None,
                 steps: int | None = None, guidance: float = 1.0, cond: torch.Tensor | None = None,
                 requests: Requests | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(images in data units (B, C, H, W), masks (B, H, W) or None); a stop in ``requests`` raises
        Cancelled. No `sampler_name`: the model's default (engine.settings.SAMPLERS); no `steps`: the sampler's own
        (engine.settings.SAMPLER_STEPS)."""
        sampler_name = self.fitting_sampler(sampler_name)
        steps = SAMPLER_STEPS[sampler_name] if steps is None else steps
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        lab = None if labels is None or self.null is None else torch.tensor(labels, dtype=torch.long)
        latent = self.latent
        shape = diffusion_shape(self.cfg)
        if latent and cond is not None:
            cond = autoencoder.condition_at(cond, shape[1:])
        x = denoise(self.model, sampler(sampler_name, self.cfg.train, latent, shape[1:]), steps, shape,
                    gens, self.device, labels=lab, cond=cond, null_class=self.null, guidance=guidance,
                    autocast=self.autocast, clip=not latent, requests=requests)
        if latent:
            x = self._decode(x)
        c = self.cfg.facts.image_channels
        images = self.norm.inverse(x[:, :c].float()).cpu().numpy().astype(np.float32)
        masks = decode_masks(x[:, c:]) if self.cfg.mask_mode == "joint" else None
        return images, masks
