"""Reader study: one blinded item at a time, Real / Fake / Unsure (R / F / U), optional 1-5 ratings, a summary.

The widget holds an engine `Session` and only ever asks it for blind items and
pixels, so nothing that could name the source (file, index, seed, truth) reaches a
label: blinding is a property of what the widget is given, not of what it hides.
The study folder holds no answer key; only the organiser's Summary reads it. While
reading, the viewer shows every item with the study's one display window and no
crosshair, W/L numbers or value readout, and after each answer nothing on the rating
or verdict buttons (focus, hover, pressed) is carried to the next item.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from engine.errors import InputError
from engine.evaluation import reader_session, reader_summary
from engine.evaluation import reader_study as rs
from medsynth_gui.labels import HINT_STYLE, ElidedLabel, WrapLabel
from medsynth_gui.panels.widgets import path_row
from medsynth_gui.rating_row import RatingRow
from medsynth_gui.reader_summary import SummaryPage
from medsynth_gui.viewer import Viewer

RATING_HELP = {
    "realism": ("Realism", "How real does the image look? 1 = clearly artificial … 5 = indistinguishable from a real "
                           "scan"),
    "anatomy": ("Anatomy", "Anatomical correctness: 1 = impossible anatomy … 5 = fully plausible anatomy"),
    "consistency": ("Slice consistency", "Do neighbouring slices fit together? 1 = jumps and seams … 5 = seamless "
                                         "in all three views"),
}
VERDICT_TEXT = {"real": "Real", "fake": "Fake", "unsure": "Unsure"}


class ReaderStudyWidget(QWidget):
    """Start page (open or create a study) → reading page → done page; Summary from start or done."""

    failed = Signal(str)  # an error, already shown in the widget's message line
    finished = Signal(str)  # the reader has answered every item
    reading = Signal(bool)  # True while items are being read: the window around must then show nothing telling

    def __init__(self, parent: QWidget | None = None, study: str | Path | None = None, reader: str = "") -> None:
        super().__init__(parent)
        self.session: reader_session.Session | None = None
        self.current: reader_session.BlindItem | None = None
        self._shown_at = 0.0
        self.stack = QStackedWidget()
        self.start_page = self._build_start()
        self.reading_page = self._build_reading()
        self.done_page = self._build_done()
        self.summary_page = SummaryPage()
        self.summary_page.refresh.connect(lambda: self.show_summary(self._summary_study, self._summary_key))
        self.summary_page.back.connect(self.stop)
        self._summary_study: str | Path | None = None
        self._summary_key: str | Path | None = None
        # The summary's tables, under the names the tests read them by.
        self.figures_table, self.agreement_table = self.summary_page.figures_table, self.summary_page.agreement_table
        self.convention = self.summary_page.convention
        for page in (self.start_page, self.reading_page, self.done_page, self.summary_page):
            self.stack.addWidget(page)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.stack)
        self.stack.currentChanged.connect(lambda _i: self.reading.emit(self.stack.currentWidget() is self.reading_page))
        if study is not None:
            self.study_edit.setText(str(study))
        self.reader_edit.setText(reader)

    # -- pages ---------------------------------------------------------------------------------------------------
    def _build_start(self) -> QWidget:  # noqa: PLR0915 — too long; to be split (issue 14)
        page = QWidget()
        outer = QHBoxLayout(page)
        col = QVBoxLayout()
        outer.addStretch(1)
        outer.addLayout(col, 3)
        outer.addStretch(1)
        col.addStretch(1)
        title = QLabel("<h2>Reader study</h2><p>Judge images one at a time without knowing where they came from: "
                       "real or synthetic? Answers are saved as you go; open the study again to carry on.</p>")
        title.setWordWrap(True)
        col.addWidget(title)

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
        self.reader_edit.returnPressed.connect(self._start_clicked)
        form.addRow("Reader", self.reader_edit)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start reading")
        self.start_button.setDefault(True)
        self.start_button.setMinimumHeight(34)
        self.start_button.clicked.connect(self._start_clicked)
        buttons.addWidget(self.start_button)
        buttons.addStretch(1)
        form.addRow("", buttons)
        col.addWidget(open_box)

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
        counts = QHBoxLayout()
        self.n_real_spin = QSpinBox(minimum=1, maximum=100_000, value=25)
        self.n_synth_spin = QSpinBox(minimum=1, maximum=100_000, value=25)
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        for text, spin in (("real", self.n_real_spin), ("synthetic", self.n_synth_spin), ("seed", self.seed_spin)):
            counts.addWidget(spin)
            counts.addWidget(QLabel(text))
            counts.addSpacing(10)
        counts.addStretch(1)
        nform.addRow("Items", counts)
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
        self.create_button.clicked.connect(self._create_clicked)
        self.summary_button = QPushButton("Summary")
        self.summary_button.setToolTip("Figures of every reader so far, from the answer key (never show them to "
                                       "readers mid-study)")
        self.summary_button.clicked.connect(self._summary_clicked)
        crow = QHBoxLayout()
        crow.addWidget(self.create_button)
        crow.addWidget(self.summary_button)
        crow.addStretch(1)
        nform.addRow("", crow)
        col.addWidget(new_box)

        self.message = WrapLabel("")
        col.addWidget(self.message)
        col.addStretch(2)
        return page

    def _build_reading(self) -> QWidget:  # noqa: PLR0915 — too long; to be split (issue 14)
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.setContentsMargins(6, 6, 6, 6)
        top = QHBoxLayout()
        self.progress = QLabel("")
        self.progress.setStyleSheet("font-size: 13pt; font-weight: bold;")
        top.addWidget(self.progress)
        self.previous_note = ElidedLabel("")
        self.previous_note.setStyleSheet(HINT_STYLE)
        top.addWidget(self.previous_note)
        top.addStretch(1)
        self.back_button = QPushButton("← Previous")
        self.back_button.setToolTip("Look at the previous item again and change its answer")
        self.back_button.clicked.connect(self.previous)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Leave the study; answers are saved, and it resumes here next time")
        self.stop_button.clicked.connect(self.stop)
        top.addWidget(self.back_button)
        top.addWidget(self.stop_button)
        lay.addLayout(top)

        # Blind: no crosshair, W/L numbers or value readout; every item gets the study's one window.
        self.viewer = Viewer(blind=True)
        # Items carry no masks (a mask on some items only would give them away): no overlay controls.
        for control in (self.viewer.controls.mask_box, self.viewer.controls.opacity):
            control.hide()
        lay.addWidget(self.viewer, 1)

        bottom = QHBoxLayout()
        bottom.setSpacing(24)
        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(4)
        self.ratings: dict[str, RatingRow] = {}
        self._rating_labels: dict[str, QLabel] = {}
        hint = QLabel("Ratings (optional) — 1 worst … 5 best")
        hint.setStyleSheet(HINT_STYLE)
        grid.addWidget(hint, 0, 0, 1, 2)
        for row, key in enumerate(rs.RATINGS, 1):
            name, help_text = RATING_HELP[key]
            label = QLabel(name)
            label.setToolTip(help_text)
            self.ratings[key] = RatingRow(help_text)
            self._rating_labels[key] = label
            grid.addWidget(label, row, 0)
            grid.addWidget(self.ratings[key], row, 1)
        bottom.addLayout(grid)
        bottom.addStretch(1)
        verdicts = QVBoxLayout()
        buttons = QHBoxLayout()
        buttons.setSpacing(10)
        self.verdict_buttons: dict[str, QPushButton] = {}
        self.shortcuts: dict[str, QShortcut] = {}
        for verdict, key in (("real", "R"), ("fake", "F"), ("unsure", "U")):
            b = QPushButton(f"{VERDICT_TEXT[verdict]}  ({key})")
            b.setMinimumSize(130, 48)
            b.setStyleSheet("font-size: 13pt; font-weight: bold;")
            b.clicked.connect(lambda _=False, v=verdict: self.answer(v))
            self.verdict_buttons[verdict] = b
            buttons.addWidget(b)
            # A window-wide shortcut that lives on the reading page: it acts only while this page
            # is shown, and a text field elsewhere in the window still gets its letters.
            shortcut = QShortcut(QKeySequence(key), page)
            shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
            shortcut.activated.connect(lambda v=verdict: self.answer(v))
            self.shortcuts[verdict] = shortcut
        verdicts.addStretch(1)
        verdicts.addLayout(buttons)
        keys = QLabel("Is this image real or synthetic? R: real · F: fake · U: unsure")
        keys.setStyleSheet(HINT_STYLE)
        keys.setAlignment(Qt.AlignmentFlag.AlignRight)
        verdicts.addWidget(keys)
        bottom.addLayout(verdicts)
        lay.addLayout(bottom)
        return page

    def _build_done(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.addStretch(1)
        self.done_label = QLabel("")
        self.done_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.done_label)
        row = QHBoxLayout()
        row.addStretch(1)
        # No summary here: it needs the answer key, which the organiser keeps from readers.
        again = QPushButton("Back to start")
        again.clicked.connect(self.stop)
        again.setMinimumSize(160, 36)
        row.addWidget(again)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addStretch(2)
        return page

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

    # -- actions -------------------------------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.message.setStyleSheet("color: #ff7b72;" if error else "color: #8fd18f;")
        self.message.setText(text)
        if error:
            self.failed.emit(text)

    def _start_clicked(self) -> None:
        self.open_study(self.study_edit.text().strip(), self.reader_edit.text().strip())

    def _create_clicked(self) -> None:
        self.new_study(self.real_edit.text().strip(), self.synth_edit.text().strip(), self.out_edit.text().strip(),
                       self.n_real_spin.value(), self.n_synth_spin.value(), self.seed_spin.value(),
                       self.key_edit.text().strip() or None)

    def _forget_filled_key(self) -> None:
        if self._filled_key and self.key_edit.text() == self._filled_key:
            self.key_edit.clear()
        self._filled_key = ""

    def _summary_clicked(self) -> None:
        self.show_summary(self.out_edit.text().strip() or self.study_edit.text().strip(),
                          self.key_edit.text().strip() or None)

    def new_study(self, real: str | Path, synth: str | Path, out: str | Path, n_real: int, n_synth: int,
                  seed: int, key: str | Path | None = None) -> rs.NewStudy | None:
        """Create a study (engine `create_study`), put its folder in the study fields and its key in the key field."""
        if not (str(real) and str(synth) and str(out)):
            self._say("Choose a real file, a synthetic file and a new study folder.", error=True)
            return None
        try:
            made = rs.create_study(Path(real), Path(synth), Path(out), n_real, n_synth, seed, key=key)
        except InputError as exc:
            self._say(str(exc), error=True)
            return None
        self.study_edit.setText(str(made.folder))
        self.out_edit.setText(str(made.folder))
        self.key_edit.setText(str(made.key))
        self._filled_key = str(made.key)
        self._say(f"Study created: {n_real + n_synth} items ({n_real} real, {n_synth} synthetic) in a blinded "
                  f"order. Give readers the study folder only. The answer key is {made.key}: keep it yourself, "
                  "never give it to readers; the summary needs it.")
        return made

    def open_study(self, study: str | Path, reader: str) -> bool:
        """Open `study` for `reader` and show the first unanswered item (or the done page)."""
        if not str(study):
            self._say("Choose a study folder first.", error=True)
            return False
        try:
            self.session = reader_session.Session(study, reader)
        except InputError as exc:
            self._say(str(exc), error=True)
            return False
        self.study_edit.setText(str(self.session.study.folder))
        self.reader_edit.setText(reader)
        self.message.setText("")
        volumes = self.session.spatial_dims == 3
        self.ratings["consistency"].setVisible(volumes)
        self._rating_labels["consistency"].setVisible(volumes)
        self._advance()
        return True

    def _advance(self) -> None:
        assert self.session is not None
        item = self.session.next_item()
        if item is None:
            self._show_done()
        else:
            self._show_item(item)

    def _show_item(self, item: reader_session.BlindItem) -> None:
        assert self.session is not None
        try:
            img = self.session.image(item.id)
        except InputError as exc:
            self.stop()
            self._say(str(exc), error=True)
            return
        self.current = item
        self.viewer.set_image(img.image, affine=img.affine, spacing=img.spacing)
        lo, hi = img.levels
        self.viewer.state.window_level = (hi - lo, (lo + hi) / 2.0)
        self.progress.setText(f"Item {item.number} of {item.total}")
        before = self.session.answers.get(item.id)
        self.previous_note.setText(f"answered before: {VERDICT_TEXT[before.verdict]}" if before else "")
        for key, row in self.ratings.items():
            row.value = getattr(before, key) if before else None
        self.back_button.setEnabled(item.number > 1)
        self.stack.setCurrentWidget(self.reading_page)
        self.viewer.reset_views()
        self._neutral_focus()
        self._shown_at = time.monotonic()

    def _neutral_focus(self) -> None:
        """Leave no trace of the last click on a button: a focus frame, hover or pressed look reads as a choice."""
        buttons = [b for row in self.ratings.values() for b in row.group.buttons()]
        for b in [*buttons, *self.verdict_buttons.values(), self.back_button]:
            b.setDown(False)
            # The pointer is still where the reader clicked; without this the button under it keeps its
            # hover highlight on the next item until the pointer moves off it.
            b.setAttribute(Qt.WidgetAttribute.WA_UnderMouse, False)
            b.clearFocus()
            b.update()
        # The image itself takes the keys: arrows move through slices, R / F / U still answer.
        self.viewer.slice_views[0].setFocus(Qt.FocusReason.OtherFocusReason)

    def _show_done(self) -> None:
        assert self.session is not None
        self.current = None
        self.done_label.setText(f"<h2>All {self.session.total} items answered</h2>"
                                f"<p>Thank you, {self.session.reader}. Your answers are saved.</p>")
        self.stack.setCurrentWidget(self.done_page)
        self.finished.emit(self.session.reader)

    def answer(self, verdict: str) -> bool:
        """Record `verdict` with the chosen ratings for the item on screen, then show the next one."""
        if self.session is None or self.current is None or self.stack.currentWidget() is not self.reading_page:
            return False
        ratings = {k: row.value for k, row in self.ratings.items()}
        if self.session.spatial_dims != 3:
            ratings["consistency"] = None
        try:
            self.session.answer(self.current.id, verdict, seconds=time.monotonic() - self._shown_at, **ratings)
        except (InputError, OSError) as exc:
            # Nothing moves on when an answer could not be saved: the reader must not lose it unseen.
            self.previous_note.setText(f"NOT SAVED: {exc}")
            self.failed.emit(str(exc))
            return False
        self._advance()
        return True

    def previous(self) -> None:
        if self.session is not None and self.current is not None and self.current.number > 1:
            self._show_item(self.session.item_at(self.current.number - 1))

    def stop(self) -> None:
        self.current = None
        self.stack.setCurrentWidget(self.start_page)

    def show_summary(self, study: str | Path | None = None, key: str | Path | None = None) -> bool:
        """Fill and show the Summary page for `study` (default: the open session's study) from its answer key
        (default: beside the study folder)."""
        if study is None or not str(study):
            study = self.session.study.folder if self.session is not None else None
        if study is None:
            self._say("Choose a study folder first.", error=True)
            return False
        try:
            summary = reader_summary.summarise(study, key=key)
        except InputError as exc:
            self.stack.setCurrentWidget(self.start_page)
            self._say(str(exc), error=True)
            return False
        self._summary_study, self._summary_key = study, key
        self.summary_page.show_summary(summary)
        self.stack.setCurrentWidget(self.summary_page)
        return True
