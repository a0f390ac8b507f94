"""The evaluation report's content: which figures answer which question, laid out by engine.report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from engine import report as r


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


def answers(figures: dict[str, float], summary: dict[str, Any]) -> list[tuple[str, str]]:
    f = figures
    like = []
    if _ok(f.get("fid_2048")):
        like.append(f"FID-2048 {f['fid_2048']:.2f} (real vs real {f.get('fid_2048_real_vs_real', float('nan')):.2f})")
    elif summary.get("fid", {}).get("available") is False:
        like.append("FID not computed (no Inception weights file)")
    if _ok(f.get("frd")):
        like.append(f"FRD {f['frd']:.2f} (real vs real {f.get('frd_real_vs_real', float('nan')):.2f})")
    diverse = "not measured"
    if _ok(f.get("ms_ssim_synth")) and _ok(f.get("ms_ssim_real")):
        s, real = f["ms_ssim_synth"], f["ms_ssim_real"]
        verdict = "as diverse as the real data" if s <= real + 0.05 else "less diverse than the real data"
        diverse = f"mean pairwise MS-SSIM {s:.3f} vs {real:.3f} among real images (lower = more diverse): {verdict}"
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
    helps = "not measured (needs masks in both sets)"
    if _ok(f.get("dice_real")) and _ok(f.get("dice_synth")):
        helps = (f"Dice on held-out real data: trained on synthetic {f['dice_synth']:.3f}, on real "
                 f"{f['dice_real']:.3f} ({_pct(f.get('dice_ratio_synth_real', float('nan')))} of real)")
        if _ok(f.get("dice_both")):
            helps += f"; on both {f['dice_both']:.3f} ({_pct(f.get('dice_ratio_both_real', float('nan')))})"
    elif _ok(f.get("accuracy_real")) and _ok(f.get("accuracy_synth")):
        helps = (f"classifier accuracy on held-out real data: synthetic {f['accuracy_synth']:.3f}, real "
                 f"{f['accuracy_real']:.3f}")
    return [("Is it like my data?", "; ".join(like) or "not measured"), ("Is it diverse?", diverse),
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
        rows = [[f"FID-{dim}", v["block"], v["fid"], v["real_vs_real"]] for dim, v in fid["values"].items()]
        parts.append(r.table(rows, ["figure", "Inception block", "synthetic vs real", "real vs real"]))
        parts.append(f"<p class='sub'>Inception weights: {r._esc(fid['weights'])}, sha256 "
                     f"{r._esc(fid['sha256'][:16])}…. Each depth is its own scale: compare values only within a "
                     "row.</p>")
        k = fid.get("kid", {})
        if k:
            parts.append(f"<p>KID ({k['dim']} features): {k['mean']:.4f} ± {k['std']:.4f}</p>")
    else:
        parts.append(f"<p class='warn'>{r._esc(fid.get('note', 'FID was not computed.'))}</p>")
    rows = []
    for key, label in (("frd", "Fréchet Radiomics Distance"), ("mmd", "MMD")):
        if _ok(figures.get(key)):
            rows.append([label, figures[key], figures.get(f"{key}_real_vs_real")])
    net = summary.get("features_net")
    if net:
        rows.append([f"Fréchet distance, {Path(net['path']).name} features ({net['dim']})", net["value"],
                     net["real_vs_real"]])
    if _ok(figures.get("mifid_2048")):
        rows.append(["MiFID-2048 (penalises memorized samples)", figures["mifid_2048"], None])
    if rows:
        parts.append(r.table(rows, ["distance", "synthetic vs real", "real vs real"]))
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
    im = lab.get("image_mask")
    if im:
        ref = (im.get("real_held_out") or {}).get("dice")
        parts.append("<p>Image–mask agreement: a segmenter trained on real data, applied to each synthetic image, "
                     "scored against the mask generated with it.</p>")
        parts.append(r.bar_chart(["synthetic pairs", "real held-out pairs"],
                                 [im["synth"]["dice"], ref if ref is not None else float("nan")],
                                 title="Dice of a real-trained segmenter", width=460))
    cf = lab.get("class_fidelity")
    if cf:
        rows = [[c, a, b] for c, (a, b) in enumerate(zip(cf["per_class"], cf["real_per_class"]))]
        parts.append(f"<p>Class fidelity: a classifier trained on real data calls {cf['accuracy']:.3f} of synthetic "
                     f"samples their conditioning class (real held-out: {cf['real_accuracy']:.3f}).</p>")
        parts.append(r.table(rows, ["class", "synthetic recall", "real held-out recall"]))
    return "".join(parts) or "<p>not measured (no masks or classes)</p>"


def _utility(summary: dict) -> str:
    util = summary.get("utility") or {}
    parts = []
    seg = util.get("segmentation")
    if seg:
        vals = [seg[a]["dice"] for a in ("real", "synth", "both")]
        parts.append(r.bar_chart(["real only", "synthetic only", "real + synthetic"], vals,
                                 title="Dice on held-out real data", reference=seg["real"]["dice"], width=460))
        parts.append(r.table([[a, seg[a]["dice"], seg[a]["iou"], seg["n"][a]] for a in ("real", "synth", "both")],
                             ["trained on", "Dice", "IoU", "training images"]))
        parts.append(f"<p>synthetic / real Dice: <b>{r.fmt(seg['ratio_synth_real'])}</b>; real + synthetic / real: "
                     f"<b>{r.fmt(seg['ratio_both_real'])}</b> (published studies reach 0.8–0.9).</p>")
    cls = util.get("classification")
    if cls:
        vals = [cls[a]["accuracy"] for a in ("real", "synth", "both")]
        parts.append(r.bar_chart(["real only", "synthetic only", "real + synthetic"], vals,
                                 title="classifier accuracy on held-out real data", width=460))
    return "".join(parts) or "<p>not measured</p>"


def build_report(synth_path: Path, figures: dict, summary: dict, sets: dict, extras: dict) -> Path:
    path = synth_path.with_name(synth_path.stem + "_report.html")
    notes = "".join(f"<p class='warn'>{r._esc(n)}</p>" for n in summary.get("notes", []))
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
        ("Notes and settings", notes + r.table([[k, v] for k, v in summary.get("sources", {}).items()],
                                               ["set", "source"])
         + f"<p class='sub'>settings: {r._esc(settings)}</p><p class='sub'>time: {r._esc(timing)}</p>"),
    ]
    n = len(sets["synth"][0])
    return r.write(path, r.render(f"MedSynth evaluation — {synth_path.name}", f"{n} synthetic samples", sections,
                                  answers(figures, summary)))
