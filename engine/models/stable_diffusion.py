"""A Stable-Diffusion-format model the user has on disk: found, checked and loaded offline, with LoRA on its UNet.

Two forms are read: a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) and a
single .safetensors / .ckpt file in the original (CompVis) layout, whose tokenizer and component configs come from a
diffusers folder of the same architecture. Nothing is downloaded: every load is local_files_only, and a missing part
is one line naming it. A .ckpt is a pickle, which can run code as it loads, so it is read only when trusted.

The network a MedSynth job trains and samples is `PromptedUNet`: the SD UNet called the way MedSynth's own networks
are, `model(x, t, class_labels=i)`, where i indexes a table of prompts. The training step, its prompt dropout
(the "no class" index is the empty prompt), the samplers and classifier-free guidance therefore work unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.config import PretrainedConfig
from engine.errors import InputError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# The attention projections LoRA adapts, as diffusers' own LoRA training does.
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass(frozen=True)
class Source:
    """Where a pretrained model's parts are read from."""

    path: Path  # the folder, or the single file
    folder: Path  # the diffusers folder giving configs and the tokenizer (the model itself for a folder)
    single_file: bool


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face libraries told not to reach the network while a model loads, whatever the user's environment."""
    import huggingface_hub.constants as hub

    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    # The Hub library reads its variable once, when first imported: its constant is what it checks afterwards.
    was = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = was
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _folder_fault(folder: Path) -> str | None:
    """What a diffusers folder lacks to be a Stable Diffusion model, in words; None when it is whole."""
    index = folder / "model_index.json"
    if not index.is_file():
        return "has no model_index.json (not a diffusers model folder)"
    try:
        names = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"has an unreadable model_index.json ({exc})"
    if not isinstance(names, dict):
        return "has a model_index.json that is not a JSON object"
    kind = str(names.get("_class_name", ""))
    if "XL" in kind or "text_encoder_2" in names:
        return f"holds a {kind or 'two-text-encoder'} model; MedSynth fine-tunes Stable Diffusion 1.x / 2.x models"
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        return f"lacks {', '.join(c + '/' for c in missing)} (a Stable Diffusion folder holds {', '.join(COMPONENTS)})"
    if not (folder / "tokenizer" / "vocab.json").is_file():
        return "lacks tokenizer/vocab.json"
    for part in ("unet", "vae", "text_encoder", "scheduler"):
        config = "scheduler_config.json" if part == "scheduler" else "config.json"
        if not (folder / part / config).is_file():
            return f"lacks {part}/{config}"
    return None


def _weights_fault(folder: Path) -> str | None:
    for part in ("unet", "vae", "text_encoder"):
        if not any((folder / part).glob("*.safetensors")) and not any((folder / part).glob("*.bin")):
            return f"lacks the weights of {part}/ (no .safetensors or .bin file)"
    return None


def find_source(cfg: PretrainedConfig) -> Source:
    """The pretrained model the config names, checked before anything loads; InputError naming what is missing."""
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir():
        fault = _folder_fault(path) or _weights_fault(path)
        if fault:
            raise InputError(path, fault)
        return Source(path, path, False)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise InputError(path, "is neither a diffusers model folder nor a .safetensors / .ckpt checkpoint")
    if path.suffix.lower() == ".ckpt" and not cfg.trust_pickle:
        raise InputError(path, "is a pickle checkpoint (.ckpt), which can run code when it is loaded; convert it "
                               "to .safetensors, or say that you trust it to have it loaded")
    folder = Path(cfg.config_folder).expanduser() if cfg.config_folder else _config_beside(path)
    if folder is None:
        raise InputError(path, "is a single-file checkpoint, which holds weights but no tokenizer or component "
                               "configs; give the diffusers folder of the model it was made from as well")
    fault = _folder_fault(folder)
    if fault:
        raise InputError(folder, fault)
    return Source(path, folder, True)


def _config_beside(path: Path) -> Path | None:
    """A diffusers folder lying beside a single file: FILE's stem as a folder, or the file's own folder."""
    for folder in (path.with_suffix(""), path.parent):
        if (folder / "model_index.json").is_file():
            return folder
    return None


