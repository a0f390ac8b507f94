"""`medsynth evaluate`: every trust figure for a synthetic file, into its /metrics group and a report.

The job answers four questions — is it like my data, is it diverse, does it copy
patients, does it help a segmentation model — each with a real-vs-real reference
beside it where one exists, because a bare FID or correlation means little to a reader.
The sets it compares are read by `engine.evaluation.inputs`; what it leaves is written by
`engine.evaluation.results`. Messages here reach both the CLI and the app, so they name the
data, never a command-line flag or a widget.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from engine.errors import InputError
from engine.evaluation.feature_net import check_feature_net, load_feature_net
from engine.evaluation.figures import NOT_MEASURED
from engine.evaluation.inputs import read_sets, subset
from engine.evaluation.results import check_writable_folder, pictures, plain, write_results
from engine.evaluation.sharding import TOGETHER, Shards
from engine.evaluation.stages import Stage
from engine.io import destination
from engine.io.medsynth_h5 import IMAGES, open_for_update
from engine.jobs import Cancelled, Emit, Message, Progress, Requests
from engine.runtime.devices import pick_device

FID_DIMS = (64, 192, 768, 2048)
# Room the results need, roughly: /metrics' per-sample arrays (with HDF5's overhead), and the report's page.
METRICS_BYTES_PER_SAMPLE = 64
REPORT_BYTES = 8 << 20
FID_BLOCKS = {64: "first max-pool", 192: "second max-pool", 768: "pre-aux (Mixed_6e)", 2048: "final average pool"}
# The fewest cases a set may have for a figure that compares or scores sets: below it a distance, a
# diversity or a held-out score says more about which few cases were drawn than about the data, and the
# figure is recorded as not measured, with why, instead of as a number. A floor, not a sufficient size.
MIN_CASES = 5
SET_NAMES = {"synth": "synthetic", "train": "training", "test": "held-out real"}
# Images per forward pass of a user's feature network; the processes of a launch run the very batches one
# process runs (engine.evaluation.sharding).
NET_BATCH = 8


@dataclass
class EvalSettings:
    fid_weights: str | None = None
    fid_dims: tuple[int, ...] = FID_DIMS
    # A network of the user's (e.g. a 3D MedicalNet encoder; torch.export .pt2, or TorchScript when trusted)
    # mapping images to feature vectors: a Fréchet distance on features that suit volumes, which Inception's
    # 2D ones do not.
    features_net: str | None = None
    # The user has said the feature network's file is theirs: loaded as torch loads it, code and all
    # (engine.evaluation.feature_net). Otherwise only a .pt2 proven to run no code of its own.
    trust_code: bool = False
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


def too_few(counts: dict[str, int]) -> str | None:
    """Why sets of these sizes (by name in words) measure nothing, or None when each has MIN_CASES."""
    short = [f"{n} {name} case{'' if n == 1 else 's'}" for name, n in counts.items() if n < MIN_CASES]
    if not short:
        return None
    return f"only {' and '.join(short)}; at least {MIN_CASES} cases in each set are needed"


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
        if self.settings.features_net:
            # Before any work: a network that could run code is refused (unless trusted) in a moment, not minutes.
            check_feature_net(Path(self.settings.features_net), self.settings.trust_code)
        self.figures: dict[str, float] = {}
        self.not_measured: dict[str, str] = {}  # figure key -> why it has no number (figures.NOT_MEASURED)
        self.summary: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}  # arrays the report and /metrics need: features, neighbours
        self._requests = Requests()  # the run's, which the utility trainers poll too
        self._shards = Shards()  # this process's share of the per-image work: all of it outside a launcher

    # ----------------------------------------------------------------------------- run
    def run(self, emit: Emit, requests: Requests) -> dict[str, Any]:
        # Under a launcher each process measures its share of the images (engine.evaluation.sharding); only the
        # main one reports, writes and opens the file for writing.
        shards = Shards.of_launch(pick_device(self.settings.device))
        if not shards.main:
            if shards.any(False):  # the main process refused the file or folder for the results, and says why
                raise InputError(self.synth_path, "cannot take the results")
            return self._run(None, _silent, requests, shards)
        try:
            out = self._open_for_results()
        except InputError:
            shards.any(True)
            raise
        shards.any(False)
        try:
            return self._run(out, emit, requests, shards)
        finally:
            out.close()

    def _open_for_results(self) -> h5py.File:
        # Before any work: minutes of computing must never end in a file or folder that refuses the results.
        out = open_for_update(self.synth_path)
        try:
            # A full disk found at the end would leave the file's /metrics half-written; refused now instead.
            destination.check_room(self.synth_path, METRICS_BYTES_PER_SAMPLE * len(out[IMAGES]))
            if self.settings.report and Stage.REPORT not in self.settings.skip:
                from engine.evaluation.figures import report_path

                check_writable_folder(report_path(self.synth_path).parent)
                destination.check_room(report_path(self.synth_path), REPORT_BYTES)
        except BaseException:
            out.close()
            raise
        return out

    def _run(self, out: h5py.File | None, emit: Emit, requests: Requests, shards: Shards) -> dict[str, Any]:
        st = self.settings
        device = shards.device
        self._shards = shards
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        stages = [s for s in Stage if s not in st.skip and shards.takes_part(s)]
        sets: dict[str, Any] = {}
        was_cancelled = False
        self._requests = requests
        steps = self._steps()
        try:
            for i, stage in enumerate(stages):
                emit(Progress("evaluate", i, len(stages), {"stage": stage}))
                check = shards.checker(requests, stage)
                check()
                if stage is Stage.REPORT:
                    continue  # written after the stages, so that a stopped evaluation has one too
                t = time.perf_counter()
                steps[stage](sets, device, emit, check)
                timings[stage.value] = round(time.perf_counter() - t, 2)
                if not set(stages[i + 1:]) & set(TOGETHER):
                    shards.leave()  # the other processes are done: the main one runs on alone
            emit(Progress("evaluate", len(stages), len(stages), {"stage": None}))  # None: all done
        except Cancelled:
            was_cancelled = True  # what was measured so far is written below
        finally:
            shards.leave()
        self.summary["timings_s"] = timings
        self.summary["settings"] = asdict(st) | {"device": device}
        self.summary["processes"] = shards.world
        self.summary["complete"] = not was_cancelled
        self.summary[NOT_MEASURED] = dict(self.not_measured)
        if not shards.main:
            # Its share is in the main process's figures; what it measured alone is the same and not written.
            result = {"file": str(self.synth_path), "main_process": False, "complete": not was_cancelled}
            if was_cancelled:
                raise Cancelled("evaluation stopped", result)
            return result
        report_path = None
        if sets:
            write_results(out, self.figures, self.summary, self.extras)
            if st.report and Stage.REPORT in stages:
                from engine.evaluation.figures import build_report

                with destination.translating(self.synth_path.parent):
                    report_path = build_report(self.synth_path, self.figures, self.summary, sets, self.extras)
        result = {"file": str(self.synth_path), "figures": dict(self.figures), "report": str(report_path)
                  if report_path else None, "seconds": time.perf_counter() - t0, "complete": not was_cancelled,
                  "summary": plain(self.summary), **pictures(sets, self.summary, self.extras)}
        if was_cancelled:
            raise Cancelled("evaluation stopped", result)
        return result

    def _set(self, key: str, value: float | None, why: str = "the computation gave no finite number") -> None:
        """A figure, or when it is not a finite number, the reason it has none."""
        if value is not None and math.isfinite(float(value)):
            self.figures[key] = float(value)
        else:
            self._unmeasured([key], why)

    def _unmeasured(self, keys: list[str], why: str) -> None:
        for key in keys:
            self.figures.pop(key, None)
            self.not_measured.setdefault(key, why)

    def _too_few(self, sets: dict, *names: str, cap: int | None = None) -> str | None:
        """Why these sets are too small to measure anything, or None. `cap`: the samples a set is cut to."""
        counts = {SET_NAMES[n]: len(sets[n][0]) if cap is None else min(len(sets[n][0]), cap) for n in names}
        why = too_few(counts)
        return why + " (the samples-per-set setting cuts them)" if why and cap is not None and cap < MIN_CASES \
            else why

    # ----------------------------------------------------------------------------- stages
    def _steps(self) -> dict[Stage, Any]:
        """Each stage's work but the report's: (sets, device, emit, check), where check raises Cancelled."""
        return {Stage.LOAD: self._load, Stage.FID: self._fid, Stage.FEATURES: self._features,
                Stage.RADIOMICS: self._radiomics, Stage.DIVERSITY: self._diversity,
                Stage.MEMORIZATION: self._memorization, Stage.LABELS: self._labels, Stage.UTILITY: self._utility}

    def _load(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        st = self.settings
        sets.update(read_sets(self.synth_path, self.real_path, self.train_path, st.test_share, st.seed, emit))
        self.summary["notes"] = sets["notes"]
        self.summary["sources"] = sets["sources"]

    def _fid(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics import inception
        from engine.evaluation.metrics.frechet import frechet_from_features, kid

        st = self.settings
        top = max(st.fid_dims)
        keys = [f"fid_{dim}" for dim in st.fid_dims] + [f"kid_{top}", f"kid_{top}_std", f"mifid_{top}"]
        refs = [f"fid_{dim}_real_vs_real" for dim in st.fid_dims]
        path = inception.find_weights(st.fid_weights)
        if path is None:
            self.summary["fid"] = {"available": False, "note": (
                "FID and KID not computed: the FID Inception weights (pt_inception-2015-12-05-6726825d.pth) "
                "were not found. Put the file in the torch hub cache (" +
                str(Path(torch.hub.get_dir()) / "checkpoints") +
                "), give its path as the FID weights file, or set MEDSYNTH_FID_WEIGHTS; they are never "
                "downloaded.")}
            emit(Message(self.summary["fid"]["note"]))
            self._unmeasured(keys + refs, "the FID Inception weights file was not found")
            return
        too_few = self._too_few(sets, "synth", "test", cap=st.max_samples)
        if too_few:
            self.summary["fid"] = {"available": False, "not_measured": too_few,
                                   "note": f"FID and KID not measured: {too_few}."}
            self._unmeasured(keys + refs, too_few)
            return
        net = inception.load_fid_inception(path).to(device)
        sha = inception.weights_sha256(path)
        ref_too_few = self._too_few(sets, "train", "test", cap=st.max_samples)
        feats = {}

        def features(images: np.ndarray) -> dict[int, np.ndarray]:
            if images.ndim == 5:
                images = inception.volume_slices(images)
            return inception.inception_features(images, tuple(st.fid_dims), net, device=device)

        for name in ("synth", "test", "train"):
            images = sets[name][0]
            images = images[subset(len(images), st.max_samples, st.seed)]
            per_image = len(inception.volume_slices(images[:1])) if images.ndim == 5 else 1
            feats[name] = self._shards.image_rows(features, images, inception.BATCH, per_image)
            check()
        out: dict[str, Any] = {"available": True, "weights": str(path), "sha256": sha, "values": {}}
        for dim in st.fid_dims:
            fid = frechet_from_features(feats["synth"][dim], feats["test"][dim])
            self._set(f"fid_{dim}", fid)
            ref = None
            if ref_too_few:
                self._unmeasured([f"fid_{dim}_real_vs_real"], ref_too_few)
            else:
                ref = frechet_from_features(feats["train"][dim], feats["test"][dim])
                self._set(f"fid_{dim}_real_vs_real", ref)
            out["values"][str(dim)] = {"fid": fid, "real_vs_real": ref, "block": FID_BLOCKS.get(dim, str(dim))}
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
        if too_few := self._too_few(sets, "synth", "test", cap=st.max_samples):
            self._unmeasured(["fd_net", "fd_net_real_vs_real"], too_few)
            return
        path = Path(st.features_net)
        net = load_feature_net(path, device, trusted=st.trust_code)

        def features(images: np.ndarray) -> np.ndarray:
            parts = []
            with torch.no_grad():
                for i in range(0, len(images), NET_BATCH):
                    chunk = images[i:i + NET_BATCH]
                    # Exported programs may be specialised away from batch 1: pad the last batch.
                    padded = np.concatenate([chunk] + [chunk[-1:]] * (NET_BATCH - len(chunk)))
                    out = net(torch.from_numpy(np.ascontiguousarray(padded)).to(device))
                    parts.append(out.float().flatten(1).cpu().numpy()[:len(chunk)])
            return np.concatenate(parts).astype(np.float64)

        feats = {}
        for name in ("synth", "test", "train"):
            images = sets[name][0][subset(len(sets[name][0]), st.max_samples, st.seed)]
            feats[name] = self._shards.image_rows(features, images, NET_BATCH)
            check()
        value = frechet_from_features(feats["synth"], feats["test"])
        self._set("fd_net", value)
        ref = None
        if ref_too_few := self._too_few(sets, "train", "test", cap=st.max_samples):
            self._unmeasured(["fd_net_real_vs_real"], ref_too_few)
        else:
            ref = frechet_from_features(feats["train"], feats["test"])
            self._set("fd_net_real_vs_real", ref)
        self.summary["features_net"] = {"path": str(path), "sha256": sha256(path), "dim": int(feats["synth"].shape[1]),
                                        "value": value, "real_vs_real": ref}

    def _radiomics(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics.diversity import mmd_from_features
        from engine.evaluation.metrics.radiomics import feature_names, frd_from_features, radiomic_features, standardise

        st = self.settings
        if too_few := self._too_few(sets, "synth", "test", cap=st.max_samples):
            self._unmeasured(["frd", "mmd", "frd_real_vs_real", "mmd_real_vs_real"], too_few)
            return
        ref_too_few = self._too_few(sets, "train", "test", cap=st.max_samples)
        feats = {}
        for n in ("synth", "test") if ref_too_few else ("synth", "test", "train"):
            feats[n] = self._shards.rows(radiomic_features, sets[n][0][subset(len(sets[n][0]), st.max_samples,
                                                                              st.seed)])
            check()
        value = frd_from_features(feats["test"], feats["synth"])
        self._set("frd", value)
        ref = None
        if ref_too_few:
            self._unmeasured(["frd_real_vs_real", "mmd_real_vs_real"], ref_too_few)
        else:
            ref = frd_from_features(feats["test"], feats["train"])
            self._set("frd_real_vs_real", ref)
        check()
        self._set("mmd", mmd_from_features(feats["test"], feats["synth"], st.max_samples, seed=st.seed))
        if not ref_too_few:
            self._set("mmd_real_vs_real", mmd_from_features(feats["test"], feats["train"], st.max_samples,
                                                            seed=st.seed))
        # Which features make the distance: the synthetic mean in real standard deviations, so a
        # user learns *what* differs (texture, noise, brightness), not only how much.
        zr, zs = standardise(feats["test"], feats["synth"])
        shift = zs.mean(axis=0) - zr.mean(axis=0)
        order = np.argsort(-np.abs(shift))[:5]
        names = feature_names()
        self.summary["frd"] = {"value": value, "real_vs_real": ref,
                               "largest_shifts_sd": [[names[i], float(shift[i])] for i in order]}

    def _diversity(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics.diversity import ms_ssim_diversity, ms_ssim_settings

        try:
            ms_ssim_settings(sets["synth"][0].shape[2:])
        except ValueError as exc:
            self._unmeasured(["ms_ssim_synth", "ms_ssim_real"], str(exc))
            return
        values: dict[str, float | None] = {}
        for key, name in (("ms_ssim_synth", "synth"), ("ms_ssim_real", "train")):
            if name == "train":
                check()  # between the halves, as a stop is polled in every stage
            values[key] = None
            if too_few := self._too_few(sets, name):
                self._unmeasured([key], too_few)
            else:
                values[key] = ms_ssim_diversity(sets[name][0], seed=self.settings.seed)
                self._set(key, values[key])
        self.summary["diversity"] = values

    def _memorization(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics.memorization import memorization_summary, nearest_training

        st = self.settings

        def nearest(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return nearest_training(queries, sets["train"][0])

        idx, corr = self._shards.rows(nearest, sets["synth"][0])
        check()
        # Every sample's nearest training image is a fact however few there are; what "close" means for new
        # real cases (the reference and the automatic threshold) needs enough of them.
        too_few = self._too_few(sets, "test")
        ref_corr = None if too_few else self._shards.rows(nearest, sets["test"][0])[1]
        threshold, rule = st.nn_threshold, "given"
        if threshold is None and ref_corr is None:
            threshold, rule = 0.95, f"0.95, not the held-out real cases' 99th percentile: {too_few}"
        elif threshold is None:
            threshold = max(0.95, float(np.percentile(ref_corr, 99)))
            rule = "auto: max(0.95, 99th percentile of held-out real cases)"
        summary = memorization_summary(corr, threshold)
        summary["threshold_rule"] = rule
        self.extras["nn"] = (idx, corr)
        order = np.argsort(-corr)[:8]
        summary["closest"] = [[int(i), int(idx[i]), float(corr[i])] for i in order]
        if ref_corr is not None:
            summary["real_vs_train"] = memorization_summary(ref_corr, threshold)
            self._set("nn_corr_max_real_vs_train", float(ref_corr.max()))
        else:
            self._unmeasured(["nn_corr_max_real_vs_train"], too_few)
        self.summary["memorization"] = summary
        self._set("nn_corr_max", float(corr.max()))
        self._set("nn_corr_median", float(np.median(corr)))
        self._set("nn_share_above", summary["share_above"])
        fid = self.extras.get("fid_features")
        if fid is not None and f"fid_{max(st.fid_dims)}" in self.figures:
            from engine.evaluation.metrics.memorization import mifid

            top = max(st.fid_dims)
            self._set(f"mifid_{top}", mifid(self.figures[f"fid_{top}"], fid["synth"][top], fid["train"][top]))

    def _labels(self, sets: dict, device: str, emit: Emit, check: Any) -> None:
        from engine.evaluation.metrics.dice import dice_iou
        from engine.evaluation.metrics.segmenter import segment, train_segmenter
        from engine.evaluation.metrics.utility import SEGMENTER_FLOOR, class_fidelity, segmenter_floor, unlearned

        st = self.settings
        out: dict[str, Any] = {}
        s_img, s_mask, s_lab = sets["synth"]
        r_img, r_mask, r_lab = sets["train"]
        t_img, t_mask, _ = sets["test"]

        def progress(done: int, total: int) -> None:
            emit(Progress(Stage.LABELS, done, total))

        if s_mask is not None and r_mask is not None:
            keys = ["mask_dice", "mask_dice_real"]
            if why := self._segmentation_unfit(sets):
                self._unmeasured(keys, why)
                out["image_mask"] = {NOT_MEASURED: why}
            else:
                k = max(int(max(s_mask.max(), r_mask.max(), t_mask.max())) + 1, 2)
                model = train_segmenter(r_img, r_mask, k, steps=st.utility_steps, seed=st.seed,
                                        device=device, progress=progress, requests=self._requests)
                ref = dice_iou(segment(model, t_img), t_mask, k)
                # Scored against what a segmenter that learned nothing scores on the same held-out masks.
                floor = segmenter_floor(t_img, t_mask, k, seed=st.seed, device=device)
                if why := unlearned(ref["dice"], floor, "the segmenter trained on real data", SEGMENTER_FLOOR,
                                    st.utility_steps):
                    self._unmeasured(keys, why)
                    out["image_mask"] = {NOT_MEASURED: why}
                else:
                    agree = dice_iou(segment(model, s_img), s_mask, k)
                    out["image_mask"] = {"synth": agree, "real_held_out": ref}
                    self._set("mask_dice", agree["dice"], "the synthetic masks are all background: there is no "
                                                          "structure for the images to agree with")
                    self._set("mask_dice_real", ref["dice"])
        if s_lab is not None and r_lab is not None:
            keys = ["class_fidelity", "class_fidelity_real"]
            if why := self._classification_unfit(sets, held_out=False):
                self._unmeasured(keys, why)
                out["class_fidelity"] = {NOT_MEASURED: why}
            else:
                fid = class_fidelity(r_img, r_lab, s_img, s_lab, steps=st.utility_steps, seed=st.seed,
                                     device=device, progress=progress, requests=self._requests)
                # The held-out share of the training data it is judged on is a set too.
                why = fid[NOT_MEASURED] or too_few({"held-out real": fid["n_real_test"]})
                if why:
                    self._unmeasured(keys, why)
                    out["class_fidelity"] = {NOT_MEASURED: why}
                else:
                    out["class_fidelity"] = fid
                    self._set("class_fidelity", fid["accuracy"])
                    self._set("class_fidelity_real", fid["real_accuracy"])
        self.summary["labels"] = out

    def _segmentation_unfit(self, sets: dict) -> str | None:
        """Why a segmenter trained on the training masks and judged on the held-out ones would measure nothing."""
        from engine.evaluation.metrics.utility import untrained

        r_mask, t_mask = sets["train"][1], sets["test"][1]
        if why := untrained(self.settings.utility_steps) or self._too_few(sets, "train", "test"):
            return why
        if t_mask is None:
            return "the held-out real data have no masks to tell whether the segmenter learned anything"
        if not r_mask.any():
            return "the training masks are all background: there is nothing to learn to segment"
        if not t_mask.any():
            return "the held-out real masks are all background: there is nothing to score a segmenter on"
        return None

    def _classification_unfit(self, sets: dict, held_out: bool) -> str | None:
        """Why a classifier trained on the training labels (and judged on the held-out ones) would measure
        nothing. Without `held_out` it is judged on a share of the training data."""
        from engine.evaluation.metrics.utility import untrained

        names = ("train", "test") if held_out else ("train",)
        if why := untrained(self.settings.utility_steps) or self._too_few(sets, *names):
            return why
        if len(np.unique(sets["train"][2])) < 2:
            return "the training data hold one class only: a classifier learns nothing from them"
        if held_out and len(np.unique(sets["test"][2])) < 2:
            return "the held-out real data hold one class only: always answering it would score 100%"
        return None

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
        budget = {"steps": st.utility_steps, "seed": st.seed, "device": device, "progress": progress,
                  "requests": self._requests}
        if s_mask is not None and r_mask is not None and t_mask is not None:
            out["segmentation"] = self._arms(
                ("dice", "iou"), self._segmentation_unfit(sets),
                lambda: utility.segmentation_utility((r_img, r_mask), (t_img, t_mask), (s_img, s_mask), **budget))
        if s_lab is not None and r_lab is not None and t_lab is not None:
            out["classification"] = self._arms(
                ("accuracy",), self._classification_unfit(sets, held_out=True),
                lambda: utility.classification_utility((r_img, r_lab), (t_img, t_lab), (s_img, s_lab), **budget))
        if not out:
            missing = [name for name, m in (("synthetic", s_mask), ("training", r_mask), ("held-out real", t_mask))
                       if m is None]
            out["not_measured"] = f"needs masks in every set; the {', '.join(missing)} data have none"
        self.summary["utility"] = out

    def _arms(self, measures: tuple[str, ...], unfit: str | None, measure: Any) -> dict[str, Any]:
        """A three-arm utility result (`measure()`, unless the data are `unfit` for it), its figures set;
        or, when it cannot be measured or its real arm learned nothing, only why."""
        keys = [f"{m}_{arm}" for arm in ("real", "synth", "both") for m in measures]
        keys += [f"{measures[0]}_ratio_synth_real", f"{measures[0]}_ratio_both_real"]
        result = {NOT_MEASURED: unfit} if unfit else measure()
        if result[NOT_MEASURED]:
            self._unmeasured(keys, result[NOT_MEASURED])
            return {NOT_MEASURED: result[NOT_MEASURED]}
        self._set_arms(result, measures)
        return result

    def _set_arms(self, result: dict[str, Any], measures: tuple[str, ...]) -> None:
        """A three-arm utility result's figures: each measure per arm, then the first measure's ratios to real."""
        for arm in ("real", "synth", "both"):
            for measure in measures:
                self._set(f"{measure}_{arm}", result[arm][measure])
        self._set(f"{measures[0]}_ratio_synth_real", result["ratio_synth_real"])
        self._set(f"{measures[0]}_ratio_both_real", result["ratio_both_real"])


def _silent(ev: Any) -> None:
    """The other processes of a launch report nothing: the main process's progress is the run's."""
