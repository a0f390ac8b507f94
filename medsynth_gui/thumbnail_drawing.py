"""Drawing one thumbnail: a sample with its mask outlines in the labels' colours, or a cross for one unreadable."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QPixmap

from medsynth_gui.viewer.colors import label_color

# What the tooltips call the first colours of the viewer's palette.
COLOUR_NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple", "lime", "pink", "teal",
                "brown"]


def label_colour(label: int) -> tuple[int, int, int]:
    return label_color(int(label))


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Pixels of each labelled region that touch a different label (4-neighbours, `thickness` deep)."""
    edge = np.zeros(mask.shape, bool)
    padded = np.pad(mask, thickness, mode="edge")
    h, w = mask.shape
    for d in range(1, thickness + 1):
        for dy, dx in ((d, 0), (-d, 0), (0, d), (0, -d)):
            edge |= padded[thickness + dy:thickness + dy + h, thickness + dx:thickness + dx + w] != mask
    return edge & (mask > 0)


def _to_rgb32(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(C, H, W) in data units → (H, W) uint32 0xffRRGGBB; three channels stay colour, others show channel 0."""
    planes = image if image.shape[0] == 3 else image[:1]
    scaled = np.clip((planes - lo) * (255.0 / max(hi - lo, 1e-12)), 0.0, 255.0)
    v = np.nan_to_num(scaled, copy=False).astype(np.uint32)
    if len(v) == 3:
        return (v[0] << 16) | (v[1] << 8) | v[2] | np.uint32(0xFF000000)
    return v[0] * np.uint32(0x010101) | np.uint32(0xFF000000)


def _packed(rgb: tuple[int, int, int]) -> np.uint32:
    return np.uint32(0xFF000000 | rgb[0] << 16 | rgb[1] << 8 | rgb[2])


def render_thumbnail(image: np.ndarray, mask: np.ndarray | None, window: tuple[float, float], size: int,
                     aspect: float = 1.0) -> QImage:
    """One (C, H, W) sample and its (H, W) label map → a QImage fitting size×size, outlines on top.

    aspect is the physical height/width ratio of a pixel, so anisotropic images keep their shape.
    """
    _, h, w = image.shape
    tall = h * aspect
    th, tw = (size, max(1, round(size * w / tall))) if tall >= w else (max(1, round(size * tall / w)), size)
    argb = np.ascontiguousarray(_to_rgb32(image, *window))
    # RGB32 is the format Qt's smooth scaler is fastest on (3x RGB888 here).
    src = QImage(argb.data, w, h, 4 * w, QImage.Format.Format_RGB32)
    scaled = src.scaled(tw, th, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation)
    stride = scaled.bytesPerLine() // 4
    buf = np.frombuffer(scaled.constBits(), np.uint32, count=th * stride)
    pixels = buf.reshape(th, stride)[:, :tw].copy()
    if mask is not None and mask.any():
        # Outline at display resolution so the line is crisp whatever the source size.
        iy = np.minimum((np.arange(th) + 0.5) * h / th, h - 1).astype(np.intp)
        ix = np.minimum((np.arange(tw) + 0.5) * w / tw, w - 1).astype(np.intp)
        big = mask[iy][:, ix]
        edge = outline(big, 1 if size < 128 else 2)
        for label in np.unique(big[edge]):
            pixels[edge & (big == label)] = _packed(label_colour(int(label)))
    return QImage(pixels.data, tw, th, 4 * tw, QImage.Format.Format_RGB32).copy()


def unreadable_pixmap(size: int) -> QPixmap:
    """A red cross where a sample could not be read (a damaged chunk, a file replaced mid-write)."""
    pix = QPixmap(size, size)
    pix.fill(QColor(60, 20, 20))
    p = QPainter(pix)
    p.setPen(QPen(QColor(220, 80, 80), 2))
    p.drawLine(8, 8, size - 8, size - 8)
    p.drawLine(size - 8, 8, 8, size - 8)
    p.end()
    return pix
