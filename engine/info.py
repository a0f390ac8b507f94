"""`medsynth info`: what a file or run directory holds, as plain text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.config import RunConfig, from_dict
from engine.errors import InputError
from engine.training import checkpoints
from engine.training.run_dir import RunDir, is_run_or_checkpoint, resolve_checkpoint

if TYPE_CHECKING:
    from engine.data.dataset import ImageSet
    from engine.io.medsynth_h5 import Header


def _h5(path: Path) -> list[str]:
    from engine.io.medsynth_h5 import (
        IMAGES,
        LABELS,
        MASKS,
        SEEDS,
        open_file,
        read_header,
        read_metrics,
        read_prompts,
    )

    with open_file(path) as f:
        h = read_header(f)
        n = h.n_complete
        lines = [f"{path}: MedSynth HDF5 v{h.format_version} ({h.kind}), {n} of {h.n_planned} samples complete"]
        for name in (IMAGES, MASKS, LABELS, SEEDS):
            if name in f:
                d = f[name]
                lines.append(f"  /{name:<7} {d.dtype} {tuple(d.shape)}")
        if h.class_names:
            lines.append(f"  classes: {', '.join(h.class_names)}")
            if LABELS in f and n:
                counts = np.bincount(f[LABELS][:n], minlength=len(h.class_names))
                lines.append("  per class: " + ", ".join(str(int(c)) for c in counts))
        prompts = read_prompts(f)
        figures, summary = read_metrics(f)
    if prompts is not None:
        lines.append("  " + _prompt_line(prompts))
    if h.label_names:
        lines.append("  mask labels: " + ", ".join(f"{k}={v}" for k, v in h.label_names.items()))
    if h.mask_coding:
        lines.append("  mask coding (label → value in the user's files): "
                     + ", ".join(f"{k} → {v}" for k, v in sorted(h.mask_coding.items())))
    if h.normalisation:
        lines.append(f"  intensity: {h.normalisation.get('modality', '')} {h.intensity_units} "
                     f"range [{h.normalisation.get('lo', '?')}, {h.normalisation.get('hi', '?')}]")
    lines.append(f"  spacing: {list(h.spacing) if h.spacing else None}  created: {h.created}  "
                 f"medsynth {h.medsynth_version}")
    if h.volume:
        lines.append("  " + _orientation(h))
    if figures:
        lines.append("  metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items()))
    from engine.evaluation.figures import unmeasured_groups

    for why, unmeasured in unmeasured_groups(summary):
        lines.append(f"  not measured: {', '.join(key for key, _ in unmeasured)} — {why}")
    return lines


def _prompt_line(prompts: list[str]) -> str:
    """'prompts: 2 distinct (e.g. "chest x-ray, pneumonia")': the most used one stands for them."""
    if not prompts:
        return "prompts: stored, none complete yet"
    counts = Counter(prompts)
    example = max(counts, key=counts.__getitem__)
    shown = example if len(example) <= 80 else example[:79] + "…"
    return f'prompts: {len(counts)} distinct (e.g. "{shown}")'


def _orientation(header: Header) -> str:
    import nibabel as nib

    from engine.io.export_nifti import sample_affine

    # The geometry a NIfTI export writes, so what info says is what Slicer will show.
    affine = sample_affine(header)
    try:
        letters = "".join(c or "?" for c in nib.aff2axcodes(affine))
    except ValueError:
        letters = "???"
    origin = ", ".join(f"{v:.4g}" for v in affine[:3, 3])
    return f"orientation: {letters} (voxel x, y, z = stored W, H, D), origin ({origin}) mm"


def _run_dir(path: Path) -> list[str]:
    ckpt = resolve_checkpoint(path)
    checkpoints.verify(ckpt)  # what info says of a checkpoint must be true of its files
    state = checkpoints.read_state(ckpt)
    cfg = state["config"]
    folder = RunDir(path)
    steps = folder.steps() if ckpt.parent == folder.checkpoints_dir else [state["step"]]
    run = from_dict(cfg)
    lines = [f"{path}: training run, preset {cfg.get('preset') or '-'}, step {state['step']} of "
             f"{cfg['train']['steps']}",
             f"  checkpoints at steps: {', '.join(map(str, steps))}",
             f"  model: {run.model.image_size} px, {run.facts.image_channels} channel(s), "
             f"mask {run.mask_mode} ({run.facts.mask_labels} labels), {run.facts.num_classes} classes",
             f"  training: loss {cfg['train']['loss']}, objective {run.train.objective}, batch "
             f"{cfg['train']['batch']}, lr {cfg['train']['lr']}",
             f"  data: {state.get('data_source')}"]
    if run.fine_tune:
        p = run.pretrained
        prompts = state.get("prompts") or []
        lines.insert(3, f"  fine-tuned from {p.path} ({f'LoRA rank {p.lora_rank}' if p.lora_rank else 'the whole UNet'}"
                        f"{', text encoder too' if p.train_text_encoder else ''}), {len(prompts)} distinct prompt(s)"
                        + (f', e.g. "{prompts[0]}"' if prompts else ""))
    rows = folder.loss_rows()
    if rows:
        lines.append(f"  loss: {rows[0]['loss']:.4f} at step {rows[0]['step']} -> {rows[-1]['loss']:.4f} "
                     f"at step {rows[-1]['step']}")
    if run.autoencoder.enabled:
        lines += _latent_lines(run, state, state.get("autoencoder_reconstruction"))
    return lines


def _latent_lines(run: RunConfig, state: dict, reconstruction: dict | None) -> list[str]:
    """The latent the diffusion model learns, and how well stage 1's autoencoder gives images back."""
    from engine.models.networks import diffusion_shape, latent_factor, pixel_channels
    from engine.training.autoencoder import describe_reconstruction

    dims = max(run.facts.spatial_dims, 2)
    shape = " x ".join(map(str, diffusion_shape(run)))
    pixels = " x ".join([str(pixel_channels(run))] + [str(run.model.image_size)] * dims)
    lines = [f"  latent: {shape} (from {pixels}, {latent_factor(run)}x smaller per axis), autoencoder "
             f"{run.autoencoder.steps} steps"]
    norm = state.get("normalisation") or {}
    span = float(norm["hi"]) - float(norm["lo"]) if "hi" in norm and "lo" in norm else None
    if reconstruction:
        lines.append("  autoencoder " + describe_reconstruction(reconstruction, span, norm.get("units", "")))
    else:
        lines.append("  autoencoder reconstruction error: not recorded (stage 1 has not finished, or the run "
                     "predates the figure)")
    return lines


