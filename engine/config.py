"""Run configuration: presets (TOML) → overrides → one resolved config saved as JSON."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.settings import RANGES, RENAMED, MaskMode, PresetDevice, Spec, allowed, shown

# Found through the package, not the repository, so that a wheel install and the packaged app find them alike.
RESOURCES = Path(str(files("engine") / "resources"))
PRESETS = RESOURCES / "presets"
# A preset's top-level `device` says what it is sized for: "cpu" (runs in minutes on a laptop) or
# "gpu" (hours or days on a CPU; the CLI and the app warn before such a run starts there).
PRESET_DEVICES = tuple(PresetDevice.values())


@dataclass
class ModelConfig:
    image_size: int = 32
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    # Attention only at the coarsest levels: at 28-64 px it buys quality cheaply there
    # and costs quadratic time at full resolution.
    attention_levels: list[bool] = field(default_factory=lambda: [False, False, True])
    attention_head_dim: int = 8
    dropout: float = 0.0


@dataclass
class DataFacts:
    """What training found in the data (and what follows from it), kept apart from what the user chose:
    filled when a run starts, saved with it, never set by a preset, a TOML file or an override."""

    spatial_dims: int = 0
    in_channels: int = 0
    image_channels: int = 0
    mask_labels: int = 0
    num_classes: int = 0
    # The user's mask mode, or "none" when the data holds no masks ("" in configs saved before this field,
    # which wrote "none" into the user's choice instead).
    mask_mode: str = ""


@dataclass
class TrainConfig:
    steps: int = 1000
    batch: int = 32
    # Batch on a CPU, for presets sized for a GPU (0: `batch` everywhere). A CPU steps through a
    # batch of 128 at 28 px in seconds; a smaller one keeps a run in hours. A config that sets
    # `batch` without `cpu_batch` means that batch on every device.
    cpu_batch: int = 0
    lr: float = 2e-4
    warmup_steps: int = 50
    # cosine: after warm-up the rate falls to a tenth by the last step, which settles the weights a
    # short run ends on; constant keeps it flat (the EMA then does the settling).
    lr_schedule: str = "constant"  # constant | cosine
    weight_decay: float = 0.0
    loss: str = "l2"  # l2 | l1 | huber
    huber_delta: float = 0.1
    # v-prediction: near pure noise an epsilon model must divide by ~0 to estimate the image,
    # and small models then miss its mean brightness (grey backgrounds on the demo phantoms);
    # v stays well-conditioned at every noise level.
    # flow: rectified flow (x_t = (1 - t) x0 + t noise, the network predicts noise - x0), sampled with the
    # Euler / Heun flow samplers in 5-20 steps where a v model needs DPM-Solver++ at 25 or more.
    # Configs saved before flow existed call this `prediction` (engine.settings.RENAMED).
    objective: str = "v_prediction"  # epsilon | v_prediction | flow
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    # The linear schedules' ends (diffusers' defaults); a Stable Diffusion model brings its own (0.00085, 0.012).
    beta_start: float = 0.0001
    beta_end: float = 0.02
    ema_decay: float = 0.999
    # Dropping the class label this often trains the unconditional model that
    # classifier-free guidance needs, in the same network.
    cfg_dropout: float = 0.1
    # Off by default: mirroring swaps left and right anatomy (heart, liver), which a
    # generator of medical images must keep.
    flip: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    preview_every: int = 0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda
    # Recompute activations in the backward pass instead of keeping them: about a third slower,
    # and what lets 3D networks fit a workstation GPU.
    gradient_checkpointing: bool = False
    # GiB the run may use on its device; 0 means the device's own capacity. Training is refused
    # up front when the estimate exceeds it, instead of running out of memory mid-run.
    memory_limit_gib: float = 0.0


@dataclass
class DataConfig:
    path: str = ""
    split: str = "train"
    mask_mode: str = "joint"  # joint (image+mask generated together) | condition (mask → image) | none
    class_conditional: bool = True
    modality: str = "auto"  # auto | CT | MR | generic
    # 3 reads NIfTI / MSD / DICOM inputs as whole volumes; 0 lets the reader decide (slices for
    # NIfTI and MSD, volumes for 3D npz and HDF5 files).
    dims: int = 0
    # Target voxel spacing in mm (x, y, z) for volumes; empty picks the finest isotropic spacing
    # at which every case's foreground fits the training size.
    spacing: list[float] = field(default_factory=list)
    crop: str = "foreground"  # foreground | center: where the training-size box sits in each volume
    channel: int = 0  # which channel of a multi-channel (4D) MSD volume to train on
    # Outputs (checkpoints, HDF5 files, reports) name the training data by its folder's base name and
    # path_sha256, a hash of its absolute path: folder names above it often carry patient names or
    # record numbers. True writes the full path instead. Only the run folder's config.json, which
    # --resume reads, always holds the full path.
    record_full_path: bool = False
    path_sha256: str = ""


@dataclass
class AutoencoderConfig:
    """Stage 1 of latent diffusion: a KL autoencoder (MONAI AutoencoderKL) whose latent space the
    diffusion model then learns. Off for pixel-space models."""

    enabled: bool = False
    # Each level after the first halves every axis: three levels take 128^3 to a 32^3 latent.
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    latent_channels: int = 4
    layers_per_block: int = 1
    attention: bool = False
    steps: int = 2000
    batch: int = 1
    lr: float = 1e-4
    # A small KL weight keeps the latent close to a unit Gaussian without blurring the decoder.
    kl_weight: float = 1e-6
    checkpoint_every: int = 500


@dataclass
class PretrainedConfig:
    """Fine-tuning a Stable-Diffusion-format model the user has on disk (SD 1.x / 2.x, a medical fine-tune such as
    RoentGen) with text prompts, instead of training MedSynth's own network from scratch. Off when `path` is empty."""

    # A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or one
    # .safetensors / .ckpt file; nothing is ever downloaded.
    path: str = ""
    # A single file holds weights but no tokenizer or component configs: the diffusers folder of the model it was
    # made from gives them (found beside the file when it lies there).
    config_folder: str = ""
    # LoRA on the UNet's attention projections (a few MB of trained weights); 0 fine-tunes the whole UNet.
    lora_rank: int = 8
    train_text_encoder: bool = False
    # A class name becomes a prompt through this; prompts.csv beside the images overrides it per image.
    prompt_template: str = "{class}"
    # One prompt for every image, when the data gives neither prompts nor classes.
    prompt: str = ""
    # A .ckpt is a pickle, which can run code when loaded: read only when the user said they trust it.
    trust_pickle: bool = False


