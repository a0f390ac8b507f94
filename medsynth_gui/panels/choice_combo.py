"""A combo box over one of the engine's declared settings choices: it lists their labels, in their order,
and reads and writes the value a config takes."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import QSignalBlocker
from PySide6.QtWidgets import QComboBox, QWidget

from engine.settings import Choice


class ChoiceCombo(QComboBox):
    def __init__(self, kind: type[Choice], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.kind = kind
        for label, value in kind.items():
            self.addItem(label, value)

    def value(self) -> str:
        return str(self.currentData())

    def set_value(self, value: str) -> None:
        """Selects `value`; one this setting does not take (a stale saved setting) leaves the choice as it was."""
        index = self.findData(str(value))
        if index >= 0:
            self.setCurrentIndex(index)

    def offer(self, members: Iterable[Choice]) -> None:
        """Lists only `members`, in the declared order (the choices that fit what was loaded), keeping the choice
        when it is still offered, else the first; a changed choice is announced as a user's would be."""
        current, wanted = self.value(), set(members)
        with QSignalBlocker(self):
            self.clear()
            for member in self.kind:
                if member in wanted:
                    self.addItem(member.label, member.value)
            self.setCurrentIndex(max(self.findData(current), 0))
        if self.value() != current:
            self.currentIndexChanged.emit(self.currentIndex())
