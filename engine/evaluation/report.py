"""The one-page HTML evaluation report: figures, plots and closest pairs in a single file.

Plots are inline SVG drawn here and pictures are PNGs embedded as data URIs, so the
report is one file that opens anywhere (a hospital workstation may have no network)
and needs no plotting library. FID values at different Inception depths are on
different scales: each gets its own table row with its block and weights, never a
shared axis.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ACCENT = "#3d7ab8"
MUTED = "#9aa7b4"


def _esc(value: object) -> str:
    return html.escape(str(value))


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:
            return "–"
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"
    return _esc(value)


def png_data_uri(picture: np.ndarray) -> str:
    """A 2D float picture in [0, 1] (or a uint8 one) as an embeddable PNG."""
    a = np.asarray(picture)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def bar_chart(labels: list[str], values: list[float], *, title: str, unit: str = "", width: int = 420,
              reference: float | None = None) -> str:
    """Horizontal bars; `reference` draws a dashed line (e.g. the real-data Dice)."""
    row, pad_l, pad_r = 26, 150, 60
    finite = [v for v in values if v == v]
    top = max(finite + ([reference] if reference else []) + [1e-9])
    h = row * len(values) + 34
    scale = (width - pad_l - pad_r) / top
    parts = [f'<svg class="chart" width="{width}" height="{h}" viewBox="0 0 {width} {h}" role="img">',
             f'<text x="0" y="14" class="t">{_esc(title)}</text>']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = 24 + i * row
        parts.append(f'<text x="{pad_l - 8}" y="{y + 15}" text-anchor="end">{_esc(label)}</text>')
        if v == v:
            parts.append(f'<rect x="{pad_l}" y="{y + 3}" width="{max(v * scale, 1):.1f}" height="{row - 8}" '
                         f'fill="{ACCENT}"/>')
            parts.append(f'<text x="{pad_l + v * scale + 6:.1f}" y="{y + 15}">{fmt(v)}{_esc(unit)}</text>')
    if reference:
        x = pad_l + reference * scale
        parts.append(f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{h - 4}" stroke="{MUTED}" '
                     'stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(counts: list[int], edges: list[float], *, title: str, threshold: float | None = None,
              width: int = 420, height: int = 170) -> str:
    """Bars over fixed bins, with the memorization threshold marked."""
    pad_l, pad_b, pad_t = 40, 28, 22
    n = len(counts)
    top = max(max(counts, default=0), 1)
    lo, hi = edges[0], edges[-1]
    inner_w, inner_h = width - pad_l - 10, height - pad_b - pad_t
    bw = inner_w / max(n, 1)
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f'<text x="0" y="14" class="t">{_esc(title)}</text>']
    for i, c in enumerate(counts):
        bh = inner_h * c / top
        parts.append(f'<rect x="{pad_l + i * bw:.1f}" y="{pad_t + inner_h - bh:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{bh:.1f}" fill="{ACCENT}"><title>{edges[i]:.2f}–{edges[i + 1]:.2f}: {c}</title>'
                     '</rect>')
    base = pad_t + inner_h
    parts.append(f'<line x1="{pad_l}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="{MUTED}"/>')
    for v in np.linspace(lo, hi, 6):
        x = pad_l + (v - lo) / (hi - lo) * inner_w
        parts.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle">{v:.2f}</text>')
    parts.append(f'<text x="{pad_l - 6}" y="{pad_t + 8}" text-anchor="end">{top}</text>')
    if threshold is not None and lo <= threshold <= hi:
        x = pad_l + (threshold - lo) / (hi - lo) * inner_w
        parts.append(f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{base}" stroke="#c0392b" '
                     'stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x - 4:.1f}" y="{pad_t + 10}" text-anchor="end" fill="#c0392b">'
                     f'threshold {threshold:.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pairs_strip(pairs: list[tuple[np.ndarray, np.ndarray, str]]) -> str:
    """Synthetic sample beside its nearest training sample, with the correlation as caption."""
    cells = []
    for synth, train, caption in pairs:
        cells.append(f'<figure><img src="{png_data_uri(synth)}" alt="synthetic"><img src="{png_data_uri(train)}" '
                     f'alt="nearest training image"><figcaption>{_esc(caption)}</figcaption></figure>')
    return f'<div class="pairs">{"".join(cells)}</div>'


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:980px;margin:24px auto;color:#1d2733;
padding:0 16px;font-size:14px}
h1{font-size:22px;margin-bottom:2px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde3ea;
padding-bottom:4px}.sub{color:#5b6875}
table{border-collapse:collapse;margin:8px 0}td,th{padding:4px 10px;border-bottom:1px solid #e6ebf0;
text-align:left}th{background:#f3f6f9}
.answer{background:#f3f7fb;border-left:4px solid #3d7ab8;padding:10px 14px;margin:12px 0}
.answer div{display:grid;grid-template-columns:220px 1fr;gap:10px;margin:3px 0}
.warn{background:#fff6e5;border-left:4px solid #e0a100;padding:8px 12px}
svg.chart{font-size:12px;margin:6px 18px 6px 0}svg.chart .t{font-weight:600}
.charts{display:flex;flex-wrap:wrap}.pairs{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;text-align:center}figure img{width:96px;height:96px;image-rendering:pixelated;
border:1px solid #ccd}figcaption{font-size:12px;color:#5b6875}
"""


def render(title: str, subtitle: str, sections: list[tuple[str, str]], answers: list[tuple[str, str]]) -> str:
    """A whole report: the four answers first, then one section per measurement."""
    ans = "".join(f"<div><b>{_esc(q)}</b> {_esc(a)}</div>" for q, a in answers)
    body = "".join(f"<h2>{_esc(h)}</h2>{content}" for h, content in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1><div class='sub'>{_esc(subtitle)}</div>"
            f"<div class='answer'>{ans}</div>{body}</body></html>")


def write(path: str | Path, text: str) -> Path:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)  # a report being rewritten is never seen half-written
    return p
