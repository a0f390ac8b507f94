"""A combo box over one of the engine's declared settings choices: it lists their labels, in their order,
and reads and writes the value a config takes."""

from __future__ import annotations

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
