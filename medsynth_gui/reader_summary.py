"""The reader study's Summary page: each reader's figures, the pooled row and the agreement between readers.

Only the organiser sees it: it is filled from the answer key, which readers never get.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.evaluation.reader_summary import FIGURE_COLUMNS, agreement_rows, figure_rows
from medsynth_gui.labels import HINT_STYLE


class SummaryPage(QWidget):
    refresh = Signal()  # read the answers again: readers may have answered more since
    back = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        self.summary_title = QLabel("")
        self.summary_title.setWordWrap(True)
        lay.addWidget(self.summary_title)
        # Two-line headers: the rating columns' names are longer than their figures.
        self.figures_table = self._table([c.replace(" real / synth", "\nreal / synth") for c in FIGURE_COLUMNS])
        lay.addWidget(self.figures_table)
        agreement = QLabel("<b>Agreement between readers</b>")
        lay.addWidget(agreement)
        self.agreement_table = self._table(["Measure", "Readers", "Shared items", "Kappa"])
        lay.addWidget(self.agreement_table)
        self.convention = QLabel("")
        self.convention.setWordWrap(True)
        self.convention.setStyleSheet(HINT_STYLE)
        lay.addWidget(self.convention)
        lay.addStretch(1)
        row = QHBoxLayout()
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        back = QPushButton("Back")
        back.clicked.connect(self.back)
        row.addWidget(refresh)
        row.addWidget(back)
        row.addStretch(1)
        lay.addLayout(row)

    def show_summary(self, summary: dict[str, Any]) -> None:
        """Fill the page from engine.evaluation.reader_summary.summarise's result."""
        s = summary["study"]
        n_readers = len(summary["readers"])
        self.summary_title.setText(
            f"<h2>Summary</h2><p>{Path(s['folder']).name}: {s['items']} items ({s['real']} real, "
            f"{s['synthetic']} synthetic, {s['spatial_dims']}D) · {n_readers} reader{'s' * (n_readers != 1)}. "
            "Sensitivity: synthetic called fake; specificity: real called real.</p>")
        self._fill(self.figures_table, figure_rows(summary))
        self._fill(self.agreement_table, agreement_rows(summary)
                   or [["–", "agreement needs two or more readers", "", ""]])
        self.convention.setText("Conventions: " + summary["convention"] + ".")

    @staticmethod
    def _table(headers: list[str]) -> QTableWidget:
        t = QTableWidget(0, len(headers))
        t.setHorizontalHeaderLabels(headers)
        t.verticalHeader().hide()
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setAlternatingRowColors(True)
        t.verticalHeader().setDefaultSectionSize(26)
        # Columns share the width: one stretched last column left a wide gap in the middle of the table.
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        t.horizontalHeader().setMinimumSectionSize(70)
        return t

    @staticmethod
    def _fill(table: QTableWidget, rows: list[list[str]]) -> None:
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                cell = QTableWidgetItem(text)
                if c > 0:
                    cell.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if r == len(rows) - 1 and row[0] == "pooled":
                    font = cell.font()
                    font.setBold(True)
                    cell.setFont(font)
                table.setItem(r, c, cell)
        # As tall as its rows: a table padded with empty space reads as if rows were missing.
        height = table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth()
        table.setFixedHeight(height + sum(table.rowHeight(r) for r in range(table.rowCount())) + 2)
