"""The run folder, the one place that knows its layout:

    RUN/config.json        the resolved config, with the data's full path (what resuming reads)
    RUN/run.json           facts taken from the data (normalisation, names, geometry), as checkpoints carry them
    RUN/loss.jsonl         one JSON row per logged step
    RUN/checkpoints/step_NNNNNNN/   one checkpoint each; engine.training.checkpoints writes and reads what is inside
    RUN/autoencoder/       stage 1 of a latent model, a run folder of its own (checkpoints/, loss.jsonl)

Nothing here imports torch: `medsynth info` and the app read run folders without it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import RunConfig
from engine.config import load as load_config
from engine.config import save as save_config
from engine.errors import InputError
from engine.training import checkpoints

if TYPE_CHECKING:
    import torch

CONFIG = "config.json"
FACTS = "run.json"
LOSS_LOG = "loss.jsonl"
CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step_"
AUTOENCODER = "autoencoder"
KEEP = 3  # checkpoints kept; older ones are removed as new ones are written


class LossLog:
    """The loss log opened for appending; each row is flushed so a crash keeps what was logged."""

    def __init__(self, path: Path, note: str | None = None) -> None:
        self._fh = open(path, "a")
        self.note = note  # what opening it did that the user should hear of (a torn line dropped), or None

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunDir | None:
        """The run folder a checkpoint lies in; None for a checkpoint folder copied out on its own."""
        ckpt = Path(ckpt)
        return cls(ckpt.parent.parent) if ckpt.parent.name == CHECKPOINTS else None

    # -- paths ------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def facts_path(self) -> Path:
        return self.path / FACTS

    @property
    def loss_log_path(self) -> Path:
        return self.path / LOSS_LOG

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def autoencoder(self) -> RunDir:
        """Stage 1 of a latent model: its own checkpoints and loss log, beside the diffusion model's."""
        return RunDir(self.path / AUTOENCODER)

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"{STEP_PREFIX}{step:07d}"

    # -- config and facts -------------------------------------------------------------------
    def read_config(self) -> RunConfig:
        return load_config(self.config_path)

    def write_config(self, cfg: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = _beside(self.config_path)
        save_config(cfg, tmp)
        os.replace(tmp, self.config_path)  # a resumed run rewrites it: a crash mid-write keeps the old one

    def read_facts(self) -> dict[str, Any]:
        try:
            return json.loads(self.facts_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(self.facts_path, f"is unreadable ({exc})") from None

    def write_facts(self, facts: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _replace_text(self.facts_path, json.dumps(facts, indent=2))

    # -- checkpoints ------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Tidy what a crash mid-save left, before a run goes on (both stages); returns what was done, in words.

        A step_N.tmp is a checkpoint cut short while being written: removed. A step_N.old is a finished
        checkpoint moved aside for its replacement: put back when the replacement never arrived, else removed.
        """
        said = []
        for folder in (self, self.autoencoder):
            for path in sorted(folder.checkpoints_dir.glob(f"{STEP_PREFIX}*")):
                name = path.name
                if name[len(STEP_PREFIX):].isdigit() and not checkpoints.is_checkpoint(path):
                    shutil.rmtree(path, ignore_errors=True)
                    said.append(f"{path}: removed, an old checkpoint a crash cut short while it was being removed")
                elif name.endswith(checkpoints.WRITING):
                    shutil.rmtree(path, ignore_errors=True)
                    said.append(f"{path}: removed, a checkpoint a crash cut short while it was being written")
                elif name.endswith(checkpoints.REPLACED):
                    final = path.with_name(name[:-len(checkpoints.REPLACED)])
                    if not final.exists() and checkpoints.is_checkpoint(path):
                        path.rename(final)
                        said.append(f"{final}: put back (a save that was replacing it was cut short)")
                    else:
                        shutil.rmtree(path, ignore_errors=True)
                        said.append(f"{path}: removed, the old copy of a checkpoint saved again")
        return said

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first; not one still being written (step_N.tmp)."""
        found = self.checkpoints_dir.glob(f"{STEP_PREFIX}*")
        return sorted(p for p in found if p.name[len(STEP_PREFIX):].isdigit() and checkpoints.is_checkpoint(p))

    def steps(self) -> list[int]:
        return [step_of(p) for p in self.checkpoints()]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def checkpoint(self, step: int) -> Path:
        path = self.checkpoint_path(step)
        if not checkpoints.is_checkpoint(path):
            have = ", ".join(map(str, self.steps())) or "none"
            raise InputError(self.path, f"holds no checkpoint at step {step} (checkpoints at steps: {have})")
        return path

    def save_checkpoint(self, step: int, model: torch.nn.Module, ema: dict[str, torch.Tensor] | None,
                        opt: torch.optim.Optimizer | None, state: dict[str, Any],
                        extra_weights: dict[str, dict[str, torch.Tensor]] | None = None, keep: int = KEEP) -> Path:
        """Write checkpoints/step_N, then drop all but the newest `keep`."""
        path = checkpoints.write(self.checkpoint_path(step), step, model, ema, opt, state, extra_weights)
        for old in self.checkpoints()[:-keep]:
            # Unmarked first: a crash mid-removal must not leave a folder that still looks complete.
            (old / checkpoints.STATE).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)
        return path

    # -- new run or resume ------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        """A checkpoint of either stage: a latent run stopped in stage 1 has only the autoencoder's."""
        return self.latest() is not None or self.autoencoder.latest() is not None

    def holds_run(self) -> bool:
        """A run was started here: a checkpoint of either stage, or the config written before the first step
        (a run stopped before its first checkpoint)."""
        return self.has_checkpoint() or self.config_path.is_file()

    def refuse_new_run(self) -> None:
        """A new run never mixes with an old one's checkpoints or loss log: resuming, or a new folder, is the
        user's choice to make (as nnU-Net's --c is)."""
        if self.has_checkpoint():
            raise InputError(self.path, "already holds a training run; resume it to continue, or "
                                        "choose a new run folder")
        if self.holds_run():
            rows = self.loss_rows()
            logged = f", logged to step {rows[-1]['step']}" if rows else ""
            raise InputError(self.path, f"holds a training run that stopped before its first checkpoint{logged}; "
                                        "resume it to train it again from its start with its own settings, or "
                                        "choose a new run folder")

    def resume_checkpoint(self) -> Path | None:
        """The diffusion checkpoint to resume from; None when the run stopped in stage 1 or before its first
        checkpoint (it then starts again from step 0, with its own config)."""
        if not self.path.exists():
            raise InputError(self.path, "does not exist")
        if not self.holds_run():
            raise InputError(self.path, f"is not a training run to resume (no {CHECKPOINTS}/{STEP_PREFIX}*/"
                                        f"{checkpoints.STATE} in it)")
        if not self.config_path.is_file():
            raise InputError(self.config_path, "is missing; the run folder cannot be resumed without it")
        return self.latest()

    def resume_step(self) -> int:
        """The diffusion step a resumed run starts from (0 while stage 1 is unfinished)."""
        ckpt = self.resume_checkpoint()
        return 0 if ckpt is None else int(checkpoints.read_state(ckpt)["step"])

    # -- loss log ---------------------------------------------------------------------------
    def _loss_lines(self) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """Each row with its line as written, and how many lines were not rows: a line cut short by a crash
        mid-write (a full disk leaves one, or zero bytes) is left out."""
        if not self.loss_log_path.exists():
            return [], 0
        found, torn = [], 0
        for line in self.loss_log_path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
                found.append((line, row))
            elif line.strip():
                torn += 1
        return found, torn

    def loss_rows(self, upto: int | None = None) -> list[dict[str, Any]]:
        return [row for _, row in self._loss_lines()[0] if upto is None or row["step"] <= upto]

    def trim_loss_log(self, upto: int) -> int:
        """Drop rows after step `upto` (a resumed run trains those steps again and logs them anew) and lines
        that are not rows; returns how many of those there were."""
        if not self.loss_log_path.exists():
            return 0
        lines, torn = self._loss_lines()
        kept = [line for line, row in lines if row["step"] <= upto]
        _replace_text(self.loss_log_path, "".join(line + "\n" for line in kept))
        return torn

    def open_loss_log(self, start: int) -> LossLog:
        """The log, for a run that trains on from step `start`: rows logged after it are dropped first,
        since those steps are trained, and logged, again."""
        self.path.mkdir(parents=True, exist_ok=True)
        torn = self.trim_loss_log(start)
        note = (f"{self.loss_log_path}: dropped {torn} line{'s' if torn != 1 else ''} cut short by a crash or a "
                "full disk") if torn else None
        return LossLog(self.loss_log_path, note)


def _beside(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _replace_text(path: Path, text: str) -> None:
    """Write a file whole or not at all: a crash mid-write leaves the old one, never half of the new."""
    tmp = _beside(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def step_of(ckpt: str | Path) -> int:
    return int(Path(ckpt).name[len(STEP_PREFIX):])


def is_run_or_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / CHECKPOINTS).is_dir() or checkpoints.is_checkpoint(p))


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (→ its latest checkpoint) or a checkpoint folder, validated."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    if p.name.endswith((checkpoints.WRITING, checkpoints.REPLACED)):
        raise InputError(p, "is a checkpoint a crash cut short while it was being saved or replaced; use the "
                            "run folder, or a checkpoint folder named step_N")
    if checkpoints.is_checkpoint(p):
        return p
    found = RunDir(p).latest()
    if found is None:
        raise InputError(p, f"holds no checkpoint (expected {CHECKPOINTS}/{STEP_PREFIX}*/{checkpoints.STATE})")
    return found
