"""The evaluation report's content: which figures answer which question, laid out by engine.evaluation.report.

Also the one home of what each figure is called and how it is read, used by the HTML report
and the app alike. The verdict rule reads each figure against its real-vs-real reference —
the same measurement between two sets of real data — because a bare FID or FRD means nothing
to a reader:

* distances (FID, FRD, MMD, ...; lower is closer): ratio = synthetic-vs-real / real-vs-real;
  up to 2 "close to your data", up to 5 "somewhat unlike your data", above that "far from your data";
* scores (Dice, accuracy; higher is better), against the same score of real data:
  at least 90% of it "as good as real data", at least 70% "below real data", else "far below real data";
* diversity (mean pairwise MS-SSIM; lower is more diverse): within 0.05 of the real data's
  "as diverse as your data", else "less diverse than your data";
* nearest-training correlation: no higher than any held-out real case's "no closer to training
  images than new real cases", else "closer to a training image than any new real case".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation import report as r

CLOSE_RATIO, FAR_RATIO = 2.0, 5.0
# The summary's entry {figure key: why it has no number}. A figure that cannot be measured honestly (too few
# cases, untrained networks, a degenerate set) is absent from the figures and named here instead, so no
# reader of /metrics takes a number for a measurement. Files from before it simply lack the entry.
NOT_MEASURED = "not_measured"
GOOD_SHARE, FAIR_SHARE = 0.9, 0.7
DIVERSITY_SLACK = 0.05


@dataclass(frozen=True)
class Figure:
    name: str
    reference: str | None = None  # the key of the real-vs-real figure shown beside it
    rule: str | None = None  # "distance", "score", "diversity" or "closeness": how its verdict is read


def _catalogue() -> dict[str, Figure]:
    f: dict[str, Figure] = {}
    for dim in (64, 192, 768, 2048):
        f[f"fid_{dim}"] = Figure(f"Fréchet Inception distance ({dim} features)", f"fid_{dim}_real_vs_real", "distance")
        f[f"kid_{dim}"] = Figure(f"Kernel Inception distance ({dim} features)")
        f[f"kid_{dim}_std"] = Figure(f"Kernel Inception distance ({dim} features), spread")
        f[f"mifid_{dim}"] = Figure(f"Memorization-informed FID ({dim} features)")
    f.update({
        "frd": Figure("Fréchet radiomics distance", "frd_real_vs_real", "distance"),
        "mmd": Figure("Maximum mean discrepancy (radiomics)", "mmd_real_vs_real", "distance"),
        "fd_net": Figure("Fréchet distance on your feature network", "fd_net_real_vs_real", "distance"),
        "ms_ssim_synth": Figure("Similarity among samples (MS-SSIM; lower is more diverse)", "ms_ssim_real",
                                "diversity"),
        "nn_corr_max": Figure("Highest correlation with a training image", "nn_corr_max_real_vs_train", "closeness"),
        "nn_corr_median": Figure("Median correlation with the nearest training image"),
        "nn_share_above": Figure("Share of samples above the copy threshold"),
        "mask_dice": Figure("Image–mask agreement (Dice)", "mask_dice_real", "score"),
        "class_fidelity": Figure("Class fidelity (classifier accuracy)", "class_fidelity_real", "score"),
        "dice_real": Figure("Segmentation Dice, trained on real"),
        "dice_synth": Figure("Segmentation Dice, trained on synthetic", "dice_real", "score"),
        "dice_both": Figure("Segmentation Dice, trained on real + synthetic", "dice_real", "score"),
        "iou_real": Figure("Segmentation IoU, trained on real"),
        "iou_synth": Figure("Segmentation IoU, trained on synthetic", "iou_real", "score"),
        "iou_both": Figure("Segmentation IoU, trained on real + synthetic", "iou_real", "score"),
        "dice_ratio_synth_real": Figure("Dice ratio, synthetic / real"),
        "dice_ratio_both_real": Figure("Dice ratio, real + synthetic / real"),
        "accuracy_real": Figure("Classifier accuracy, trained on real"),
        "accuracy_synth": Figure("Classifier accuracy, trained on synthetic", "accuracy_real", "score"),
        "accuracy_both": Figure("Classifier accuracy, trained on real + synthetic", "accuracy_real", "score"),
        "accuracy_ratio_synth_real": Figure("Accuracy ratio, synthetic / real"),
        "accuracy_ratio_both_real": Figure("Accuracy ratio, real + synthetic / real"),
    })
    return f


FIGURES = _catalogue()
REFERENCES = {fig.reference for fig in FIGURES.values() if fig.reference}


def verdict(rule: str | None, value: float | None, reference: float | None) -> str:
    """A plain reading of one figure against its real-vs-real reference (the rule in the module text)."""
    if rule is None or not _ok(value) or not _ok(reference):
        return ""
    if rule == "distance":
        if reference <= 0:  # an unbiased MMD can estimate real vs real at 0: no ratio, only "as close"
            return "close to your data" if value <= 0 else ""
        ratio = value / reference
        return ("close to your data" if ratio <= CLOSE_RATIO else
                "somewhat unlike your data" if ratio <= FAR_RATIO else "far from your data")
    if rule == "score":
        if reference <= 0:
            return ""
        share = value / reference
        return ("as good as real data" if share >= GOOD_SHARE else
                "below real data" if share >= FAIR_SHARE else "far below real data")
    if rule == "diversity":
        return "as diverse as your data" if value <= reference + DIVERSITY_SLACK else "less diverse than your data"
    if rule == "closeness":
        return ("no closer to training images than new real cases" if value <= reference else
                "closer to a training image than any new real case")
    return ""


def named_figures(figures: dict[str, float]) -> list[tuple[str, str, float, float | None, str]]:
    """(key, name, value, real-vs-real reference or None, verdict) for every figure that is not itself
    a reference, in the catalogue's order; a figure the catalogue lacks keeps its key as name."""
    known = [k for k in FIGURES if k in figures]
    rest = sorted(k for k in figures if k not in FIGURES and k not in REFERENCES)
    rows = []
    for key in known + rest:
        fig = FIGURES.get(key, Figure(key))
        ref = figures.get(fig.reference) if fig.reference else None
        rows.append((key, fig.name, figures[key], ref, verdict(fig.rule, figures[key], ref)))
    return rows