@dataclass
class Parts:
    """A loaded Stable Diffusion model, its parts as diffusers and transformers hold them."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]

    @property
    def latent_factor(self) -> int:
        """How much smaller the latent is than the image on each axis (8 for every SD VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @property
    def native_size(self) -> int:
        """The image edge the model was trained at: its UNet's latent size times the VAE's factor."""
        size = self.unet.config.sample_size
        return int(size if isinstance(size, int) else size[0]) * self.latent_factor


def load(source: Source) -> Parts:
    """The model's parts on the CPU in float32, frozen; a part that cannot be read is one line naming it."""
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    # The job's own progress speaks; the libraries' bars would interleave with it on a console.
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    with offline():
        try:
            tokenizer = CLIPTokenizer.from_pretrained(source.folder, subfolder="tokenizer", local_files_only=True)
            scheduler = DDPMScheduler.load_config(source.folder, subfolder="scheduler", local_files_only=True)
            if source.single_file:
                unet, vae, text_encoder = _load_single_file(source)
            else:
                kw = dict(local_files_only=True)
                unet = UNet2DConditionModel.from_pretrained(source.folder, subfolder="unet", **kw)
                vae = AutoencoderKL.from_pretrained(source.folder, subfolder="vae", **kw)
                text_encoder = CLIPTextModel.from_pretrained(source.folder, subfolder="text_encoder", **kw)
        except InputError:
            raise
        except Exception as exc:  # diffusers and transformers raise many kinds for a file they cannot use
            raise InputError(source.path, f"cannot be loaded as a Stable Diffusion model ({_first_line(exc)})") \
                from None
    for net in (unet, vae, text_encoder):
        net.requires_grad_(False)
        net.eval()
    return Parts(unet, vae, text_encoder, tokenizer, dict(scheduler))


def _load_single_file(source: Source) -> tuple[Any, Any, Any]:
    import transformers

    # Importing the pipeline warns that torchvision (which MedSynth must not install) is missing for image
    # processors SD never uses; on a console that would read as a fault.
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        from diffusers import StableDiffusionPipeline
    finally:
        transformers.logging.set_verbosity(level)

    pipe = StableDiffusionPipeline.from_single_file(
        str(source.path), config=str(source.folder), local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    return pipe.unet, pipe.vae, pipe.text_encoder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def schedule(parts: Parts) -> dict[str, Any]:
    """The model's training noise schedule as MedSynth's train settings: a fine-tune must keep it."""
    s = parts.scheduler_config
    return {"num_train_timesteps": int(s.get("num_train_timesteps", 1000)),
            "beta_schedule": str(s.get("beta_schedule", "scaled_linear")),
            "beta_start": float(s.get("beta_start", 0.00085)), "beta_end": float(s.get("beta_end", 0.012)),
            "objective": str(s.get("prediction_type", "epsilon"))}


def add_lora(parts: Parts, rank: int, text_encoder: bool) -> None:
    """LoRA adapters on the UNet's attention projections (and the text encoder's, when it trains): only they
    train; `rank` 0 trains the whole UNet (and text encoder) instead."""
    if rank == 0:
        parts.unet.requires_grad_(True)
        if text_encoder:
            parts.text_encoder.requires_grad_(True)
        return
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_LORA_TARGETS)
    parts.unet.add_adapter(config)
    if text_encoder:
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                           target_modules=TEXT_LORA_TARGETS), parts.text_encoder)


