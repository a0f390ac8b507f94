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
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QStackedWidget, QVBoxLayout, QWidget

from engine.errors import InputError
from engine.evaluation import reader_session, reader_summary
from engine.evaluation import reader_study as rs
from medsynth_gui.reader_reading import VERDICT_TEXT, ReadingPage
from medsynth_gui.reader_start import StartPage
from medsynth_gui.reader_summary import SummaryPage


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
    def _build_start(self) -> StartPage:
        page = StartPage()
        page.start_clicked.connect(self._start_clicked)
        page.create_clicked.connect(self._create_clicked)
        page.summary_clicked.connect(self._summary_clicked)
        # The page's fields, under the names the tests read them by.
        self.study_edit, self.reader_edit, self.start_button = page.study_edit, page.reader_edit, page.start_button
        self.real_edit, self.synth_edit, self.out_edit, self.key_edit = (page.real_edit, page.synth_edit,
                                                                         page.out_edit, page.key_edit)
        self.n_real_spin, self.n_synth_spin, self.seed_spin = page.n_real_spin, page.n_synth_spin, page.seed_spin
        self.create_button, self.summary_button, self.message = page.create_button, page.summary_button, page.message
        return page

    def _build_reading(self) -> ReadingPage:
        page = ReadingPage()
        page.verdict.connect(self.answer)
        page.back_button.clicked.connect(self.previous)
        page.stop_button.clicked.connect(self.stop)
        self.progress, self.previous_note, self.viewer = page.progress, page.previous_note, page.viewer
        self.back_button, self.stop_button = page.back_button, page.stop_button
        self.ratings, self._rating_labels = page.ratings, page.rating_labels
        self.verdict_buttons, self.shortcuts = page.verdict_buttons, page.shortcuts
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
        self.start_page.show_created(made)
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
        self.reading_page.neutral_focus()
        self._shown_at = time.monotonic()

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
