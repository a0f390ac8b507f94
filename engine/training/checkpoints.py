"""Checkpoints as safetensors plus JSON: loading never unpickles code.

A checkpoint is a folder holding the network, its EMA copy, the optimizer state, and
``state.json`` (step, data facts, the resolved config). It is written under a temporary
name and renamed, so a crash mid-save never leaves a half checkpoint that resuming
would pick up. Where the folders lie in a run is engine.training.run_dir's business.
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

STATE = "state.json"  # its presence marks a complete checkpoint: it is written last, inside the temporary folder


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / STATE).is_file()


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


def write(final: Path, step: int, model: torch.nn.Module, ema: dict[str, torch.Tensor] | None,
          opt: torch.optim.Optimizer | None, state: dict[str, Any],
          extra_weights: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write the checkpoint folder `final`; `extra_weights` adds named weight files (a latent model's autoencoder).

    Where checkpoints go and how many are kept is the run folder's business (engine.training.run_dir).
    """
    from safetensors.torch import save_file

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
    (tmp / STATE).write_text(json.dumps(extra, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / STATE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(ckpt / STATE, f"is unreadable ({exc})") from None


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