def tokenize(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Token ids padded (and cut) to the text encoder's length, as SD was trained."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def to_vae(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] with 1 or 3 channels as the VAE takes them (grey repeated into three channels)."""
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x[:, :3]


def from_vae(x: torch.Tensor, channels: int) -> torch.Tensor:
    """The VAE's RGB output back to the data's channels (grey as the mean of the three)."""
    return x.mean(dim=1, keepdim=True) if channels == 1 else x


@torch.no_grad()
def encode_images(parts: Parts, x: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Scaled latents of images in [-1, 1] (N, C, H, W): the mean of the VAE's posterior, times its scaling."""
    vae, out = parts.vae, []
    for lo in range(0, len(x), batch):
        chunk = to_vae(x[lo:lo + batch]).to(next(vae.parameters()).device, next(vae.parameters()).dtype)
        out.append(vae.encode(chunk).latent_dist.mean.float() * parts.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def decode_latents(parts: Parts, z: torch.Tensor, channels: int) -> torch.Tensor:
    """Images in [-1, 1] with the data's channels from scaled latents."""
    vae = parts.vae
    x = vae.decode(z.to(next(vae.parameters()).dtype) / parts.scaling_factor).sample.float()
    return from_vae(x, channels).clamp(-1.0, 1.0)


class PromptedUNet(torch.nn.Module):
    """The SD UNet conditioned on prompt i of a table, called like MedSynth's networks (`class_labels=i`).

    Its state is only the weights that train (LoRA adapters, or the whole UNet when fully fine-tuned, and the text
    encoder when it trains): checkpoints, the EMA and resuming then hold a few MB for LoRA, and the frozen base
    weights are read from the pretrained model's own files.
    """

    def __init__(self, parts: Parts, prompts: list[str], train_text_encoder: bool = False) -> None:
        super().__init__()
        self.unet = parts.unet
        self.text_encoder = parts.text_encoder
        self.train_text_encoder = train_text_encoder
        # Fixed here, after add_lora: what trains, and so what the state holds, even once sampling freezes it all.
        self.trained = [name for name, p in self.named_parameters() if p.requires_grad]
        self.register_buffer("tokens", tokenize(parts.tokenizer, prompts), persistent=False)
        self.register_buffer("table", self._embed_all(), persistent=False)

    @property
    def config(self) -> Any:
        return self.unet.config

    @torch.no_grad()
    def _embed_all(self) -> torch.Tensor:
        return torch.cat([self.text_encoder(self.tokens[lo:lo + 32])[0].float()
                          for lo in range(0, len(self.tokens), 32)])

    def set_prompts(self, parts: Parts, prompts: list[str]) -> None:
        """A new table of prompts (sampling asks for its own); indices in class_labels then point into it."""
        device = self.table.device
        self.tokens = tokenize(parts.tokenizer, prompts).to(device)
        self.table = self._embed_all()

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> Any:
        idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if class_labels is None else class_labels
        if self.train_text_encoder and self.training:
            states = self.text_encoder(self.tokens[idx])[0]
        else:
            states = self.table[idx]
        return self.unet(x, t, encoder_hidden_states=states.to(x.dtype))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        names = set(self.trained)
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if k in names}

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        """The trained weights only; strict means every one of them is given and nothing else."""
        result = super().load_state_dict(state, strict=False, assign=assign)
        if strict:
            missing = set(self.trained) - set(state)
            if result.unexpected_keys or missing:
                raise RuntimeError(f"trained weights do not fit the model: {len(missing)} missing, "
                                   f"{len(result.unexpected_keys)} unexpected "
                                   f"(first: {sorted(missing)[:1] or result.unexpected_keys[:1]})")
        return result


def check_parts(parts: Parts, path: Path) -> None:
    """The parts fit together and fit what MedSynth's fine-tuning and samplers assume of an SD 1.x / 2.x model."""
    from engine.models.networks import SD_LATENT_CHANNELS, SD_LATENT_FACTOR

    if parts.latent_channels != SD_LATENT_CHANNELS or parts.latent_factor != SD_LATENT_FACTOR:
        raise InputError(path, f"has a VAE with {parts.latent_channels} latent channels at 1/{parts.latent_factor} "
                               f"size; Stable Diffusion 1.x / 2.x VAEs have {SD_LATENT_CHANNELS} at "
                               f"1/{SD_LATENT_FACTOR}")
    width = int(parts.text_encoder.config.hidden_size)
    if int(parts.unet.config.cross_attention_dim) != width:
        raise InputError(path, f"has a text encoder of width {width} but a UNet that attends to "
                               f"{parts.unet.config.cross_attention_dim}: its parts come from different models")


def size_multiple(parts: Parts) -> int:
    """What the image edge must be a multiple of: the VAE's factor times the UNet's down-sampling."""
    return parts.latent_factor * 2 ** (len(parts.unet.config.block_out_channels) - 1)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is unreadable ({exc})") from None


def native_size(cfg: PretrainedConfig) -> int:
    """The image edge the model was trained at, read from its configs without loading a weight."""
    from engine.models.networks import SD_LATENT_FACTOR

    unet = _read_json(find_source(cfg).folder / "unet" / "config.json")
    size = unet.get("sample_size", 64)
    return int(size if isinstance(size, int) else size[0]) * SD_LATENT_FACTOR


def networks_on_meta(cfg: PretrainedConfig) -> tuple[Any, int, int]:
    """(UNet with the run's LoRA, frozen VAE + text encoder weight count, text width) with shapes but no storage:
    what the memory estimate runs, built from the configs alone."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = find_source(cfg).folder
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_read_json(folder / "unet" / "config.json"))
        vae = AutoencoderKL.from_config(_read_json(folder / "vae" / "config.json"))
        text = CLIPTextModel(CLIPTextConfig(**_read_json(folder / "text_encoder" / "config.json")))
        unet.requires_grad_(False)
        text.requires_grad_(False)
        parts = Parts(unet, vae, text, None, {})
        add_lora(parts, cfg.lora_rank, cfg.train_text_encoder)
    frozen = sum(p.numel() for p in vae.parameters()) + sum(p.numel() for p in text.parameters()
                                                             if not p.requires_grad)
    return unet, frozen, int(text.config.hidden_size)