def _stage_1_run(path: Path) -> list[str]:
    """A latent run stopped in stage 1: what its autoencoder has done so far."""
    stage1 = RunDir(path).autoencoder
    ckpt = stage1.latest()
    checkpoints.verify(ckpt)
    state = checkpoints.read_state(ckpt)
    run = from_dict(state["config"])
    lines = [f"{path}: training run, preset {run.preset or '-'}, in stage 1 (the autoencoder): step "
             f"{state['step']} of {run.autoencoder.steps}; the diffusion model has not started"]
    return lines + _latent_lines(run, {}, state.get("reconstruction"))


def source_summary(path: str | Path, data: ImageSet) -> str:
    """'nnU-Net folder, 12 cases, 658 slices' — the kind of a source and how much it holds, as the app titles it."""
    from engine.io.sources import source_for

    path = Path(path)
    return source_for(path).describe(path, data)


def _partner_line(path: Path) -> str | None:
    from engine.io import partners

    if not path.is_file():
        return None
    if partners.is_label_file(path):
        image = partners.image_for(path)
        return f"  label map of image {image}" if image is not None else None
    label = partners.label_for(path)
    return f"  label map: {label}" if label is not None else "  label map: none found"


def describe(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    if p.is_dir() and not checkpoints.is_checkpoint(p) and RunDir(p).latest() is None \
            and RunDir(p).autoencoder.latest() is not None:
        return "\n".join(_stage_1_run(p))
    if is_run_or_checkpoint(p):
        return "\n".join(_run_dir(p))
    from engine.io.sources import DicomFolder, MedSynthFile, NiftiFile, source_for
    from engine.io.sources.dicom_folder import holds_slices

    source = source_for(p)
    if isinstance(source, MedSynthFile):
        return "\n".join(_h5(p))
    # One DICOM series; a folder of series is read (or refused) as a set.
    if isinstance(source, DicomFolder) and holds_slices(p):
        import nibabel as nib

        from engine.io.dicom import read_dicom_series

        v = read_dicom_series(p)
        return (f"{p}: DICOM series ({v.modality}), volume {v.array.shape} voxels of "
                f"{tuple(round(s, 3) for s in v.spacing)} mm, orientation {''.join(nib.aff2axcodes(v.affine))}, "
                f"values {float(v.array.min()):.4g}..{float(v.array.max()):.4g} {v.units}")
    from engine.data.dataset import data_warnings, describe_mask_coding
    from engine.io.load import load_images

    s = load_images(p)
    lines = [f"{p}: {len(s)} image(s) of {s.size[0]}x{s.size[1]} px, {s.channels} channel(s), "
             f"values {float(s.images.min()):.4g}..{float(s.images.max()):.4g} (modality {s.modality})",
             f"  source: {source_summary(p, s)}"]
    if isinstance(source, NiftiFile) and (partner := _partner_line(p)):
        lines.append(partner)
    if s.masks is not None:
        lines.append(f"  {describe_mask_coding(s)}")
    if s.labels is not None:
        counts = np.bincount(s.labels)
        names = s.class_names or [str(i) for i in range(len(counts))]
        lines.append("  classes: " + ", ".join(f"{n} ({int(c)})" for n, c in zip(names, counts)))
    if s.spacing:
        lines.append(f"  spacing: {tuple(round(v, 4) for v in s.spacing)}")
    lines += [f"  warning: {text}" for text in data_warnings(s)]
    return "\n".join(lines)
