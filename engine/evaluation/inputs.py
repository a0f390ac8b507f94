"""An evaluation's inputs: the synthetic file and the real data it is measured against, brought to one scale.

Sets, all brought to the synthetic file's size and scaled to [0, 1] with its stored
normalisation so every metric compares like with like:
  synth  the file's complete samples;
  train  the generator's training data (memorization, and the "real" arm of utility);
  test   held-out real data that utility figures are scored on. Without a separate test
         set, a fixed fifth of the training data is held out and the report says that the
         generator has seen those cases.

Messages here reach both the CLI and the app, so they name the data ("held-out real
data"), never a command-line flag or a widget.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import RESOURCES, from_dict, path_sha256, public_path
from engine.data.dataset import ImageSet
from engine.data.prepare import resize
from engine.errors import InputError
from engine.io.load import load_images, volume_options
from engine.io.medsynth_h5 import Header, open_file, read_header, read_image_set
from engine.io.volumes import VolumeOptions
from engine.jobs import Emit, Message

BUNDLED_DEMO = RESOURCES / "demo"  # phantoms.h5 and the run/ of the demo model shipped with the app


def scaled(s: ImageSet, size: tuple[int, ...], lo: float, hi: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Images in [0, 1] by the synthetic file's normalisation, at its size; masks resized by nearest."""
    if s.images.ndim != len(size) + 2:
        raise InputError(s.source or None, f"holds {s.images.ndim - 2}D images; the synthetic samples are "
                                           f"{len(size)}D, so the two cannot be compared")
    x = torch.from_numpy(np.ascontiguousarray((s.images - lo) / max(hi - lo, 1e-12), dtype=np.float32))
    if tuple(x.shape[2:]) != tuple(size):
        if len(set(size)) != 1:
            raise InputError(s.source, f"has size {tuple(x.shape[2:])}; the synthetic samples are {tuple(size)}")
        x = resize(x, size[0])
    masks = None
    if s.masks is not None:
        m = torch.from_numpy(s.masks.astype(np.float32))[:, None]
        if tuple(m.shape[2:]) != tuple(size):
            m = resize(m, size[0], nearest=True)
        masks = m[:, 0].numpy().astype(np.uint8)
    return x.clamp(0.0, 1.0).numpy(), masks


def subset(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:k]) if n > k else np.arange(n)


def read_synth(path: Path) -> tuple[ImageSet, Header, Any, float, float]:
    """The synthetic set, its header, its run config (or None) and its normalisation range."""
    synth = read_image_set(path)
    with open_file(path) as f:
        h = read_header(f)
    cfg = from_dict(h.config, source=path) if h.config else None
    lo = float(h.normalisation.get("lo", synth.images.min()))
    hi = float(h.normalisation.get("hi", synth.images.max()))
    return synth, h, cfg, lo, hi


@lru_cache(maxsize=1)
def _demo_checkpoint_hashes() -> frozenset[str]:
    from engine.training.checkpoints import sha256
    from engine.training.run_dir import RunDir

    checkpoints = RunDir(BUNDLED_DEMO / "run").checkpoints()
    return frozenset(sha256(p) for ckpt in checkpoints for p in ckpt.glob("*.safetensors"))


def default_training_data(synth: str | Path, header: Header | None = None) -> Path | None:
    """The training data an evaluation of this file uses when none is given: the path its run
    recorded, when that still exists, else the bundled demo phantoms for a file that the bundled
    demo model generated (known by its checkpoint hash; its recorded path is relative to the
    source tree, so it rarely resolves where the app runs)."""
    if header is None:
        with open_file(synth) as f:
            header = read_header(f)
    data = header.config.get("data") or {}
    recorded, sha = data.get("path"), data.get("path_sha256")
    # A base name alone (the default, so no patient folder leaks) is trusted only when its hash says it is
    # the very path the run read: a same-named file in the working folder is someone else's data.
    if recorded and Path(recorded).exists() and (not sha or path_sha256(recorded) == sha):
        return Path(recorded)
    demo = BUNDLED_DEMO / "phantoms.h5"
    sha = header.checkpoint_sha256
    if sha and demo.exists() and sha in _demo_checkpoint_hashes():
        return demo
    return None