@dataclass
class RunConfig:
    preset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)
    facts: DataFacts = field(default_factory=DataFacts)

    @property
    def mask_mode(self) -> str:
        """The mask mode the model is trained in: the user's choice, unless the data holds no masks."""
        return self.facts.mask_mode or self.data.mask_mode

    @property
    def fine_tune(self) -> bool:
        """A pretrained Stable-Diffusion-format model is fine-tuned, not MedSynth's own network trained."""
        return bool(self.pretrained.path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


_FACT_NAMES = {f.name for f in dataclasses.fields(DataFacts)}
_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "autoencoder": AutoencoderConfig,
             "pretrained": PretrainedConfig}
# The preset a fine-tune of a pretrained Stable Diffusion model starts from unless another is named.
FINE_TUNE_PRESET = "sd-finetune"
# The source resolve() names for overrides when its caller does not say.
COMMAND_LINE = "command line"


def _specs() -> dict[tuple[str, str], Spec]:
    """Every setting's Spec: its range from engine.settings, its type from its field here."""
    out = {}
    for section, cls in {**_SECTIONS, "facts": DataFacts}.items():
        for key, hint in typing.get_type_hints(cls).items():
            many = typing.get_origin(hint) is list
            kind = typing.get_args(hint)[0] if many else hint
            out[section, key] = dataclasses.replace(RANGES.get((section, key), Spec()), kind=kind, many=many)
    return out


SPECS = _specs()


def spec(section: str, key: str) -> Spec:
    """A config setting's type and range, what the CLI's `type=` and the app's spin boxes read."""
    return SPECS[section, key]


def checked(section: str, key: str, value: Any, source: str | Path | None) -> Any:
    """`value` for the setting, as its field holds it; InputError naming `source` and the key when it is of the
    wrong type, out of range, or not one of the setting's choices."""
    values_allowed = allowed(section, key)
    if values_allowed and value not in values_allowed:
        raise InputError(source, f"{section}.{key} = {shown(value)}; expected one of {values_allowed}")
    try:
        return SPECS[section, key].check(value)
    except ValueError as exc:
        raise InputError(source, f"{section}.{key} {exc}") from None


