"""Checkpoints as safetensors plus JSON: loading never unpickles code.

A checkpoint is a folder ``checkpoints/step_NNNNNNN`` holding the network, its EMA
copy, the optimizer state, and ``state.json`` (step, data facts, the resolved
config). It is written under a temporary name and renamed, so a crash mid-save
never leaves a half checkpoint that ``--resume`` would pick up.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import InputError

if TYPE_CHECKING:  # torch is imported where tensors are handled: `medsynth info` on a run needs none
    import torch

KEEP = 3


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    return sorted(p for p in d.glob("step_*") if p.is_dir() and (p / "state.json").exists())


def latest(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    import torch

    sd = opt.state_dict()
    tensors = {}
    for idx, entries in sd["state"].items():
        for name, value in entries.items():
            tensors[f"{idx}.{name}"] = torch.as_tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return _contiguous(tensors), groups


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    fixed = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    opt.load_state_dict({"state": state, "param_groups": fixed})


def save(run_dir: str | Path, step: int, model: torch.nn.Module, ema: dict[str, torch.Tensor] | None,
         opt: torch.optim.Optimizer | None, state: dict[str, Any], keep: int = KEEP,
         extra_weights: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write checkpoints/step_N; `extra_weights` adds named weight files (a latent model's autoencoder)."""
    from safetensors.torch import save_file

    final = checkpoint_dir(run_dir) / f"step_{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_contiguous(model.state_dict()), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(_contiguous(ema), str(tmp / "ema.safetensors"))
    for name, weights in (extra_weights or {}).items():
        save_file(_contiguous(weights), str(tmp / f"{name}.safetensors"))
    extra = dict(state, step=step)
    if opt is not None:
        tensors, groups = optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        extra["optimizer_param_groups"] = groups
    (tmp / "state.json").write_text(json.dumps(extra, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve(path: str | Path) -> Path:
    """A run directory (→ its latest checkpoint) or a checkpoint folder, validated."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    if (p / "state.json").exists():
        return p
    found = latest(p)
    if found is None:
        raise InputError(p, "holds no checkpoint (expected checkpoints/step_*/state.json)")
    return found


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(ckpt / "state.json", f"is unreadable ({exc})") from None


def read_weights(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = ckpt / f"{name}.safetensors"
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise InputError(path, "is missing") from None
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise InputError(path, f"is unreadable ({exc})") from None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
