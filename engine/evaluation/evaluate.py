"""`medsynth evaluate`: every trust figure for a synthetic file, into its /metrics group and a report.

The job answers four questions — is it like my data, is it diverse, does it copy
patients, does it help a segmentation model — each with a real-vs-real reference
beside it where one exists, because a bare FID or correlation means little to a reader.

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

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from engine.config import RESOURCES, from_dict, path_sha256, public_path
from engine.data.dataset import ImageSet
from engine.data.prepare import resize
from engine.errors import InputError
from engine.evaluation.stages import Stage
from engine.io.load import load_images, volume_options
from engine.io.medsynth_h5 import (
    NN_CORR,
    NN_INDEX,
    Header,
    open_file,
    open_for_update,
    read_header,
    read_image_set,
    write_metrics,
)
from engine.jobs import Cancelled, Emit, Message, Progress, Requests
from engine.runtime.devices import pick_device

FID_DIMS = (64, 192, 768, 2048)
FID_BLOCKS = {64: "first max-pool", 192: "second max-pool", 768: "pre-aux (Mixed_6e)", 2048: "final average pool"}
BUNDLED_DEMO = RESOURCES / "demo"  # phantoms.h5 and the run/ of the demo model shipped with the app


@dataclass
class EvalSettings:
    fid_weights: str | None = None
    fid_dims: tuple[int, ...] = FID_DIMS
    # A TorchScript network of the user's (e.g. a 3D MedicalNet encoder) mapping images to feature
    # vectors: a Fréchet distance on features that suit volumes, which Inception's 2D ones do not.
    features_net: str | None = None
    max_samples: int = 1000  # per set, for the distribution distances; memorization uses every sample
    # None: the larger of 0.95 and the 99th percentile of held-out real cases' own nearest-training
    # correlations. Unrelated patients share anatomy, so a fixed 0.95 can flag honest samples; a
    # sample counts as a copy when it is closer to a training image than 99% of real newcomers are.
    nn_threshold: float | None = None
    utility: bool = True
    utility_steps: int = 300
    test_share: float = 0.2
    seed: int = 0
    device: str = "auto"
    report: bool = True
    skip: list[Stage | str] = field(default_factory=list)  # stages (or their names) to leave out


def scaled(s: ImageSet, size: tuple[int, ...], lo: float, hi: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Images in [0, 1] by the synthetic file's normalisation, at its size; masks resized by nearest."""
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


def _subset(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:k]) if n > k else np.arange(n)


def _read_synth(path: Path) -> tuple[ImageSet, Header, Any, float, float]:
    """The synthetic set, its header, its run config (or None) and its normalisation range."""
    synth = read_image_set(path)
    with open_file(path) as f:
        h = read_header(f)
    cfg = from_dict(h.config) if h.config else None
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


def load_real_like(path: str | Path, cfg: Any, spacing: tuple[float, ...] | None, split: str) -> ImageSet:
    """Real data read the way the run read it: volumes at the synthetic file's spacing."""
    opts = volume_options(cfg) if cfg is not None else None
    if opts is not None and spacing:
        opts.spacing = tuple(float(v) for v in spacing)
    return load_images(path, split=split, volumes=opts)