def merge(cfg: RunConfig, values: dict[str, Any], source: str | Path | None) -> RunConfig:
    """Apply {section: {key: value}} onto cfg, each value checked against its Spec and choices; unknown keys and
    bad values are refused with the source named."""
    if not isinstance(values, dict):
        raise InputError(source, f"must hold sections of settings (got {type(values).__name__})")
    for section, entries in values.items():
        if section == "preset":
            cfg.preset = str(entries)
            continue
        if section == "device":
            if entries not in PRESET_DEVICES:
                raise InputError(source, f"device = {entries!r}; expected one of {list(PRESET_DEVICES)}")
            continue  # a hint about the preset, read by preset_device(), not a setting of the run
        if section not in _SECTIONS:
            raise InputError(source, f"unknown section [{section}]; expected one of {sorted(_SECTIONS)}")
        if not isinstance(entries, dict):
            raise InputError(source, f"[{section}] must be a table of settings (got {shown(entries)})")
        entries = _renamed(section, entries)
        target = getattr(cfg, section)
        names = {f.name for f in dataclasses.fields(target)}
        # Unknown keys first: a misspelt key is the likelier fault, and its value means nothing.
        for key in entries:
            if key not in names:
                raise InputError(source, f"unknown setting {section}.{key}")
        for key, value in entries.items():
            setattr(target, key, checked(section, key, value, source))
        if section == "train" and "batch" in entries and "cpu_batch" not in entries:
            target.cpu_batch = 0
    return cfg


def _renamed(section: str, entries: dict[str, Any]) -> dict[str, Any]:
    """A section's settings with old keys under their new names (the new key wins where both are given)."""
    out = {}
    for key, value in entries.items():
        new = RENAMED.get((section, key))
        if new is None:
            out[key] = value
        elif new not in entries:
            out[new] = value
    return out


def size_multiple(cfg: RunConfig) -> int:
    """What the image edge must be a multiple of: each level of the UNet (and of the autoencoder before it) after
    the first halves it."""
    levels = len(cfg.model.block_out_channels) + (len(cfg.autoencoder.channels) - 1 if cfg.autoencoder.enabled else 0)
    return 2 ** (levels - 1)


def shape_fault(cfg: RunConfig) -> tuple[str, set[tuple[str, str]]] | None:
    """What makes the settings impossible together for the networks, with the keys involved; None when nothing."""
    m, ae = cfg.model, cfg.autoencoder
    if cfg.fine_tune:
        return None  # the pretrained model's own networks set its shapes, checked when it is loaded
    keys = {("model", "image_size"), ("model", "block_out_channels")}
    why = f"{len(m.block_out_channels)} levels in model.block_out_channels"
    if ae.enabled:
        keys |= {("autoencoder", "enabled"), ("autoencoder", "channels")}
        why += f" and {len(ae.channels)} in autoencoder.channels"
    if m.image_size % size_multiple(cfg):
        return f"model.image_size {m.image_size} must be a multiple of {size_multiple(cfg)} for the {why} (each " \
               f"level after the first halves it)", keys
    for channels, attention in zip(m.block_out_channels, m.attention_levels):
        if attention and m.attention_head_dim > channels:
            return f"model.attention_head_dim {m.attention_head_dim} must be at most the channels of each level " \
                   f"with attention ({channels} in model.block_out_channels)", \
                {("model", "attention_head_dim"), ("model", "block_out_channels"), ("model", "attention_levels")}
    return None


def check_shape(cfg: RunConfig, source: str | Path | None) -> RunConfig:
    fault = shape_fault(cfg)
    if fault:
        raise InputError(source, fault[0])
    return cfg


def batch_for(train: TrainConfig, device: str) -> int:
    """The batch a run takes on `device` ("cpu" or "cuda")."""
    return train.cpu_batch if device == "cpu" and train.cpu_batch > 0 else train.batch


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(path, "does not exist") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # bad TOML, text that is not UTF-8, an integer of thousands of digits
        raise InputError(path, f"is not valid TOML ({exc})") from None


