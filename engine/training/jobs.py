"""The training job a config asks for: MedSynth's own network, or a fine-tune of a pretrained text-to-image model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config import RunConfig
from engine.training.finetune import FinetuneJob
from engine.training.run_dir import RunDir
from engine.training.train import TrainJob


def train_job(cfg: RunConfig | None, run_dir: str | Path, *, resume: bool = False, **kwargs: Any) -> TrainJob:
    """A new run from `cfg`, or with `resume` the run in `run_dir` continued (its own config decides the kind)."""
    fine_tune = RunDir(run_dir).read_config().fine_tune if resume and cfg is None and \
        RunDir(run_dir).config_path.is_file() else bool(cfg and cfg.fine_tune)
    kind = FinetuneJob if fine_tune else TrainJob
    return kind(cfg, run_dir, resume=resume, **kwargs)
