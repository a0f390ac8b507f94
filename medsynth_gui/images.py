"""Arrays to pixels: the only image arithmetic the GUI does."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap


def to_uint8(image: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(H, W) or (3, H, W) in data units → uint8 (H, W) or (H, W, 3) over [lo, hi]."""
    a = np.asarray(image, np.float32)
    if lo is None or hi is None:
        lo, hi = np.percentile(a, (0.5, 99.5)) if a.size else (0.0, 1.0)
    scaled = np.clip((a - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0) * 255.0 + 0.5  # + 0.5: to the nearest level
    out = scaled.astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, 0, -1) if out.ndim == 3 else out)


def pixels_to_pixmap(pixels: np.ndarray, size: int = 0) -> QPixmap:
    """uint8 (H, W) grey or (H, W, 3) RGB → a pixmap, fitted into size × size when size is given."""
    a = np.ascontiguousarray(pixels, np.uint8)
    h, w = a.shape[:2]
    if a.ndim == 3:
        qimg = QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    else:
        qimg = QImage(a.data, w, h, w, QImage.Format.Format_Grayscale8)
    pix = QPixmap.fromImage(qimg.copy())  # copy: the numpy buffer dies with this frame
    if size:
        pix = pix.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation)
    return pix


def to_pixmap(image: np.ndarray, lo: float | None = None, hi: float | None = None, size: int = 0) -> QPixmap:
    return pixels_to_pixmap(to_uint8(image, lo, hi), size)


def picture_pixmap(picture: np.ndarray, size: int = 0) -> QPixmap:
    """A picture as engine.evaluation.figures.picture makes one: grey (H, W) in [0, 1], or RGB (H, W, 3) in uint8."""
    a = np.asarray(picture)
    return pixels_to_pixmap(a if a.dtype == np.uint8 else to_uint8(a, 0.0, 1.0), size)
