"""How many of this machine's GPUs a run uses: one, or all of them, one process each under Accelerate's launcher
(engine/runtime/launched_job.py). Offered only on a machine with several GPUs."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QWidget

from engine.runtime import launch

SHARED_OUT = ("All GPUs: the run is shared out over them, one process each; training takes part of every batch on "
              "each, generation draws part of the samples on each. The result is one run folder, or one file, as "
              "from one GPU.")


class ProcessesCombo(QComboBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.gpus = launch.local_gpus()  # imports torch: a panel builds this when it is built, not at import
        self.addItem("One GPU", 1)
        if self.offered:
            self.addItem(f"All {self.gpus} GPUs", self.gpus)
        self.setToolTip(SHARED_OUT)

    @property
    def offered(self) -> bool:
        """Whether there is a choice to make: on a machine with one GPU or none there is not."""
        return self.gpus >= 2

    def processes(self) -> int:
        return int(self.currentData())
