"""The welcome page the window shows before anything is open: the demo, a file, or a drop."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget


def welcome_page(open_demo: Callable[[], None], open_file: Callable[[], None]) -> QWidget:
    """Two big buttons under the title: open the demo, open a file; and the formats MedSynth reads."""
    page = QWidget()
    lay = QVBoxLayout(page)
    lay.addStretch(1)
    title = QLabel("<h1>MedSynth</h1><p>Train diffusion models on your own medical images and "
                   "generate synthetic, labeled data.</p>")
    title.setAlignment(Qt.AlignmentFlag.AlignCenter)
    lay.addWidget(title)
    row = QHBoxLayout()
    row.addStretch(1)
    demo = QPushButton("Open the demo")
    demo.setToolTip("A small phantom dataset with lesion masks and a demo model, ready to generate: on a "
                    "2-core CPU the first 16 samples take about 10 s and 64 about 35 s")
    demo.clicked.connect(open_demo)
    open_btn = QPushButton("Open a file…")
    open_btn.clicked.connect(open_file)
    for b in (demo, open_btn):
        b.setMinimumSize(180, 44)
        row.addWidget(b)
    row.addStretch(1)
    lay.addLayout(row)
    hint = QLabel("MedSynth HDF5 · NIfTI · DICOM series · MedMNIST .npz · image folders — or drop one here")
    hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
    hint.setStyleSheet("color: #999;")
    lay.addWidget(hint)
    lay.addStretch(2)
    return page