def _preset_path(name: str) -> Path:
    path = PRESETS / f"{name}.toml"
    if not path.exists():
        raise InputError(None, f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return path


def _preset_values(name: str) -> tuple[Path, dict[str, Any]]:
    path = _preset_path(name)
    values = load_toml(path)
    values.pop("description", None)  # for people choosing a preset, not a setting of the run
    return path, values


def load_preset(name: str) -> RunConfig:
    path, values = _preset_values(name)
    cfg = check_shape(merge(RunConfig(), values, str(path)), path)
    cfg.preset = name
    return cfg


def preset_description(name: str) -> str:
    """The preset's one line on what it is for (its `description`), empty when it has none."""
    return str(load_toml(_preset_path(name)).get("description", ""))


def preset_device(name: str) -> str:
    """What a preset is sized for: "cpu" or "gpu" ("cpu" when it does not say)."""
    path = PRESETS / f"{name}.toml"
    return str(load_toml(path).get("device", "cpu")) if path.exists() else "cpu"


def data_facts(values: dict[str, Any], source: str | Path | None = "config") -> DataFacts:
    """The data facts of a saved config given as a dict, checked; configs written before the facts had their own
    section kept them among the model settings."""
    sections = [values.get("model") or {}, values.get("facts") or {}]
    for section, entries in zip(("model", "facts"), sections):
        if not isinstance(entries, dict):
            raise InputError(source, f"[{section}] must be a table of settings (got {shown(entries)})")
    facts = DataFacts(**{k: checked("facts", k, v, source) for k, v in {**sections[0], **sections[1]}.items()
                         if k in _FACT_NAMES})
    if facts.mask_mode not in ("", *MaskMode.values()):
        raise InputError(source, f"facts.mask_mode = {shown(facts.mask_mode)}; expected one of {MaskMode.values()}")
    return facts


def from_dict(values: dict[str, Any], source: str | Path | None = "config") -> RunConfig:
    """A saved config (config.json, a checkpoint's or an HDF5 file's), old or new, with its data facts; every value
    checked, a fault named with `source` (the file it came from)."""
    if not isinstance(values, dict):
        raise InputError(source, f"does not hold a config (expected a JSON object, got {type(values).__name__})")
    choices = {k: v for k, v in values.items() if k != "facts"}
    if isinstance(choices.get("model"), dict):
        choices["model"] = {k: v for k, v in choices["model"].items() if k not in _FACT_NAMES}
    cfg = check_shape(merge(RunConfig(), choices, source), source)
    cfg.facts = data_facts(values, source)
    return cfg


def resolve(preset: str | None, config_file: str | Path | None, overrides: dict[str, Any],
            source: str = COMMAND_LINE) -> RunConfig:
    """Preset, then the user's TOML, then the overrides (from the command line, or the `source` the app names):
    the later wins. Each value is checked as it is read, and the settings together once all are in, the fault
    named with the last source that set one of the settings involved."""
    preset_path, preset_values = _preset_values(preset or "demo")
    layers = [(str(preset_path), preset_values)]
    if config_file:
        layers.append((str(config_file), load_toml(config_file)))
    layers.append((source, overrides))
    cfg = merge(RunConfig(), preset_values, str(preset_path))
    cfg.preset = preset or "demo"
    for name, values in layers[1:]:
        merge(cfg, values, name)
    fault = shape_fault(cfg)
    if fault:
        setters = [name for name, values in layers
                   if any(isinstance(values.get(s), dict) and k in values[s] for s, k in fault[1])]
        raise InputError(setters[-1] if setters else layers[0][0], fault[0])
    return cfg


def path_sha256(path: str | Path) -> str:
    """A short hash of a path made absolute: tells two data sets apart without naming their folders."""
    return hashlib.sha256(str(Path(path).resolve()).encode("utf-8")).hexdigest()[:16]


def public_path(path: str | Path, full: bool = False) -> str:
    """How an output names a data path: "BraTS_subset (sha256 1a2b…)", or the full path when asked."""
    return str(path) if full else f"{Path(path).name} (sha256 {path_sha256(path)})"


def public_config(values: dict[str, Any]) -> dict[str, Any]:
    """A config (as a dict) fit for outputs: data.path cut to its base name plus path_sha256, unless
    data.record_full_path. Applying it twice changes nothing."""
    out = copy.deepcopy(values)
    data = out.get("data")
    if not isinstance(data, dict) or data.get("record_full_path") or not data.get("path"):
        return out
    if not data.get("path_sha256"):
        data["path_sha256"] = path_sha256(data["path"])
    data["path"] = Path(str(data["path"])).name
    return out


def save(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(cfg.to_json())


def load(path: str | Path) -> RunConfig:
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, "does not exist") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # bad JSON, text that is not UTF-8, an integer of thousands of digits
        raise InputError(path, f"is not valid JSON ({exc})") from None
    return from_dict(values, path)
