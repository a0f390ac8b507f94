"""Fine-tuning a Stable-Diffusion-format model with text prompts, as a training job like any other.

The run is a TrainJob whose network is the pretrained UNet behind engine.models.stable_diffusion.PromptedUNet: the
loop, checkpoints, resume, cancel, previews, the EMA and Accelerate are the training job's own. What differs is here:
the model comes from the user's files (its noise schedule with it), the training set moves into the model's VAE latent
space before the loop (the VAE is frozen: there is no stage 1 to train), each image trains with its prompt, and a
checkpoint holds only the weights that train (LoRA adapters by default: a few MB).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.data.prompts import training_prompts
from engine.errors import InputError
from engine.jobs import Emit, Message, Progress, Requests
from engine.models import stable_diffusion as sd
from engine.training.train import RunState, TrainJob

# Prompts recorded with the run, for the Generate panel's history; a prompts.csv of thousands keeps its first ones.
RECORDED_PROMPTS = 200


def prompt_table(prompts: list[str]) -> tuple[list[str], list[int]]:
    """The distinct prompts in order of first use, with the empty prompt last (the "no prompt" the training drops
    to, and guidance's unconditional half), and each image's index into them."""
    table: dict[str, int] = {}
    index = [table.setdefault(p, len(table)) for p in prompts]
    return [*table, ""], index


class FinetuneJob(TrainJob):
    """TrainJob on a pretrained Stable-Diffusion-format model (cfg.pretrained)."""

    parts: sd.Parts | None = None
    prompts: list[str] = []

    @property
    def latent_stage(self) -> bool:
        return True

    def _null(self) -> int:
        return len(self.prompts) - 1

    def _preview_labels(self, n: int) -> torch.Tensor:
        return torch.arange(n) % max(len(self.prompts) - 1, 1)

    def _decode(self, run: RunState, x: torch.Tensor) -> torch.Tensor:
        return sd.decode_latents(self.parts, x, self.cfg.facts.image_channels)

    def _extra_weights(self, run: RunState) -> dict[str, Any] | None:
        return None  # the VAE and text encoder are the pretrained model's, read from its files

    def _load_model(self, emit: Emit) -> sd.Parts:
        cfg = self.cfg
        source = sd.find_source(cfg.pretrained)
        emit(Progress("load", 0, 1, {"what": "pretrained model"}))
        parts = sd.load(source)
        sd.check_parts(parts, source.path)
        multiple = sd.size_multiple(parts)
        if cfg.model.image_size % multiple:
            raise InputError(None, f"image size {cfg.model.image_size} must be a multiple of {multiple} for "
                                   f"{source.path.name} (its VAE and UNet divide it by that); its own size is "
                                   f"{parts.native_size}")
        if self.ckpt is None and not self.resume:
            # A fine-tune keeps the schedule its model was trained with; the preset's would be a different model.
            for key, value in sd.schedule(parts).items():
                setattr(cfg.train, key, value)
            if cfg.data.mask_mode != "none":
                cfg.data.mask_mode = "none"
                emit(Message("a Stable Diffusion model generates images from text; masks in the data are not "
                             "trained"))
        emit(Message(f"pretrained model {source.path.name}: {'single file' if source.single_file else 'folder'}, "
                     f"native size {parts.native_size} px, {cfg.train.objective} objective"))
        return parts

    def _set_up(self, emit: Emit) -> RunState:
        self.parts = self._load_model(emit)
        run = super()._set_up(emit)
        self.prompts, index = prompt_table(training_prompts(run.data, self.cfg.pretrained.prompt_template,
                                                            self.cfg.pretrained.prompt))
        # Labels of the training draw are prompt indices; the data's classes still name what each sample is.
        run.labels_all = torch.tensor(index, dtype=torch.long, device=run.acc.device)
        run.facts["prompts"] = self.prompts[:-1][:RECORDED_PROMPTS]
        if run.acc.is_main_process:
            self.folder.write_facts(run.facts)
        return run

    def _latent_stage(self, run: RunState, emit: Emit, requests: Requests) -> None:
        """The training set into the model's latent space, once: the VAE is frozen, so every step would encode
        the same images again."""
        emit(Progress("encode", 0, 1))
        self.parts.vae.to(run.acc.device)
        run.x_all = sd.encode_images(self.parts, run.x_all).to(run.acc.device)
        run.ae = self.parts.vae

    def _network(self, run: RunState) -> torch.nn.Module:
        p = self.cfg.pretrained
        sd.add_lora(self.parts, p.lora_rank, p.train_text_encoder)
        if self.cfg.train.gradient_checkpointing:
            self.parts.unet.enable_gradient_checkpointing()
        return sd.PromptedUNet(self.parts, self.prompts, p.train_text_encoder)

    def _announce(self, run: RunState, emit: Emit) -> None:
        p = self.cfg.pretrained
        what = f"LoRA rank {p.lora_rank} adapters" if p.lora_rank else "the whole UNet"
        trained = sum(q.numel() for q in run.net.parameters() if q.requires_grad)
        emit(Message(f"fine-tuning {what}{' and the text encoder' if p.train_text_encoder else ''}: "
                     f"{trained / 1e6:.2f} M of the model's {sum(q.numel() for q in run.net.parameters()) / 1e6:.1f} M "
                     f"weights train, on "
                     f"{len(self.prompts) - 1} distinct prompt{'s' if len(self.prompts) != 2 else ''}"))
        super()._announce(run, emit)
