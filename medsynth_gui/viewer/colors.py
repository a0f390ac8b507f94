"""Label colours, the overlay lookup table and window/level presets (no Qt)."""

from __future__ import annotations

import colorsys

import numpy as np

# ITK-SNAP's first labels are red, green, blue, yellow, cyan, magenta; these are the same
# hues a little softened so that they stay distinct on grey anatomy.
PALETTE = [
    (230, 40, 50), (40, 200, 70), (40, 120, 240), (250, 220, 30), (40, 220, 230), (230, 60, 220),
    (245, 140, 40), (150, 60, 200), (170, 240, 60), (250, 170, 190), (0, 150, 140), (170, 110, 40),
]

# Window / level in Hounsfield units, as radiology workstations name them.
CT_PRESETS = {
    "CT brain": (100.0, 50.0),
    "CT lung": (1400.0, -500.0),
    "CT bone": (1000.0, 400.0),
    "CT abdomen": (350.0, 40.0),
}
MRI_AUTO = "MRI auto"
FULL_RANGE = "Full range"
PRESET_NAMES = [*CT_PRESETS, MRI_AUTO, FULL_RANGE]

SAMPLE_VOXELS = 2_000_000


def label_color(label: int) -> tuple[int, int, int]:
    """A stable colour per label value: the palette first, then evenly spread hues."""
    if 1 <= label <= len(PALETTE):
        return PALETTE[label - 1]
    hue = (label * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbours apart
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


def label_lut(label_colors: dict[int, tuple[int, int, int]], opacity: float = 1.0) -> np.ndarray:
    """(256, 4) uint8 RGBA table for a uint8 label map: background clear, labels at `opacity`.

    Opacity lives in the table rather than on the overlay item: Qt paints an item with
    an opacity below 1 several times slower, and that cost would come back on every slice.
    """
    lut = np.zeros((256, 4), np.uint8)
    for label in range(1, 256):
        lut[label, :3] = label_colors.get(label) or label_color(label)
    lut[1:, 3] = int(round(255 * min(max(opacity, 0.0), 1.0)))
    return lut


def _sample(volume: np.ndarray) -> np.ndarray:
    # Percentiles over a strided subsample: exact enough for display, fast on 256^3.
    step = max(1, int(np.ceil((volume.size / SAMPLE_VOXELS) ** (1.0 / volume.ndim))))
    sample = volume[(slice(None, None, step),) * volume.ndim].astype(np.float32, copy=False).ravel()
    return sample[np.isfinite(sample)]


def presets_for(volume: np.ndarray) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """Every preset's (window, level) for this volume, and its 0.1-99.9 percentile range."""
    sample = _sample(volume)
    if sample.size == 0:
        lo, hi, p_lo, p_hi = 0.0, 1.0, 0.0, 1.0
    else:
        lo, hi = float(sample.min()), float(sample.max())
        p_lo, p_hi = (float(p) for p in np.percentile(sample, [0.1, 99.9]))
    presets = dict(CT_PRESETS)
    presets[MRI_AUTO] = _wl(p_lo, p_hi)
    presets[FULL_RANGE] = _wl(lo, hi)
    return presets, (p_lo, p_hi) if p_hi > p_lo else (lo, max(hi, lo + 1.0))


def _wl(lo: float, hi: float) -> tuple[float, float]:
    window = hi - lo if hi > lo else 1.0
    return (window, lo + window / 2.0 if hi > lo else lo)


def default_preset(units: str, is_rgb: bool) -> str:
    """CT in Hounsfield units opens as an abdomen window; colour images in full range; else MRI auto."""
    if is_rgb:
        return FULL_RANGE
    if units.strip().upper() == "HU":
        return "CT abdomen"
    return MRI_AUTO


def matching_preset(presets: dict[str, tuple[float, float]], window_level: tuple[float, float]) -> str | None:
    """The preset name whose window/level this is (to within rounding), or None for a custom one."""
    w, level = window_level
    for name in PRESET_NAMES:
        pw, pl = presets.get(name, (None, None))
        if pw is not None and abs(pw - w) <= 1e-6 * max(1.0, abs(pw)) and abs(pl - level) <= 1e-6 * max(1.0, abs(pw)):
            return name
    return None