def load_training_like(synth_path: str | Path, train_data: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(synthetic images, training images), both at the file's size and in [0, 1]: what the
    memorization gate of an export compares."""
    synth, h, cfg, lo, hi = _read_synth(Path(synth_path))
    train = load_real_like(train_data, cfg, h.spacing, "train")
    return scaled(synth, synth.size, lo, hi)[0], scaled(train, synth.size, lo, hi)[0]


class EvaluateJob:
    def __init__(self, synth: str | Path, real: str | Path | None = None, train_data: str | Path | None = None,
                 settings: EvalSettings | None = None) -> None:
        self.synth_path = Path(synth)
        if not self.synth_path.exists():
            raise InputError(self.synth_path, "does not exist")
        self.real_path = Path(real) if real else None
        self.train_path = Path(train_data) if train_data else None
        self.settings = settings or EvalSettings()
        for given in (self.real_path, self.train_path, self.settings.features_net):
            if given and not Path(given).exists():
                raise InputError(given, "does not exist")
        self.figures: dict[str, float] = {}
        self.summary: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}  # arrays the report and /metrics need: features, neighbours
        self._requests = Requests()  # the run's, which the utility trainers poll too

    # ----------------------------------------------------------------------------- data
    def _sets(self, emit: Emit) -> dict[str, Any]:
        synth, h, cfg, lo, hi = _read_synth(self.synth_path)
        size = synth.size
        spacing = h.spacing
        train_path = self.train_path or default_training_data(self.synth_path, h)
        if train_path is None and self.real_path is None:
            raise InputError(self.synth_path, "records no training data that still exists; give held-out real "
                                              "data and/or the generator's training data")
        notes = []
        if train_path is not None and Path(train_path).resolve() == (BUNDLED_DEMO / "phantoms.h5").resolve():
            notes.append("training data: the bundled demo phantoms, which the demo model was trained on")
        train = load_real_like(train_path, cfg, spacing, "train") if train_path else None
        test = load_real_like(self.real_path, cfg, spacing, "test") if self.real_path else None
        if train is not None and test is not None and train_path.resolve() == self.real_path.resolve() \
                and train_path.suffix.lower() != ".npz":
            test = None  # the same cases twice: hold out a share instead
        sets: dict[str, Any] = {"lo": lo, "hi": hi, "size": size, "header": h}
        sets["synth"] = scaled(synth, size, lo, hi) + (synth.labels,)
        if train is None:
            train = test
            test = None
            notes.append("no training data given: memorization was measured against the held-out real data")
        if test is None:
            idx_train, idx_test = _split(len(train), self.settings.test_share, self.settings.seed)
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
                raise InputError(self.real_path or train_path, f"has {sets[name][0].shape[1]} channels; the "
                                                               f"synthetic samples have {sets['synth'][0].shape[1]}")
        sets["notes"] = notes
        # Written into the file and its report: data folders by name and hash unless the run recorded full paths.
        full = bool((h.config.get("data") or {}).get("record_full_path"))
        sets["sources"] = {"synth": public_path(self.synth_path, full),
                           "train": public_path(train_path, full) if train_path else None,
                           "test": public_path(self.real_path, full) if self.real_path and test is not None
                           else "held out"}
        emit(Message(f"evaluating {len(sets['synth'][0])} synthetic samples against {len(sets['train'][0])} "
                     f"training and {len(sets['test'][0])} held-out real samples"))
        return sets

    # ----------------------------------------------------------------------------- run
    def run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        # Before any work: minutes of computing must never end in a file or folder that refuses the results.
        out = open_for_update(self.synth_path)
        try:
            if self.settings.report and Stage.REPORT not in self.settings.skip:
                from engine.evaluation.figures import report_path

                _check_writable_folder(report_path(self.synth_path).parent)
            return self._run(out, emit, requests)
        finally:
            out.close()

    def _run(self, out: h5py.File, emit: Emit, requests: Requests) -> dict[str, Any]:
        st = self.settings
        device = pick_device(st.device)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        stages = [s for s in Stage if s not in st.skip]
        sets: dict[str, Any] = {}
        was_cancelled = False
        self._requests = requests
        steps = self._steps()
        try:
            for i, stage in enumerate(stages):
                emit(Progress("evaluate", i, len(stages), {"stage": stage}))
                requests.check()
                if stage is Stage.REPORT:
                    continue  # written after the stages, so that a stopped evaluation has one too
                t = time.perf_counter()
                steps[stage](sets, device, emit, requests.check)
                timings[stage.value] = round(time.perf_counter() - t, 2)
            emit(Progress("evaluate", len(stages), len(stages), {"stage": None}))  # None: all done
        except Cancelled:
            was_cancelled = True  # what was measured so far is written below
        self.summary["timings_s"] = timings
        self.summary["settings"] = asdict(st) | {"device": device}
        self.summary["complete"] = not was_cancelled
        report_path = None
        if sets:
            self._write_metrics(out)
            if st.report and Stage.REPORT in stages:
                from engine.evaluation.figures import build_report

                report_path = build_report(self.synth_path, self.figures, self.summary, sets, self.extras)
        result = {"file": str(self.synth_path), "figures": dict(self.figures), "report": str(report_path)
                  if report_path else None, "seconds": time.perf_counter() - t0, "complete": not was_cancelled,
                  "summary": _plain(self.summary), **self._pictures(sets)}
        if was_cancelled:
            raise Cancelled("evaluation stopped", result)
        return result

    def _set(self, key: str, value: float | None) -> None:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.figures[key] = float(value)

    # ----------------------------------------------------------------------------- stages
    def _steps(self) -> dict[Stage, Any]:
        """Each stage's work but the report's: (sets, device, emit, check), where check raises Cancelled."""
        return {Stage.LOAD: self._load, Stage.FID: self._fid, Stage.FEATURES: self._features,
                Stage.RADIOMICS: self._radiomics, Stage.DIVERSITY: self._diversity,
                Stage.MEMORIZATION: self._memorization, Stage.LABELS: self._labels, Stage.UTILITY: self._utility}

    def _load(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        sets.update(self._sets(emit))
        self.summary["notes"] = sets["notes"]
        self.summary["sources"] = sets["sources"]

    def _fid(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics import inception
        from engine.evaluation.metrics.frechet import frechet_from_features, kid

        st = self.settings
        path = inception.find_weights(st.fid_weights)
        if path is None:
            self.summary["fid"] = {"available": False, "note": (
                "FID and KID not computed: the FID Inception weights (pt_inception-2015-12-05-6726825d.pth) "
                "were not found. Put the file in the torch hub cache (" +
                str(Path(torch.hub.get_dir()) / "checkpoints") +
                "), give its path as the FID weights file, or set MEDSYNTH_FID_WEIGHTS; they are never "
                "downloaded.")}
            emit(Message(self.summary["fid"]["note"]))
            return
        net = inception.load_fid_inception(path).to(device)
        sha = inception.weights_sha256(path)
        feats = {}
        for name in ("synth", "test", "train"):
            images = sets[name][0]
            images = images[_subset(len(images), st.max_samples, st.seed)]
            if images.ndim == 5:
                images = inception.volume_slices(images)
            feats[name] = inception.inception_features(images, tuple(st.fid_dims), net, device=device)
            check()
        out: dict[str, Any] = {"available": True, "weights": str(path), "sha256": sha, "values": {}}
        for dim in st.fid_dims:
            fid = frechet_from_features(feats["synth"][dim], feats["test"][dim])
            ref = frechet_from_features(feats["train"][dim], feats["test"][dim])
            self._set(f"fid_{dim}", fid)
            self._set(f"fid_{dim}_real_vs_real", ref)
            out["values"][str(dim)] = {"fid": fid, "real_vs_real": ref, "block": FID_BLOCKS.get(dim, str(dim))}
        top = max(st.fid_dims)
        k_mean, k_std = kid(feats["synth"][top], feats["test"][top], subsets=50,
                            subset_size=min(1000, len(feats["synth"][top]), len(feats["test"][top])))
        self._set(f"kid_{top}", k_mean)
        self._set(f"kid_{top}_std", k_std)
        out["kid"] = {"dim": top, "mean": k_mean, "std": k_std}
        self.extras["fid_features"] = feats
        self.summary["fid"] = out

    def _features(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics.frechet import frechet_from_features
        from engine.training.checkpoints import sha256

        st = self.settings
        if not st.features_net:
            return
        path = Path(st.features_net)
        net = load_feature_net(path, device)
        feats = {}
        for name in ("synth", "test", "train"):
            images = sets[name][0][_subset(len(sets[name][0]), st.max_samples, st.seed)]
            parts = []
            with torch.no_grad():
                for i in range(0, len(images), 8):
                    chunk = images[i:i + 8]
                    # Exported programs may be specialised away from batch 1: pad the last batch.
                    padded = np.concatenate([chunk] + [chunk[-1:]] * (8 - len(chunk)))
                    out = net(torch.from_numpy(np.ascontiguousarray(padded)).to(device))
                    parts.append(out.float().flatten(1).cpu().numpy()[:len(chunk)])
            feats[name] = np.concatenate(parts).astype(np.float64)
            check()
        value = frechet_from_features(feats["synth"], feats["test"])
        ref = frechet_from_features(feats["train"], feats["test"])
        self._set("fd_net", value)
        self._set("fd_net_real_vs_real", ref)
        self.summary["features_net"] = {"path": str(path), "sha256": sha256(path), "dim": int(feats["synth"].shape[1]),
                                        "value": value, "real_vs_real": ref}

    def _radiomics(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics.diversity import mmd_from_features
        from engine.evaluation.metrics.radiomics import feature_names, frd_from_features, radiomic_features, standardise

        st = self.settings
        feats = {}
        for n in ("synth", "test", "train"):
            feats[n] = radiomic_features(sets[n][0][_subset(len(sets[n][0]), st.max_samples, st.seed)])
            check()
        value = frd_from_features(feats["test"], feats["synth"])
        ref = frd_from_features(feats["test"], feats["train"])
        self._set("frd", value)
        self._set("frd_real_vs_real", ref)
        check()
        self._set("mmd", mmd_from_features(feats["test"], feats["synth"], st.max_samples, seed=st.seed))
        self._set("mmd_real_vs_real", mmd_from_features(feats["test"], feats["train"], st.max_samples, seed=st.seed))
        # Which features make the distance: the synthetic mean in real standard deviations, so a
        # user learns *what* differs (texture, noise, brightness), not only how much.
        zr, zs = standardise(feats["test"], feats["synth"])
        shift = zs.mean(axis=0) - zr.mean(axis=0)
        order = np.argsort(-np.abs(shift))[:5]
        names = feature_names()
        self.summary["frd"] = {"value": value, "real_vs_real": ref,
                               "largest_shifts_sd": [[names[i], float(shift[i])] for i in order]}

    def _diversity(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics.diversity import ms_ssim_diversity

        synth = ms_ssim_diversity(sets["synth"][0], seed=self.settings.seed)
        check()
        real = ms_ssim_diversity(sets["train"][0], seed=self.settings.seed)
        self._set("ms_ssim_synth", synth)
        self._set("ms_ssim_real", real)
        self.summary["diversity"] = {"ms_ssim_synth": synth, "ms_ssim_real": real}

    def _memorization(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics.memorization import memorization_summary, nearest_training

        st = self.settings
        idx, corr = nearest_training(sets["synth"][0], sets["train"][0])
        check()
        _, ref_corr = nearest_training(sets["test"][0], sets["train"][0])
        threshold, rule = st.nn_threshold, "given"
        if threshold is None:
            threshold = max(0.95, float(np.percentile(ref_corr, 99)))
            rule = "auto: max(0.95, 99th percentile of held-out real cases)"
        summary = memorization_summary(corr, threshold)
        ref = memorization_summary(ref_corr, threshold)
        summary["threshold_rule"] = rule
        self.extras["nn"] = (idx, corr)
        order = np.argsort(-corr)[:8]
        summary["closest"] = [[int(i), int(idx[i]), float(corr[i])] for i in order]
        summary["real_vs_train"] = ref
        self.summary["memorization"] = summary
        self._set("nn_corr_max", float(corr.max()))
        self._set("nn_corr_median", float(np.median(corr)))
        self._set("nn_share_above", summary["share_above"])
        self._set("nn_corr_max_real_vs_train", float(ref_corr.max()))
        fid = self.extras.get("fid_features")
        if fid is not None:
            from engine.evaluation.metrics.memorization import mifid

            top = max(st.fid_dims)
            self._set(f"mifid_{top}", mifid(self.figures[f"fid_{top}"], fid["synth"][top], fid["train"][top]))

    def _labels(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics import utility

        st = self.settings
        out: dict[str, Any] = {}
        s_img, s_mask, s_lab = sets["synth"]
        r_img, r_mask, r_lab = sets["train"]

        def progress(done: int, total: int) -> None:
            emit(Progress(Stage.LABELS, done, total))

        if s_mask is not None and r_mask is not None:
            k = int(max(s_mask.max(), r_mask.max())) + 1
            model = utility.train_segmenter(r_img, r_mask, max(k, 2), steps=st.utility_steps, seed=st.seed,
                                            device=device, progress=progress, requests=self._requests)
            agree = utility.dice_iou(utility.segment(model, s_img), s_mask, max(k, 2))
            ref = utility.dice_iou(utility.segment(model, sets["test"][0]), sets["test"][1], max(k, 2)) \
                if sets["test"][1] is not None else None
            out["image_mask"] = {"synth": agree, "real_held_out": ref}
            self._set("mask_dice", agree["dice"])
            if ref is not None:
                self._set("mask_dice_real", ref["dice"])
        if s_lab is not None and r_lab is not None:
            fid = utility.class_fidelity(r_img, r_lab, s_img, s_lab, steps=st.utility_steps, seed=st.seed,
                                         device=device, progress=progress, requests=self._requests)
            out["class_fidelity"] = fid
            self._set("class_fidelity", fid["accuracy"])
            self._set("class_fidelity_real", fid["real_accuracy"])
        self.summary["labels"] = out

    def _utility(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics import utility

        st = self.settings
        if not st.utility:
            self.summary["utility"] = {"not_measured": "switched off"}
            return
        out: dict[str, Any] = {}

        def progress(done: int, total: int) -> None:
            emit(Progress(Stage.UTILITY, done, total))

        (s_img, s_mask, s_lab), (r_img, r_mask, r_lab), (t_img, t_mask, t_lab) = \
            sets["synth"], sets["train"], sets["test"]
        if s_mask is not None and r_mask is not None and t_mask is not None:
            seg = utility.segmentation_utility((r_img, r_mask), (t_img, t_mask), (s_img, s_mask),
                                               steps=st.utility_steps, seed=st.seed, device=device,
                                               progress=progress, requests=self._requests)
            out["segmentation"] = seg
            for arm in ("real", "synth", "both"):
                self._set(f"dice_{arm}", seg[arm]["dice"])
                self._set(f"iou_{arm}", seg[arm]["iou"])
            self._set("dice_ratio_synth_real", seg["ratio_synth_real"])
            self._set("dice_ratio_both_real", seg["ratio_both_real"])
        if s_lab is not None and r_lab is not None and t_lab is not None:
            cls = utility.classification_utility((r_img, r_lab), (t_img, t_lab), (s_img, s_lab),
                                                 steps=st.utility_steps, seed=st.seed, device=device,
                                                 progress=progress, requests=self._requests)
            out["classification"] = cls
            for arm in ("real", "synth", "both"):
                self._set(f"accuracy_{arm}", cls[arm]["accuracy"])
            self._set("accuracy_ratio_synth_real", cls["ratio_synth_real"])
            self._set("accuracy_ratio_both_real", cls["ratio_both_real"])
        if not out:
            missing = [name for name, m in (("synthetic", s_mask), ("training", r_mask), ("held-out real", t_mask))
                       if m is None]
            out["not_measured"] = f"needs masks in every set; the {', '.join(missing)} data have none"
        self.summary["utility"] = out

    # ----------------------------------------------------------------------------- output
    def _pictures(self, sets: dict) -> dict[str, Any]:
        """What the app plots: every sample's nearest correlation and the closest pairs as pictures."""
        from engine.evaluation.figures import picture

        nn = self.extras.get("nn")
        mem = self.summary.get("memorization") or {}
        if nn is None or not sets:
            return {"nn_corr": None, "pairs": []}
        pairs = [(picture(sets["synth"][0][i]), picture(sets["train"][0][j]), f"#{i} vs train #{j}: {c:.3f}")
                 for i, j, c in mem.get("closest", [])[:6]]
        return {"nn_corr": np.asarray(nn[1]), "pairs": pairs}

    def _write_metrics(self, f: h5py.File) -> None:
        nn = self.extras.get("nn")
        arrays = {} if nn is None else {NN_INDEX: nn[0].astype(np.int64), NN_CORR: nn[1].astype(np.float32)}
        # replace: a new evaluation's figures never mix with an older one's.
        write_metrics(f, self.figures, _plain(self.summary), arrays=arrays, replace=True,
                      array_attrs={"train_data": str(self.summary.get("sources", {}).get("train"))})


def _check_writable_folder(folder: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        raise InputError(folder, "is a read-only folder, so the evaluation report cannot be written there") from None


def load_feature_net(path: Path, device: str) -> Any:
    """A user's feature network: a torch.export program (.pt2) or a TorchScript file. Both load
    without running pickled code, unlike a plain torch.save of a module."""
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module().to(device)
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # both loaders raise RuntimeError, ValueError, OSError... for a bad file
        raise InputError(path, f"is not an exported (.pt2) or TorchScript feature network ({type(exc).__name__})") \
            from None


def _split(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n < 2:
        raise InputError(None, "evaluation needs at least 2 real samples")
    order = np.random.default_rng([seed, 99]).permutation(n)
    k = min(max(int(round(n * share)), 1), n - 1)
    return np.sort(order[k:]), np.sort(order[:k])


def _take(item: tuple, idx: np.ndarray) -> tuple:
    return tuple(None if a is None else a[idx] for a in item)


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(value, np.integer):
        return int(value)
    return value
