"""Sampling a Stable-Diffusion-format model with text prompts: a fine-tuned run's checkpoint, or the pretrained model
straight from the user's files.

Prompts are a table the network indexes (engine.models.stable_diffusion.PromptedUNet): a sample's "class label" is
its prompt's row, and the negative prompt (empty unless given) is the row classifier-free guidance steers away from.
So the samplers, guidance and per-seed reproducibility are the ones every MedSynth model samples with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from engine.config import PretrainedConfig, RunConfig
from engine.data.prepare import Normalisation
from engine.inference.generator import Generator
from engine.models import stable_diffusion as sd
from engine.runtime.devices import pick_device

# What a model sampled without fine-tuning writes: 8-bit RGB pictures, as it was trained on.
PICTURE = Normalisation(modality="generic", lo=0.0, hi=255.0, units="", bits=8)


class PromptedGenerator(Generator):
    """A fine-tuned SD run's checkpoint ready to sample with prompts."""

    parts: sd.Parts

    def _network(self) -> torch.nn.Module:
        p = self.cfg.pretrained
        self.parts = sd.load(sd.find_source(p))
        sd.check_parts(self.parts, Path(p.path))
        sd.add_lora(self.parts, p.lora_rank, p.train_text_encoder)
        net = sd.PromptedUNet(self.parts, [""], p.train_text_encoder)
        net.requires_grad_(False)
        return net

    def _finish_loading(self) -> None:
        self.autoencoder = self.parts.vae.to(self.device).eval()
        self.parts.text_encoder.to(self.device)
        self.latent_scale = 1.0
        self.null = 0
        self.out_channels = self.cond_channels = 0
        self.prompts: list[str] = [""]

    @classmethod
    def from_pretrained(cls, pretrained: PretrainedConfig, device: str = "auto") -> PromptedGenerator:
        """The pretrained model as it is, no fine-tune: sampled at its own size, as RGB pictures."""
        gen = cls.__new__(cls)
        source = sd.find_source(pretrained)
        gen.ckpt = source.path
        gen.device = torch.device(pick_device(device))
        gen.cfg = RunConfig(preset="")
        gen.cfg.pretrained = pretrained
        gen.cfg.pretrained.lora_rank = 0
        gen.cfg.pretrained.train_text_encoder = False
        gen.norm = PICTURE
        gen.class_names = []
        gen.model = gen._network()
        for key, value in sd.schedule(gen.parts).items():
            setattr(gen.cfg.train, key, value)
        gen.cfg.model.image_size = gen.parts.native_size
        gen.cfg.facts.image_channels, gen.cfg.facts.spatial_dims = 3, 2
        gen.cfg.facts.in_channels = gen.parts.latent_channels
        gen.cfg.data.mask_mode = gen.cfg.facts.mask_mode = "none"
        gen.state = {"config": gen.cfg.to_dict(), "normalisation": gen.norm.to_dict(), "class_names": []}
        gen.model.to(gen.device).eval()
        gen.sha256 = fingerprint(source)
        gen._finish_loading()
        return gen

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        return sd.decode_latents(self.parts, x, self.cfg.facts.image_channels)

    def use_prompts(self, prompts: list[str], negative: str = "") -> list[int]:
        """Embed the prompts of a sampling run once; returns each prompt's row, the negative prompt's row being
        the guidance's unconditional half."""
        table = list(dict.fromkeys([*prompts, negative]))
        self.model.set_prompts(self.parts, table)
        self.null = table.index(negative)
        self.prompts = table
        return [table.index(p) for p in prompts]


def fingerprint(source: sd.Source) -> str:
    """A pretrained model's identity without reading gigabytes: its configs' bytes and its weight files' sizes."""
    h = hashlib.sha256()
    root = source.folder
    for path in sorted(root.rglob("*.json")):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    weights = [source.path] if source.single_file else sorted(root.rglob("*.safetensors")) + sorted(root.rglob("*.bin"))
    for path in weights:
        h.update(f"{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()

