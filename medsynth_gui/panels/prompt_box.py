"""The Generate panel's prompt fields for a model fine-tuned from text: a prompt with its history and a negative
prompt. The history offers, most recent first, what the user asked before, then the prompts the model was trained
on and the prompts its classes stand for."""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QComboBox, QLineEdit, QSizePolicy

from engine.data.prompts import class_prompt

HISTORY_KEY = "generate/prompt_history"
# Enough to find last week's prompts again; a longer list is scrolled past, not read.
HISTORY_LENGTH = 30


def history() -> list[str]:
    """The prompts the user generated from, most recent first."""
    value = QSettings().value(HISTORY_KEY, [])
    if isinstance(value, str):  # QSettings gives a one-item list back as its item
        value = [value]
    return [str(v) for v in value or [] if str(v).strip()]


def remember(prompt: str) -> None:
    prompt = prompt.strip()
    if prompt:
        QSettings().setValue(HISTORY_KEY, [prompt, *[p for p in history() if p != prompt]][:HISTORY_LENGTH])


class PromptCombo(QComboBox):
    """An editable prompt with the history and the model's own prompts to pick from."""

    def __init__(self) -> None:
        super().__init__()
        self.setEditable(True)
        self.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)  # the history is written when a run starts
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.lineEdit().setPlaceholderText("what to generate, e.g. chest x-ray, pneumonia")
        self.setToolTip("Empty: each sample gets the prompt of its class (the Class field below)")
        self._offered: tuple[list[str], list[str], str] = ([], [], "")

    def offer(self, trained: list[str], class_names: list[str], template: str) -> None:
        """The choices for this model; what is typed stays."""
        self._offered = (trained, class_names, template)
        text = self.currentText()
        made = [class_prompt(template, name) for name in class_names] if "{class}" in template else []
        self.clear()
        seen: set[str] = set()
        for p in [*history(), *trained, *made]:
            if p not in seen:
                seen.add(p)
                self.addItem(p)
        self.setCurrentIndex(-1)
        self.setEditText(text)

    def remember(self) -> None:
        """The typed prompt into the history, and to the top of the choices."""
        remember(self.text())
        self.offer(*self._offered)

    def text(self) -> str:
        return self.currentText().strip()


def negative_edit() -> QLineEdit:
    edit = QLineEdit()
    edit.setPlaceholderText("optional: what the images should not show")
    edit.setToolTip("Guidance steers away from this prompt instead of from an empty one")
    return edit
