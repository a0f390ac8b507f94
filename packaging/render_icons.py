"""Renders the app icon's PNGs from medsynth_gui/icons/medsynth.svg; run after editing the SVG and commit both.

    QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/render_icons.py

The PNGs are committed rather than made at build time: the window icon and the desktop entry need a bitmap,
and the frozen app need not carry Qt's SVG plugin for them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ICONS = Path(__file__).resolve().parent.parent / "medsynth_gui" / "icons"
# 256 px for the desktop entry (hicolor/256x256) and the window icon; 48 px is what panels and docks show, drawn
# from the vectors at that size rather than scaled down from 256.
SIZES = {"medsynth.png": 256, "medsynth-48.png": 48}


def render(svg: Path, out: Path, size: int) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    if not image.save(str(out), "PNG"):
        raise SystemExit(f"{out}: could not write")


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    svg = ICONS / "medsynth.svg"
    for name, size in SIZES.items():
        render(svg, ICONS / name, size)
        print(f"wrote {ICONS / name} ({size}x{size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
