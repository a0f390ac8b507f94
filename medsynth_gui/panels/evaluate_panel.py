"""Evaluate page: run `medsynth evaluate` in the worker, then show the answers, figures and plots.

FID values of different Inception depths stay in a table, one row each: they are on
different scales, and a shared axis would invite comparing them. Figure names and their
verdicts come from engine.evaluation.figures, which the HTML report uses too.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.errors import InputError
from engine.evaluation.figures import answers, named_figures, unmeasured_groups
from engine.evaluation.stages import Stage
from engine.jobs import Done, Message, Progress
from medsynth_gui.flow_layout import FlowLayout
from medsynth_gui.images import picture_pixmap
from medsynth_gui.panels.job_panel import JobPanel
from medsynth_gui.panels.widgets import path_row

ACCENT = (61, 122, 184)
STAGE_TEXT = {Stage.LOAD: "reading the data", Stage.FID: "Inception features (FID, KID)",
              Stage.FEATURES: "your feature network's Fréchet distance", Stage.RADIOMICS: "radiomic features "
              "(FRD, MMD)", Stage.DIVERSITY: "MS-SSIM diversity", Stage.MEMORIZATION: "nearest training images",
              Stage.LABELS: "label quality (segmenter, classifier)",
              Stage.UTILITY: "downstream utility (3 segmenters)", Stage.REPORT: "writing the report"}

if TYPE_CHECKING:
    from engine.evaluation.evaluate import EvalSettings


class EvaluatePanel(JobPanel):
    evaluated = Signal(str)  # the file whose /metrics were just written

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Evaluate", parent)
        self.result: dict | None = None
        self._prefilled = ""  # the training data this panel filled in itself, replaced when the file changes
        self._build()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        outer = QHBoxLayout(self)
        left = QVBoxLayout()
        left.addWidget(self._build_settings_box())
        self._build_buttons(left)
        left.addWidget(self.progress)
        left.addWidget(self.status)
        left.addWidget(self.error)
        left.addWidget(self._build_table(), 1)
        holder = QWidget()
        holder.setLayout(left)
        holder.setMaximumWidth(440)
        outer.addWidget(holder)
        outer.addWidget(self._build_results(), 1)
        self.report_btn.setEnabled(False)

    def _build_settings_box(self) -> QGroupBox:
        box = QGroupBox("Evaluate synthetic data")
        form = QFormLayout(box)
        data = "Data (*.h5 *.npz *.nii *.nii.gz)"
        self.synth_edit = self._path_field(form, "Synthetic", "synthetic .h5 file", "MedSynth HDF5 (*.h5 *.hdf5)")
        self.real_edit = self._path_field(form, "Real (test)", "held-out real data (optional: else a fifth of the "
                                          "training data)", data, folders=True)
        self.train_edit = self._path_field(form, "Training data", "the generator's training data (default: "
                                           "recorded in the file)", data, folders=True)
        self.weights_edit = self._path_field(form, "FID weights", "pt_inception-2015-12-05-6726825d.pth (optional)",
                                             "PyTorch weights (*.pth *.pt)")
        self.net_edit = self._path_field(form, "Feature network", "your feature network, .pt2 or TorchScript "
                                         "(optional, e.g. a 3D encoder)", "Feature network (*.pt2 *.pt *.ts)")
        # The spin box's minimum stands for "auto", shown as text, so the default needs no extra control.
        self.threshold = QDoubleSpinBox(singleStep=0.01)
        self.threshold.setDecimals(3)  # before the range: with 2 decimals Qt would round 0.499 to 0.5
        self.threshold.setRange(0.499, 1.0)
        self.threshold.setValue(0.499)
        self.threshold.setSpecialValueText("auto")
        self.threshold.setToolTip("a sample correlating above this with a training image counts as a copy; auto: the "
                                  "99th percentile of held-out real cases, at least 0.95")
        form.addRow("Copy threshold", self.threshold)
        self.max_samples = QSpinBox(minimum=10, maximum=100_000, value=1000)
        form.addRow("Samples per set", self.max_samples)
        self.steps = QSpinBox(minimum=10, maximum=100_000, value=300)
        self.steps.setToolTip("training steps of each downstream segmenter / classifier")
        form.addRow("Utility steps", self.steps)
        self.utility_check = QCheckBox("downstream utility (3 segmenters)")
        self.utility_check.setChecked(True)
        form.addRow("", self.utility_check)
        return box

    def _build_buttons(self, left: QVBoxLayout) -> None:
        row = QHBoxLayout()
        self.report_btn = QPushButton("Open report")
        self.report_btn.clicked.connect(self.open_report)
        for b in (self.run_btn, self.stop_btn, self.report_btn):
            row.addWidget(b)
        left.addLayout(row)
        # The report's path, selectable and copyable: a machine without a browser cannot open it. A read-only
        # field scrolls a long path instead of widening the page.
        report_row = QHBoxLayout()
        self.report_path = QLineEdit(readOnly=True)
        self.report_path.setPlaceholderText("the report's path appears here")
        self.copy_btn = QPushButton("Copy path")
        self.copy_btn.setToolTip("Copy the report's path to the clipboard")
        self.copy_btn.clicked.connect(self.copy_report_path)
        self.copy_btn.setEnabled(False)
        report_row.addWidget(QLabel("Report"))
        report_row.addWidget(self.report_path, 1)
        report_row.addWidget(self.copy_btn)
        left.addLayout(report_row)

    def _build_table(self) -> QTableWidget:
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["figure", "value", "real vs real", "reading"])
        header = self.table.horizontalHeader()
        for col, mode in enumerate((QHeaderView.ResizeMode.Stretch, QHeaderView.ResizeMode.ResizeToContents,
                                    QHeaderView.ResizeMode.ResizeToContents, QHeaderView.ResizeMode.Stretch)):
            header.setSectionResizeMode(col, mode)
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideNone)
        header.sectionResized.connect(lambda *_: self.table.resizeRowsToContents())  # wrapped names stay whole
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        return self.table

    def _build_results(self) -> QScrollArea:
        """The right-hand side: the answers, the plots, the closest pairs and the FID table, scrolling."""
        right = QWidget()
        grid = QVBoxLayout(right)
        grid.addWidget(self._build_answers())
        grid.addWidget(self._build_plots())
        pairs_box = QGroupBox("Closest pairs (synthetic | nearest training image)")
        pairs_box.setMinimumHeight(150)
        self.pairs_layout = FlowLayout(pairs_box)
        grid.addWidget(pairs_box)
        self.fid_table = QTableWidget(0, 4)
        self.fid_table.setHorizontalHeaderLabels(["FID depth", "Inception block", "synthetic vs real", "real vs real"])
        self.fid_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.fid_table.verticalHeader().hide()
        self.fid_table.setFixedHeight(150)
        self.fid_table.hide()
        self.fid_note = QLabel("")
        self.fid_note.setWordWrap(True)
        self.fid_note.setMinimumHeight(60)
        self.fid_note.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        grid.addWidget(self.fid_table)
        grid.addWidget(self.fid_note)
        grid.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(right)
        return scroll

    def _build_answers(self) -> QGroupBox:
        answers_box = QGroupBox("Answers")
        av = QVBoxLayout(answers_box)
        # One rich-text label: word-wrapped labels in a grid get squeezed to one line each.
        self.answers_label = QLabel("Run an evaluation to answer: is it like my data, is it diverse, does it copy "
                                    "patients, does it help segmentation?")
        self.answers_label.setWordWrap(True)
        self.answers_label.setTextFormat(Qt.TextFormat.RichText)
        # The scroll area sizes its page from minimum heights, which ignore word wrapping.
        self.answers_label.setMinimumHeight(130)
        self.answers_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        av.addWidget(self.answers_label)
        return answers_box

    def _build_plots(self) -> QWidget:
        # Flowing rows, not one fixed row: side by side the plots and the pairs would need more width than a
        # laptop screen leaves beside the form and the docks, and the answers would be cut off on the right.
        plots_holder = QWidget()
        plots = FlowLayout(plots_holder)
        self.hist_plot = pg.PlotWidget(title="Nearest training image")
        self.hist_plot.setLabel("bottom", "correlation")
        self.hist_plot.setLabel("left", "samples")
        self.dice_plot = pg.PlotWidget(title="Dice on held-out real data")
        for p in (self.hist_plot, self.dice_plot):
            p.setFixedSize(340, 260)
            p.setMouseEnabled(False, False)
            plots.addWidget(p)
        return plots_holder

    def _path_field(self, form: QFormLayout, label: str, placeholder: str, pattern: str,
                    folders: bool = False) -> QLineEdit:
        """A path field with File… (and Folder…, for data that may be a folder) buttons, as a form row."""
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        buttons = [QPushButton("File…" if folders else "Browse…")]
        buttons[0].clicked.connect(lambda: self._pick_file(edit, pattern))
        if folders:
            buttons.append(QPushButton("Folder…"))
            buttons[1].clicked.connect(lambda: self._pick_folder(edit))
        form.addRow(label, path_row(edit, *buttons))
        return edit

    def _pick_file(self, edit: QLineEdit, pattern: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a file", "", pattern)
        if path:
            edit.setText(path)

    def _pick_folder(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder")
        if path:
            edit.setText(path)

    def set_file(self, path: str) -> None:
        self.synth_edit.setText(path)
        self._prefill_training_data()

    def _prefill_training_data(self) -> bool:
        """Show the training data the evaluation will use by default (the recorded path, or the bundled
        demo phantoms for a demo output), unless the user chose some. False: the file is unreadable."""
        current = self.train_edit.text().strip()
        if current and current != self._prefilled:
            return True
        try:
            from engine.evaluation.inputs import default_training_data  # torch: loaded when first needed

            found = default_training_data(self.synth_edit.text().strip())
        except InputError:
            return False  # the evaluation says what is wrong with the file when it starts
        self._prefilled = str(found) if found is not None else ""
        self.train_edit.setText(self._prefilled)
        return True

    # ------------------------------------------------------------------ running
    def settings(self) -> EvalSettings:
        from engine.evaluation.evaluate import EvalSettings

        return EvalSettings(fid_weights=self.weights_edit.text().strip() or None,
                            features_net=self.net_edit.text().strip() or None,
                            nn_threshold=None if self.threshold.value() <= self.threshold.minimum()
                            else self.threshold.value(),
                            max_samples=self.max_samples.value(), utility=self.utility_check.isChecked(),
                            utility_steps=self.steps.value())

    def start(self) -> None:
        self.show_error("")
        readable = self._prefill_training_data()
        synth = self.synth_edit.text().strip()
        if readable and not self.train_edit.text().strip() and not self.real_edit.text().strip():
            self._on_failed(f"{Path(synth).name} records no training data that still exists: choose "
                            "Real (test) or Training data above.")
            return
        try:
            from engine.evaluation.evaluate import EvaluateJob
            from engine.evaluation.feature_net import NeedsTrust

            settings = self.settings()
            files = (self.synth_edit.text().strip(), self.real_edit.text().strip() or None,
                     self.train_edit.text().strip() or None)
            try:
                job = EvaluateJob(*files, settings)
            except NeedsTrust as exc:
                if not self._may_run_code(Path(settings.features_net), exc.fault):
                    self.status.setText("Not started")  # the user's own choice, not a failure
                    self.show_error(str(exc))
                    return
                settings.trust_code = True
                job = EvaluateJob(*files, settings)
        except InputError as exc:
            self._on_failed(str(exc))
            return
        self.result = None
        self.progress.setRange(0, 0)
        self.launch(job, "Starting…")

    def _may_run_code(self, path: Path, fault: str) -> bool:
        """Only on a clear yes naming the file: loading it runs whatever code it holds, as this user."""
        box = QMessageBox(QMessageBox.Icon.Warning, "Run code from this file?",
                          f"The feature network {path.name} (in {path.parent}) {fault.split(';')[0]}.\n\n"
                          "Loading it runs that code on this computer with your permissions. Load it only if "
                          "you made it or trust where it came from.", QMessageBox.StandardButton.Cancel, self)
        trust = box.addButton(f"Trust {path.name} and load it", QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is trust

    def _on_event(self, ev: object) -> None:
        if isinstance(ev, Progress):
            if ev.stage == "evaluate":
                self.progress.setRange(0, ev.total)
                self.progress.setValue(ev.done)
                stage = ev.info.get("stage")  # None once every stage is done
                self.status.setText(f"{ev.done + 1}/{ev.total}: {STAGE_TEXT[stage]}" if stage is not None
                                    else f"{ev.done}/{ev.total}: done")
            else:
                self.status.setText(f"{STAGE_TEXT.get(ev.stage, ev.stage)}: step {ev.done} of {ev.total}")
        elif isinstance(ev, Message):
            self.status.setText(ev.text)

    def _on_failed(self, message: str) -> None:
        self.progress.setRange(0, 1)  # ends the busy indicator start() set
        self.progress.setValue(0)
        super()._on_failed(message)

    def _on_done(self, ev: Done) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        r = ev.result
        self.status.setText(("Stopped: partial figures kept" if ev.cancelled else "Done") +
                            f" in {r.get('seconds', 0):.0f} s")
        self.show_result(r)
        self.evaluated.emit(r.get("file", ""))

    # ------------------------------------------------------------------ results
    def show_result(self, r: dict) -> None:
        self.result = r
        figures, summary = r.get("figures", {}), r.get("summary", {})
        self.table.setRowCount(0)
        for key, name, value, ref, reading in named_figures(figures):
            row = self.table.rowCount()
            self.table.insertRow(row)
            item = QTableWidgetItem(name)
            item.setData(Qt.ItemDataRole.UserRole, key)  # the /metrics attribute, for scripts and tests
            item.setToolTip(f"stored in /metrics as {key}")
            self.table.setItem(row, 0, item)
            for col, text in ((1, f"{value:.4g}"), (2, "" if ref is None else f"{ref:.4g}"), (3, reading)):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self._show_unmeasured(summary)
        self.table.resizeRowsToContents()
        self.answer_texts = [text for _, text in answers(figures, summary)]
        rows = "".join(f"<tr><td style='padding:2px 12px 2px 0'><b>{html.escape(q)}</b></td>"
                       f"<td style='padding:2px 0'>{html.escape(a)}</td></tr>" for q, a in answers(figures, summary))
        self.answers_label.setText(f"<table width='100%'>{rows}</table>")
        self._plot_hist(r.get("nn_corr"), (summary.get("memorization") or {}).get("threshold"))
        self._plot_dice(figures)
        self._show_pairs(r.get("pairs") or [])
        self._show_fid(summary.get("fid") or {})
        self.report_btn.setEnabled(bool(r.get("report")))
        self.copy_btn.setEnabled(bool(r.get("report")))
        self.report_path.setText(r.get("report") or "")

    def _show_unmeasured(self, summary: dict) -> None:
        """A row per figure the evaluation could not measure: the words "not measured" and why, never a number."""
        for why, unmeasured in unmeasured_groups(summary):
            for key, name in unmeasured:
                row = self.table.rowCount()
                self.table.insertRow(row)
                item = QTableWidgetItem(name)
                item.setData(Qt.ItemDataRole.UserRole, key)
                item.setToolTip(f"not stored in /metrics as {key}: {why}")
                self.table.setItem(row, 0, item)
                for col, text in ((1, "not measured"), (2, ""), (3, why)):
                    self.table.setItem(row, col, QTableWidgetItem(text))

    def _plot_hist(self, corr: np.ndarray | None, threshold: float | None) -> None:
        self.hist_plot.clear()
        if corr is None or len(corr) == 0:
            return
        lo = max(-1.0, np.floor(float(np.min(corr)) * 20) / 20 - 0.05)
        counts, edges = np.histogram(corr, bins=np.linspace(lo, 1.0, 21))
        self.hist_plot.addItem(pg.BarGraphItem(x0=edges[:-1], x1=edges[1:], height=counts, brush=pg.mkBrush(*ACCENT)))
        if threshold is not None:
            self.hist_plot.addItem(pg.InfiniteLine(threshold, angle=90, pen=pg.mkPen((192, 57, 43), width=2,
                                                                                    style=Qt.PenStyle.DashLine)))

    def _plot_dice(self, figures: dict) -> None:
        self.dice_plot.clear()
        arms = [("real", "real only"), ("synth", "synthetic"), ("both", "real + synth")]
        values = [figures.get(f"dice_{a}") for a, _ in arms]
        if all(v is None for v in values):
            self.dice_plot.setTitle("Dice on held-out real data: not measured")
            return
        self.dice_plot.setTitle("Dice on held-out real data")
        heights = [v if v is not None else 0.0 for v in values]
        self.dice_plot.addItem(pg.BarGraphItem(x=np.arange(3), height=heights, width=0.6,
                                               brush=pg.mkBrush(*ACCENT)))
        self.dice_plot.getAxis("bottom").setTicks([[(i, name) for i, (_, name) in enumerate(arms)]])
        self.dice_plot.setYRange(0, 1.0)  # Dice lives in [0, 1]; a fixed scale keeps runs comparable

    def _show_pairs(self, pairs: list) -> None:
        while self.pairs_layout.count():
            item = self.pairs_layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        for synth, train, caption in pairs:
            cell = QWidget()
            lay = QVBoxLayout(cell)
            lay.setContentsMargins(2, 2, 2, 2)
            pics = QHBoxLayout()
            for pic in (synth, train):
                lab = QLabel()
                lab.setPixmap(picture_pixmap(pic, 88))
                pics.addWidget(lab)
            lay.addLayout(pics)
            cap = QLabel(caption)
            cap.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lay.addWidget(cap)
            self.pairs_layout.addWidget(cell)

    def _show_fid(self, fid: dict) -> None:
        self.fid_table.setRowCount(0)
        self.fid_table.setVisible(bool(fid.get("available")))
        if not fid.get("available"):
            self.fid_note.setText(fid.get("note", ""))
            return
        for dim, v in fid.get("values", {}).items():
            row = self.fid_table.rowCount()
            self.fid_table.insertRow(row)
            fid, ref = ("not measured" if v.get(k) is None else f"{v[k]:.3f}" for k in ("fid", "real_vs_real"))
            for col, text in enumerate([f"FID-{dim}", v["block"], fid, ref]):
                self.fid_table.setItem(row, col, QTableWidgetItem(text))
        self.fid_note.setText(f"weights {Path(fid['weights']).name}, sha256 {fid['sha256'][:16]}…; "
                              "each depth has its own scale — compare within a row")

    def open_report(self) -> None:
        if self.result and self.result.get("report"):
            path = self.result["report"]
            if not QDesktopServices.openUrl(QUrl.fromLocalFile(path)):
                self.status.setText("No browser could be started to open the report: copy its path and open it "
                                    "in a browser.")

    def copy_report_path(self) -> None:
        if self.result and self.result.get("report"):
            QGuiApplication.clipboard().setText(self.result["report"])
            self.status.setText("Report path copied to the clipboard.")
