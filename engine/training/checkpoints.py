"""Checkpoints as safetensors plus JSON: loading never unpickles code.

A checkpoint is a folder holding the network, its EMA copy, the optimizer state, and
``state.json`` (step, data facts, the resolved config, each weight file's sha256). It is
written under a temporary name and renamed, so a crash mid-save never leaves a half
checkpoint that resuming would pick up; a checkpoint already at that name is moved aside,
not deleted, until its replacement is in place. Loading checks each weight file against
its recorded sha256 and refuses NaN or infinite weights, so bit rot is one line naming the
file, never NaN samples. Where the folders lie in a run is engine.training.run_dir's business.
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
HASHES = "sha256"  # state.json's {weight file name: sha256 of its bytes}; older checkpoints have none
WRITING = ".tmp"  # a checkpoint being written: never listed, never loaded
REPLACED = ".old"  # a finished checkpoint moved aside while its replacement is renamed into place


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / STATE).is_file()


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def _non_finite(files: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    """Names (file.tensor) of floating tensors holding NaN or infinity."""
    import torch

    return [f"{name}.{k}" for name, tensors in files.items() for k, v in tensors.items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


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

    files = {"model": _contiguous(model.state_dict())}
    if ema is not None:
        files["ema"] = _contiguous(ema)
    files.update({name: _contiguous(weights) for name, weights in (extra_weights or {}).items()})
    if _non_finite(files):
        # A diverged run would otherwise save NaN checkpoints until the last good one was removed as old.
        raise InputError(final, f"not saved: the weights hold NaN or infinite values at step {step} (training "
                                "diverged; a lower learning rate may help); the earlier checkpoints are kept")
    extra = dict(state, step=step)
    if opt is not None:
        files["optimizer"], extra["optimizer_param_groups"] = optimizer_tensors(opt)
    tmp = final.with_name(final.name + WRITING)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        hashes = {}
        for name, tensors in files.items():
            path = tmp / f"{name}.safetensors"
            save_file(tensors, str(path))
            hashes[path.name] = sha256(path)
        extra[HASHES] = hashes
        (tmp / STATE).write_text(json.dumps(extra, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk gets its space back; the earlier checkpoints stand
        raise
    if final.exists():
        # Never delete a finished checkpoint before its replacement is whole: a crash between these renames
        # leaves it at step_N.old, which the run folder puts back (RunDir.recover).
        old = final.with_name(final.name + REPLACED)
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _state_fault(state: Any) -> str | None:
    """What makes a parsed state.json unusable, in words; None when its shape is sound."""
    if not isinstance(state, dict):
        return f"holds {type(state).__name__} where a JSON object was expected"
    step = state.get("step")
    if not _is_int(step) or step < 0:
        return f"holds step {step!r}; expected a whole number of steps (0 or more)"
    if not isinstance(state.get("config"), dict):
        return "holds no training config (its \"config\" is missing or not an object)"
    groups = state.get("optimizer_param_groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return "holds optimizer_param_groups that are not a list of objects"
    hashes = state.get(HASHES, {})
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        return f"holds a {HASHES} entry that is not a list of file checksums"
    norm = state.get("normalisation")
    if state.get("stage") != "autoencoder" and not (isinstance(norm, dict) and isinstance(norm.get("modality"), str)
                                 and _is_number(norm.get("lo")) and _is_number(norm.get("hi"))):
        return "holds a normalisation without its modality and numeric lo / hi"
    names = state.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return "holds class_names that are not a list of names"
    if "latent_scale" in state and not _is_number(state["latent_scale"]):
        return f"holds latent_scale {state['latent_scale']!r}; expected a number"
    return None


def read_state(ckpt: Path) -> dict[str, Any]:
    """state.json, checked: a nonsense one (a wrong type, a config that cannot be used) is one line naming it."""
    from engine.config import from_dict

    path = Path(ckpt) / STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is unreadable ({exc})") from None
    fault = _state_fault(state)
    if fault is None:
        try:
            from_dict(state["config"])
        except InputError as exc:
            fault = f"holds a config that cannot be used ({exc.fault})"
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            fault = f"holds a config that cannot be used ({type(exc).__name__}: {exc})"
    if fault is not None:
        raise InputError(path, fault)
    return state


def _damaged(path: Path, why: str) -> InputError:
    return InputError(path, f"is damaged ({why}); this checkpoint cannot be used — an earlier checkpoint of "
                            "the run may be intact")


def _check_hash(path: Path, expected: str | None) -> None:
    if not path.is_file():
        raise InputError(path, "is missing")
    if expected is not None and sha256(path) != expected:
        raise _damaged(path, "its sha256 differs from the one recorded when it was saved")


def verify(ckpt: Path) -> None:
    """Every weight file of the checkpoint against the sha256 state.json records (older checkpoints record
    none), without loading it: what `medsynth info` says of a checkpoint is then true of its files."""
    ckpt = Path(ckpt)
    for name, expected in read_state(ckpt).get(HASHES, {}).items():
        _check_hash(ckpt / Path(name).name, expected)


def read_weights(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    """One weight file, verified: its sha256 as recorded, and every value finite. Each load of a checkpoint
    (resume, stage 1, sampling) comes through here."""
    from safetensors.torch import load_file

    path = Path(ckpt) / f"{name}.safetensors"
    _check_hash(path, read_state(ckpt).get(HASHES, {}).get(path.name))
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise InputError(path, f"is unreadable ({exc})") from None
    bad = _non_finite({name: tensors})
    if bad:
        raise _damaged(path, f"{len(bad)} of its tensors hold NaN or infinite values, the first {bad[0]}")
    return tensors


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