def load_real_like(path: str | Path, cfg: Any, spacing: tuple[float, ...] | None, split: str,
                   size: tuple[int, ...] | None = None) -> ImageSet:
    """Real data read the way the run read it: volumes at the synthetic file's spacing. A file of volumes
    (`size` has three sides) whose run is not recorded as 3D still has real data read as volumes, not slices."""
    opts = volume_options(cfg) if cfg is not None else None
    if opts is None and size is not None and len(size) == 3:
        opts = VolumeOptions(size=int(max(size)))
    if opts is not None and spacing:
        opts.spacing = tuple(float(v) for v in spacing)
    return load_images(path, split=split, volumes=opts)


def load_training_like(synth_path: str | Path, train_data: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(synthetic images, training images), both at the file's size and in [0, 1]: what the
    memorization gate of an export compares."""
    synth, h, cfg, lo, hi = read_synth(Path(synth_path))
    train = load_real_like(train_data, cfg, h.spacing, "train", synth.size)
    return scaled(synth, synth.size, lo, hi)[0], scaled(train, synth.size, lo, hi)[0]


def read_sets(synth_path: Path, real_path: Path | None, train_path: Path | None, test_share: float, seed: int,
              emit: Emit) -> dict[str, Any]:
    """The synth, train and test sets as (images, masks, labels), their scale, notes for the report and the
    sources by public name. `train_path` None: the data the file's run recorded (`default_training_data`)."""
    synth, h, cfg, lo, hi = read_synth(synth_path)
    size = synth.size
    spacing = h.spacing
    train_path = train_path or default_training_data(synth_path, h)
    if train_path is None and real_path is None:
        raise InputError(synth_path, "records no training data that still exists; give held-out real "
                                     "data and/or the generator's training data")
    notes = []
    if train_path is not None and Path(train_path).resolve() == (BUNDLED_DEMO / "phantoms.h5").resolve():
        notes.append("training data: the bundled demo phantoms, which the demo model was trained on")
    train = load_real_like(train_path, cfg, spacing, "train", size) if train_path else None
    test = load_real_like(real_path, cfg, spacing, "test", size) if real_path else None
    if train is not None and test is not None and train_path.resolve() == real_path.resolve() \
            and train_path.suffix.lower() != ".npz":
        test = None  # the same cases twice: hold out a share instead
    sets: dict[str, Any] = {"lo": lo, "hi": hi, "size": size, "header": h}
    sets["synth"] = scaled(synth, size, lo, hi) + (synth.labels,)
    if train is None:
        train = test
        test = None
        notes.append("no training data given: memorization was measured against the held-out real data")
    if test is None:
        idx_train, idx_test = _split(len(train), test_share, seed)
        full = scaled(train, size, lo, hi) + (train.labels,)
        sets["train"] = _take(full, idx_train)
        sets["test"] = _take(full, idx_test)
        notes.append(f"held-out real data: {len(idx_test)} of the {len(train)} training cases, which the "
                     "generator has seen — utility figures are optimistic; give separate held-out real data "
                     "for unseen cases")
    else:
        sets["train"] = scaled(train, size, lo, hi) + (train.labels,)
        sets["test"] = scaled(test, size, lo, hi) + (test.labels,)
    for name in ("synth", "train", "test"):
        if sets[name][0].shape[1] != sets["synth"][0].shape[1]:
            raise InputError(real_path or train_path, f"has {sets[name][0].shape[1]} channels; the "
                                                      f"synthetic samples have {sets['synth'][0].shape[1]}")
    sets["notes"] = notes
    # Written into the file and its report: data folders by name and hash unless the run recorded full paths.
    full = bool((h.config.get("data") or {}).get("record_full_path"))
    sets["sources"] = {"synth": public_path(synth_path, full),
                       "train": public_path(train_path, full) if train_path else None,
                       "test": public_path(real_path, full) if real_path and test is not None else "held out"}
    emit(Message(f"evaluating {len(sets['synth'][0])} synthetic samples against {len(sets['train'][0])} "
                 f"training and {len(sets['test'][0])} held-out real samples"))
    return sets


def _split(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n < 2:
        raise InputError(None, "evaluation needs at least 2 real samples")
    order = np.random.default_rng([seed, 99]).permutation(n)
    k = min(max(int(round(n * share)), 1), n - 1)
    return np.sort(order[k:]), np.sort(order[:k])


def _take(item: tuple, idx: np.ndarray) -> tuple:
    return tuple(None if a is None else a[idx] for a in item)

