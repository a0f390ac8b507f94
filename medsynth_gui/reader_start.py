"""The reader study's start page: a reader opens a study; an organiser creates one or asks for its summary.

The page only gathers paths, names and counts; the study widget acts on them (engine.evaluation.reader_study).
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.evaluation import reader_study as rs
from medsynth_gui.labels import WrapLabel
from medsynth_gui.panels.widgets import path_row


class StartPage(QWidget):
    """Read a study (folder, reader) or organise one (real and synthetic files, counts, folder, answer key)."""

    start_clicked = Signal()
    create_clicked = Signal()
    summary_clicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        outer = QHBoxLayout(self)
        col = QVBoxLayout()
        outer.addStretch(1)
        outer.addLayout(col, 3)
        outer.addStretch(1)
        col.addStretch(1)
        title = QLabel("<h2>Reader study</h2><p>Judge images one at a time without knowing where they came from: "
                       "real or synthetic? Answers are saved as you go; open the study again to carry on.</p>")
        title.setWordWrap(True)
        col.addWidget(title)
        col.addWidget(self._build_read_box())
        col.addWidget(self._build_organise_box())
        self.message = WrapLabel("")
        col.addWidget(self.message)
        col.addStretch(2)

    def _build_read_box(self) -> QGroupBox:
        open_box = QGroupBox("Read a study")
        form = QFormLayout(open_box)
        self.study_edit = QLineEdit()
        self.study_edit.setPlaceholderText("a study folder (holds study.json)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._pick_dir(self.study_edit, "Study folder"))
        form.addRow("Study folder", path_row(self.study_edit, browse))
        self.study_edit.setToolTip("The folder the organiser gave you")
        self.reader_edit = QLineEdit()
        self.reader_edit.setPlaceholderText("your name or initials, e.g. jdoe")
        self.reader_edit.returnPressed.connect(self.start_clicked)
        form.addRow("Reader", self.reader_edit)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start reading")
        self.start_button.setDefault(True)
        self.start_button.setMinimumHeight(34)
        self.start_button.clicked.connect(self.start_clicked)
        buttons.addWidget(self.start_button)
        buttons.addStretch(1)
        form.addRow("", buttons)
        return open_box

    def _build_organise_box(self) -> QGroupBox:
        new_box = QGroupBox("Organise a study: create one, see its results")
        nform = QFormLayout(new_box)
        self.real_edit = QLineEdit()
        self.real_edit.setPlaceholderText("MedSynth HDF5 of real samples")
        rb = QPushButton("Browse…")
        rb.clicked.connect(lambda: self._pick_h5(self.real_edit))
        nform.addRow("Real file", path_row(self.real_edit, rb))
        self.synth_edit = QLineEdit()
        self.synth_edit.setPlaceholderText("MedSynth HDF5 of synthetic samples")
        sb = QPushButton("Browse…")
        sb.clicked.connect(lambda: self._pick_h5(self.synth_edit))
        nform.addRow("Synthetic file", path_row(self.synth_edit, sb))
        nform.addRow("Items", self._build_counts())
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("new and empty to create a study; the one to summarise")
        self.out_edit.setToolTip("What readers are given: the items and their answers, no answer key")
        ob = QPushButton("Browse…")
        ob.clicked.connect(lambda: self._pick_dir(self.out_edit, "Study folder"))
        nform.addRow("Study folder", path_row(self.out_edit, ob))
        self.key_edit = QLineEdit()
        self.key_edit.setPlaceholderText(f"empty: beside the study folder, as <folder>{rs.KEY_SUFFIX}")
        self.key_edit.setToolTip("Which item is real and where it came from. Keep it yourself, outside the study "
                                 "folder; the summary needs it, readers must never get it.")
        kb = QPushButton("Browse…")
        kb.clicked.connect(self._pick_key)
        nform.addRow("Answer key", path_row(self.key_edit, kb))
        # The key filled in by Create belongs to that study: another folder starts with the default again.
        self._filled_key = ""
        self.out_edit.textChanged.connect(self._forget_filled_key)
        self.create_button = QPushButton("Create study")
        self.create_button.clicked.connect(self.create_clicked)
        self.summary_button = QPushButton("Summary")
        self.summary_button.setToolTip("Figures of every reader so far, from the answer key (never show them to "
                                       "readers mid-study)")
        self.summary_button.clicked.connect(self.summary_clicked)
        crow = QHBoxLayout()
        crow.addWidget(self.create_button)
        crow.addWidget(self.summary_button)
        crow.addStretch(1)
        nform.addRow("", crow)
        return new_box

    def _build_counts(self) -> QHBoxLayout:
        counts = QHBoxLayout()
        self.n_real_spin = QSpinBox(minimum=1, maximum=100_000, value=25)
        self.n_synth_spin = QSpinBox(minimum=1, maximum=100_000, value=25)
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        for text, spin in (("real", self.n_real_spin), ("synthetic", self.n_synth_spin), ("seed", self.seed_spin)):
            counts.addWidget(spin)
            counts.addWidget(QLabel(text))
            counts.addSpacing(10)
        counts.addStretch(1)
        return counts

    def show_created(self, made: rs.NewStudy) -> None:
        """Put a new study's folder in the study fields and its key in the key field."""
        self.study_edit.setText(str(made.folder))
        self.out_edit.setText(str(made.folder))
        self.key_edit.setText(str(made.key))
        self._filled_key = str(made.key)

    def _forget_filled_key(self) -> None:
        if self._filled_key and self.key_edit.text() == self._filled_key:
            self.key_edit.clear()
        self._filled_key = ""

    # -- file pickers --------------------------------------------------------------------------------------------
    def _pick_dir(self, edit: QLineEdit, caption: str) -> None:
        path = QFileDialog.getExistingDirectory(self, caption, edit.text())
        if path:
            edit.setText(path)

    def _pick_key(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Answer key", self.key_edit.text(),
                                              f"Answer key (*{rs.KEY_SUFFIX} *.json)")
        if path:
            self.key_edit.setText(path)

    def _pick_h5(self, edit: QLineEdit) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "MedSynth file", edit.text(), "MedSynth HDF5 (*.h5 *.hdf5)")
        if path:
            edit.setText(path)
