"""The reader study's reading page: one blind item in the viewer, optional ratings, and Real / Fake / Unsure.

The page shows what the study widget gives it and says which verdict was chosen; it reads no study itself.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.evaluation import reader_study as rs
from medsynth_gui.labels import HINT_STYLE, ElidedLabel
from medsynth_gui.rating_row import RatingRow
from medsynth_gui.viewer import Viewer

RATING_HELP = {
    "realism": ("Realism", "How real does the image look? 1 = clearly artificial … 5 = indistinguishable from a real "
                           "scan"),
    "anatomy": ("Anatomy", "Anatomical correctness: 1 = impossible anatomy … 5 = fully plausible anatomy"),
    "consistency": ("Slice consistency", "Do neighbouring slices fit together? 1 = jumps and seams … 5 = seamless "
                                         "in all three views"),
}
VERDICT_TEXT = {"real": "Real", "fake": "Fake", "unsure": "Unsure"}


class ReadingPage(QWidget):
    """Progress and Previous / Stop above the blind viewer; ratings and the verdict buttons below it."""

    verdict = Signal(str)  # "real", "fake" or "unsure", from a button or its key

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(self._build_top())

        # Blind: no crosshair, W/L numbers or value readout; every item gets the study's one window.
        self.viewer = Viewer(blind=True)
        # Items carry no masks (a mask on some items only would give them away): no overlay controls.
        for control in (self.viewer.controls.mask_box, self.viewer.controls.opacity):
            control.hide()
        lay.addWidget(self.viewer, 1)

        bottom = QHBoxLayout()
        bottom.setSpacing(24)
        bottom.addLayout(self._build_ratings())
        bottom.addStretch(1)
        bottom.addLayout(self._build_verdicts())
        lay.addLayout(bottom)

    def _build_top(self) -> QHBoxLayout:
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
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Leave the study; answers are saved, and it resumes here next time")
        top.addWidget(self.back_button)
        top.addWidget(self.stop_button)
        return top

    def _build_ratings(self) -> QGridLayout:
        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(4)
        self.ratings: dict[str, RatingRow] = {}
        self.rating_labels: dict[str, QLabel] = {}
        hint = QLabel("Ratings (optional) — 1 worst … 5 best")
        hint.setStyleSheet(HINT_STYLE)
        grid.addWidget(hint, 0, 0, 1, 2)
        for row, key in enumerate(rs.RATINGS, 1):
            name, help_text = RATING_HELP[key]
            label = QLabel(name)
            label.setToolTip(help_text)
            self.ratings[key] = RatingRow(help_text)
            self.rating_labels[key] = label
            grid.addWidget(label, row, 0)
            grid.addWidget(self.ratings[key], row, 1)
        return grid

    def _build_verdicts(self) -> QVBoxLayout:
        verdicts = QVBoxLayout()
        buttons = QHBoxLayout()
        buttons.setSpacing(10)
        self.verdict_buttons: dict[str, QPushButton] = {}
        self.shortcuts: dict[str, QShortcut] = {}
        for verdict, key in (("real", "R"), ("fake", "F"), ("unsure", "U")):
            b = QPushButton(f"{VERDICT_TEXT[verdict]}  ({key})")
            b.setMinimumSize(130, 48)
            b.setStyleSheet("font-size: 13pt; font-weight: bold;")
            b.clicked.connect(lambda _=False, v=verdict: self.verdict.emit(v))
            self.verdict_buttons[verdict] = b
            buttons.addWidget(b)
            # A window-wide shortcut that lives on the reading page: it acts only while this page
            # is shown, and a text field elsewhere in the window still gets its letters.
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
            shortcut.activated.connect(lambda v=verdict: self.verdict.emit(v))
            self.shortcuts[verdict] = shortcut
        verdicts.addStretch(1)
        verdicts.addLayout(buttons)
        keys = QLabel("Is this image real or synthetic? R: real · F: fake · U: unsure")
        keys.setStyleSheet(HINT_STYLE)
        keys.setAlignment(Qt.AlignmentFlag.AlignRight)
        verdicts.addWidget(keys)
        return verdicts

    def neutral_focus(self) -> None:
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