def not_measured(summary: dict[str, Any]) -> dict[str, str]:
    """{figure key: reason} of an evaluation's summary; empty for files written before reasons were kept."""
    entry = summary.get(NOT_MEASURED)
    return {str(k): str(v) for k, v in entry.items()} if isinstance(entry, dict) else {}


def figure_name(key: str) -> str:
    """A figure's name in words; a real-vs-real reference is named after the figure it stands beside."""
    if key in FIGURES:
        return FIGURES[key].name
    beside = next((fig for fig in FIGURES.values() if fig.reference == key), None)
    return f"{beside.name} (real reference)" if beside else key


def unmeasured_groups(summary: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(reason, [(key, name), ...]) for every figure the evaluation could not measure, grouped by reason in
    the catalogue's order. A reference is left out where the figure it stands beside is listed too."""
    missing = not_measured(summary)
    order = [k for k in FIGURES if k in missing] + sorted(k for k in missing if k not in FIGURES)
    beside = {fig.reference: key for key, fig in FIGURES.items() if fig.reference}
    groups: dict[str, list[tuple[str, str]]] = {}
    for key in order:
        if key not in FIGURES and beside.get(key) in missing:
            continue
        groups.setdefault(missing[key], []).append((key, figure_name(key)))
    return list(groups.items())


def report_path(synth_path: str | Path) -> Path:
    p = Path(synth_path)
    return p.with_name(p.stem + "_report.html")


def picture(image: np.ndarray) -> np.ndarray:
    """One sample (C, H, W) or (C, D, H, W) in [0, 1] as a 2D picture: the central slice of a volume."""
    a = np.asarray(image)
    if a.ndim == 4:
        a = a[:, a.shape[1] // 2]
    if a.shape[0] == 3:
        return (np.clip(np.moveaxis(a, 0, -1), 0, 1) * 255 + 0.5).astype(np.uint8)
    return a[0]


def _ok(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def _read(figures: dict[str, float], key: str) -> str:
    """One figure in words: its name, value, real-vs-real reference and verdict."""
    fig = FIGURES[key]
    ref = figures.get(fig.reference) if fig.reference else None
    text = f"{fig.name} {figures[key]:.2f}"
    if _ok(ref):
        text += f" (between real sets {ref:.2f})"
    v = verdict(fig.rule, figures[key], ref)
    return f"{text}: {v}" if v else text


def _not_measured_utility(summary: dict[str, Any]) -> str:
    """Why the downstream question has no answer: the user's choice, a stop, missing masks, or data or
    networks that could not measure it."""
    settings = summary.get("settings") or {}
    if settings.get("utility") is False or "utility" in (settings.get("skip") or []):
        return "not measured: switched off"
    reason = (summary.get("utility") or {}).get("not_measured") or not_measured(summary).get("dice_synth") \
        or not_measured(summary).get("accuracy_synth")
    if reason:
        return f"not measured: {reason}"
    if summary.get("complete") is False:
        return "not measured: the evaluation was stopped before this step"
    return "not measured: needs masks in every set"


def _like(f: dict[str, float], summary: dict[str, Any], missing: dict[str, str]) -> str:
    """The answer to "is it like my data?": FID and FRD, or why they are missing."""
    like = []
    if _ok(f.get("fid_2048")):
        like.append(_read(f, "fid_2048"))
    elif (summary.get("fid") or {}).get("not_measured"):
        like.append(f"FID not measured: {summary['fid']['not_measured']}")
    elif (summary.get("fid") or {}).get("available") is False:
        like.append("FID not computed (no Inception weights file)")
    if _ok(f.get("frd")):
        like.append(_read(f, "frd"))
    elif "frd" in missing:
        like.append(f"FRD not measured: {missing['frd']}")
    return "; ".join(like) or "not measured"


def answers(figures: dict[str, float], summary: dict[str, Any]) -> list[tuple[str, str]]:
    f = figures
    missing = not_measured(summary)
    diverse = "not measured"
    if _ok(f.get("ms_ssim_synth")) and _ok(f.get("ms_ssim_real")):
        s, real = f["ms_ssim_synth"], f["ms_ssim_real"]
        diverse = (f"mean pairwise MS-SSIM {s:.3f} vs {real:.3f} among real images (lower = more diverse): "
                   f"{verdict('diversity', s, real)}")
    elif "ms_ssim_synth" in missing or "ms_ssim_real" in missing:
        diverse = f"not measured: {missing.get('ms_ssim_synth') or missing['ms_ssim_real']}"
    copies = "not measured"
    mem = summary.get("memorization")
    if mem:
        n_above = mem.get("n_above", round(mem.get("share_above", 0) * mem.get("n", 0)))
        ref = mem.get("real_vs_train", {}).get("max")
        copies = (f"{n_above} of {mem.get('n', '?')} samples ({_pct(mem.get('share_above', 0))}) correlate above "
                  f"{mem.get('threshold', 0.95):.3f} with a training image; highest {mem.get('max', float('nan')):.3f}")
        if ref is not None:
            # Unrelated patients share anatomy too: the held-out real cases say what "close" means here.
            copies += (f" (held-out real cases: {_pct(mem['real_vs_train'].get('share_above', 0))} above, "
                       f"highest {ref:.3f})")
    helps = _not_measured_utility(summary)
    if _ok(f.get("dice_real")) and _ok(f.get("dice_synth")):
        helps = (f"Dice on held-out real data: trained on synthetic {f['dice_synth']:.3f}, on real "
                 f"{f['dice_real']:.3f} ({_pct(f.get('dice_ratio_synth_real', float('nan')))} of real)")
        if _ok(f.get("dice_both")):
            helps += f"; on both {f['dice_both']:.3f} ({_pct(f.get('dice_ratio_both_real', float('nan')))})"
        helps += f": {verdict('score', f['dice_synth'], f['dice_real'])}"
    elif _ok(f.get("accuracy_real")) and _ok(f.get("accuracy_synth")):
        helps = (f"classifier accuracy on held-out real data: synthetic {f['accuracy_synth']:.3f}, real "
                 f"{f['accuracy_real']:.3f}: {verdict('score', f['accuracy_synth'], f['accuracy_real'])}")
    return [("Is it like my data?", _like(f, summary, missing)), ("Is it diverse?", diverse),
            ("Does it copy patients?", copies), ("Does it help segmentation?", helps)]


def _samples(sets: dict) -> str:
    rows = []
    for name, caption in (("synth", "synthetic"), ("test", "real (held out)")):
        images = sets[name][0][:8]
        cells = "".join(f'<figure><img src="{r.png_data_uri(picture(im))}" alt="{caption}"></figure>'
                        for im in images)
        rows.append(f"<div><b>{caption}</b><div class='pairs'>{cells}</div></div>")
    return "".join(rows)


def _distances(figures: dict, summary: dict) -> str:
    fid = summary.get("fid", {})
    parts = []
    if fid.get("available"):
        rows = [[f"FID-{dim}", v["block"], v["fid"], v["real_vs_real"],
                 verdict("distance", v["fid"], v["real_vs_real"])] for dim, v in fid["values"].items()]
        parts.append(r.table(rows, ["figure", "Inception block", "synthetic vs real", "real vs real", "reading"]))
        parts.append(f"<p class='sub'>Inception weights: {r._esc(fid['weights'])}, sha256 "
                     f"{r._esc(fid['sha256'][:16])}…. Each depth is its own scale: compare values only within a "
                     "row.</p>")
        k = fid.get("kid", {})
        if k:
            parts.append(f"<p>KID ({k['dim']} features): {k['mean']:.4f} ± {k['std']:.4f}</p>")
    else:
        parts.append(f"<p class='warn'>{r._esc(fid.get('note', 'FID was not computed.'))}</p>")
    rows = []
    net = summary.get("features_net")
    for key in ("frd", "mmd", "fd_net", "mifid_2048"):
        if _ok(figures.get(key)):
            fig = FIGURES[key]
            name = f"{fig.name} ({Path(net['path']).name}, {net['dim']} features)" if key == "fd_net" and net \
                else fig.name
            ref = figures.get(fig.reference) if fig.reference else None
            rows.append([name, figures[key], ref, verdict(fig.rule, figures[key], ref)])
    if rows:
        parts.append(r.table(rows, ["distance", "synthetic vs real", "real vs real", "reading"]))
    shifts = summary.get("frd", {}).get("largest_shifts_sd")
    if shifts:
        parts.append("<p>Radiomic features furthest from the real data (synthetic mean − real mean, in real "
                     "standard deviations): " + ", ".join(f"{r._esc(n)} {v:+.1f}" for n, v in shifts) + "</p>")
    return "".join(parts)


def _memorization(summary: dict, sets: dict, extras: dict) -> str:
    mem = summary.get("memorization")
    nn = extras.get("nn")
    if not mem or nn is None:
        return "<p>not measured</p>"
    idx, corr = nn
    # Zoomed to where the samples are: similar anatomy puts every correlation high, and the
    # gap between typical samples and copies is what the reader needs to see.
    lo = max(-1.0, math.floor(float(corr.min()) * 20) / 20 - 0.05)
    edges = list(np.linspace(lo, 1.0, 21))
    counts, _ = np.histogram(corr, bins=edges)
    parts = [r.histogram([int(c) for c in counts], edges, title="nearest-training-image correlation per sample",
                         threshold=mem.get("threshold"))]
    pairs = []
    for s_i, t_i, c in mem.get("closest", [])[:8]:
        pairs.append((picture(sets["synth"][0][s_i]), picture(sets["train"][0][t_i]),
                      f"#{s_i} vs train #{t_i}: {c:.3f}"))
    parts.append("<p>Closest pairs (synthetic left, nearest training image right):</p>" + r.pairs_strip(pairs))
    return "".join(parts)


def _labels(summary: dict) -> str:
    lab = summary.get("labels") or {}
    parts = []
    for part in ("image_mask", "class_fidelity"):
        if (lab.get(part) or {}).get("not_measured"):
            what = "Image–mask agreement" if part == "image_mask" else "Class fidelity"
            parts.append(f"<p class='warn'>{what} not measured: {r._esc(lab[part]['not_measured'])}</p>")
    im = lab.get("image_mask")
    if im and "synth" in im:
        ref = (im.get("real_held_out") or {}).get("dice")
        parts.append("<p>Image–mask agreement: a segmenter trained on real data, applied to each synthetic image, "
                     "scored against the mask generated with it.</p>")
        parts.append(r.bar_chart(["synthetic pairs", "real held-out pairs"],
                                 [im["synth"]["dice"], ref if ref is not None else float("nan")],
                                 title="Dice of a real-trained segmenter", width=460))
    cf = lab.get("class_fidelity")
    if cf and "accuracy" in cf:
        rows = [[c, a, b] for c, (a, b) in enumerate(zip(cf["per_class"], cf["real_per_class"]))]
        parts.append(f"<p>Class fidelity: a classifier trained on real data calls {cf['accuracy']:.3f} of synthetic "
                     f"samples their conditioning class (real held-out: {cf['real_accuracy']:.3f}).</p>")
        parts.append(r.table(rows, ["class", "synthetic recall", "real held-out recall"]))
    return "".join(parts) or "<p>not measured (no masks or classes)</p>"


def _utility(summary: dict) -> str:
    util = summary.get("utility") or {}
    parts = []
    for task in ("segmentation", "classification"):
        if (util.get(task) or {}).get("not_measured"):
            parts.append(f"<p class='warn'>{task.capitalize()} utility not measured: "
                         f"{r._esc(util[task]['not_measured'])}</p>")
    seg = util.get("segmentation")
    if seg and "real" in seg:
        vals = [seg[a]["dice"] for a in ("real", "synth", "both")]
        parts.append(r.bar_chart(["real only", "synthetic only", "real + synthetic"], vals,
                                 title="Dice on held-out real data", reference=seg["real"]["dice"], width=460))
        parts.append(r.table([[a, seg[a]["dice"], seg[a]["iou"], seg["n"][a]] for a in ("real", "synth", "both")],
                             ["trained on", "Dice", "IoU", "training images"]))
        parts.append(f"<p>synthetic / real Dice: <b>{r.fmt(seg['ratio_synth_real'])}</b>; real + synthetic / real: "
                     f"<b>{r.fmt(seg['ratio_both_real'])}</b> (published studies reach 0.8–0.9).</p>")
    cls = util.get("classification")
    if cls and "real" in cls:
        vals = [cls[a]["accuracy"] for a in ("real", "synth", "both")]
        parts.append(r.bar_chart(["real only", "synthetic only", "real + synthetic"], vals,
                                 title="classifier accuracy on held-out real data", width=460))
    return "".join(parts) or "<p>not measured</p>"


def build_report(synth_path: Path, figures: dict, summary: dict, sets: dict, extras: dict) -> Path:
    path = report_path(synth_path)
    notes = "".join(f"<p class='warn'>{r._esc(n)}</p>" for n in summary.get("notes", []))
    unmeasured = "".join(f"<p class='warn'>Not measured: {r._esc(', '.join(name for _, name in figures_))} — "
                         f"{r._esc(why)}</p>" for why, figures_ in unmeasured_groups(summary))
    if not summary.get("complete", True):
        notes += "<p class='warn'>The evaluation was stopped: only the figures above were computed.</p>"
    settings = summary.get("settings", {})
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in summary.get("timings_s", {}).items())
    sections = [
        ("Samples", _samples(sets)),
        ("Is it like my data? Distances", _distances(figures, summary)),
        ("Is it diverse?", r.bar_chart(["synthetic", "real"], [figures.get("ms_ssim_synth", float("nan")),
                                                               figures.get("ms_ssim_real", float("nan"))],
                                       title="mean pairwise MS-SSIM (lower = more diverse)")),
        ("Does it copy patients? Memorization", _memorization(summary, sets, extras)),
        ("Are the labels right?", _labels(summary)),
        ("Does it help? Downstream utility", _utility(summary)),
        ("Notes and settings", unmeasured + notes + r.table([[k, v] for k, v in summary.get("sources", {}).items()],
                                               ["set", "source"])
         + f"<p class='sub'>settings: {r._esc(settings)}</p><p class='sub'>time: {r._esc(timing)}</p>"),
    ]
    n = len(sets["synth"][0])
    return r.write(path, r.render(f"MedSynth evaluation — {synth_path.name}", f"{n} synthetic samples", sections,
                                  answers(figures, summary)))
