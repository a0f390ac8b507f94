"""The Train panel's "start from a pretrained model" fields: a Stable-Diffusion-format folder or single file, LoRA
rank, text encoder, prompt template; the model checked as soon as it is chosen, its faults in words beside it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.config import FINE_TUNE_PRESET, PretrainedConfig, load_preset, spec
from engine.errors import InputError
from medsynth_gui.labels import WrapLabel
from medsynth_gui.panels.ranged import ranged
from medsynth_gui.panels.widgets import path_row

# An engine fault may tell a command-line user which flag to add ("(--pretrained-config)"); the app has fields.
_FLAG = re.compile(r"\s*\(--[a-z][\w-]*\)|\s*--[a-z][\w-]*")
FULL_FINE_TUNE = "whole UNet (full fine-tune)"


def in_words(exc: InputError) -> str:
    """An engine fault as the app shows it: without the command-line flag it may name."""
    return _FLAG.sub("", str(exc))


class PretrainedBox(QWidget):
    """A check that turns fine-tuning on, and below it (shown only then) the model and how it is fine-tuned."""

    model_checked = Signal(int)  # the chosen model's own image size, once it has been found usable
    toggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.use_check = QCheckBox("Start from a pretrained model (Stable Diffusion)")
        self.use_check.setToolTip("Fine-tune a Stable-Diffusion-format model you have on disk with text prompts made "
                                  "from your data, instead of training MedSynth's own network from scratch")
        self.use_check.toggled.connect(self._on_toggled)
        outer.addWidget(self.use_check)
        self.fields = QWidget()
        form = QFormLayout(self.fields)
        form.setContentsMargins(16, 0, 0, 0)
        self._form = form
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("a diffusers model folder, or a .safetensors / .ckpt file")
        self.path_edit.editingFinished.connect(self.check_model)
        folder_btn, file_btn = QPushButton("Folder…"), QPushButton("File…")
        folder_btn.clicked.connect(self._pick_folder)
        file_btn.clicked.connect(self._pick_file)
        form.addRow("Model", path_row(self.path_edit, file_btn, folder_btn))
        self.note = WrapLabel("")  # what the model is, or why it cannot be used
        form.addRow("", self.note)
        self.config_edit = QLineEdit()
        self.config_edit.setPlaceholderText("only if not beside the file")
        self.config_edit.editingFinished.connect(self.check_model)
        config_btn = QPushButton("Folder…")
        config_btn.clicked.connect(self._pick_config)
        self.config_row = path_row(self.config_edit, config_btn)
        self.config_row.setToolTip("A single file holds the weights but not the tokenizer or the settings of its "
                                   "parts: they come from the diffusers folder of the model it was made from")
        form.addRow("Settings from", self.config_row)
        self.trust_check = QCheckBox("I trust this file (a .ckpt can run programs)")
        self.trust_check.setToolTip("A .ckpt file can run programs on this computer when it is opened: only use "
                                    "one from a source you trust. A .safetensors file cannot run anything")
        self.trust_check.toggled.connect(lambda: self.trust_check.setStyleSheet(""))
        form.addRow("", self.trust_check)
        self._build_training(form)
        outer.addWidget(self.fields)
        self._usable = False
        self.set_defaults(load_preset(FINE_TUNE_PRESET).pretrained)
        self._on_toggled(False)
        self._show_kind()

    def _build_training(self, form: QFormLayout) -> None:
        """How the model is fine-tuned, and the prompts its images train with."""
        self.rank_spin = ranged(QSpinBox(), spec("pretrained", "lora_rank"))
        self.rank_spin.setSpecialValueText(FULL_FINE_TUNE)
        self.rank_spin.setToolTip("LoRA trains small adapters (a few MB) on the UNet's attention; higher ranks "
                                  "learn more. The lowest value fine-tunes the whole UNet instead (needs far more "
                                  "memory)")
        form.addRow("LoRA rank", self.rank_spin)
        self.text_check = QCheckBox("Also train the text encoder")
        form.addRow("", self.text_check)
        self.template_edit = QLineEdit()
        self.template_edit.setPlaceholderText("chest x-ray, {class}")
        self.template_edit.setToolTip("How a class name from labels.csv becomes a prompt: {class} is replaced by "
                                      "the name. A prompts.csv beside the images gives each image its own prompt")
        form.addRow("Prompt template", self.template_edit)
        self.prompt_edit = QLineEdit()
        self.prompt_edit.setPlaceholderText("used when the data has no classes")
        self.prompt_edit.setToolTip("One prompt for every image, for data with neither classes nor a prompts.csv")
        form.addRow("Prompt for all", self.prompt_edit)

    # -- state ----------------------------------------------------------------------------
    def set_defaults(self, p: PretrainedConfig) -> None:
        self.rank_spin.setValue(p.lora_rank)
        self.text_check.setChecked(p.train_text_encoder)
        self.template_edit.setText(p.prompt_template)
        self.prompt_edit.setText(p.prompt)

    @property
    def used(self) -> bool:
        return self.use_check.isChecked()

    @property
    def path(self) -> str:
        return self.path_edit.text().strip()

    def is_pickle(self) -> bool:
        return Path(self.path).suffix.lower() == ".ckpt"

    def is_single_file(self) -> bool:
        return Path(self.path).suffix.lower() in (".safetensors", ".ckpt")

    def pretrained(self, trusted: bool | None = None) -> PretrainedConfig:
        return PretrainedConfig(path=self.path, config_folder=self.config_edit.text().strip(),
                                lora_rank=self.rank_spin.value(), train_text_encoder=self.text_check.isChecked(),
                                prompt_template=self.template_edit.text(), prompt=self.prompt_edit.text(),
                                trust_pickle=self.trust_check.isChecked() if trusted is None else trusted)

    def overrides(self) -> dict[str, Any]:
        """The Train panel's override fields for [pretrained]; all None (the preset's) when fine-tuning is off."""
        names = ("from_pretrained", "pretrained_config", "lora", "train_text_encoder", "prompt_template", "prompt",
                 "trust_pickle")
        if not self.used:
            return dict.fromkeys(names)
        p = self.pretrained()
        return dict(zip(names, (p.path, p.config_folder, p.lora_rank, p.train_text_encoder,
                                p.prompt_template or "{class}", p.prompt, p.trust_pickle and self.is_pickle())))

    def fault(self) -> str:
        """Why a run cannot start from these fields yet, in words; "" when it can."""
        if not self.used:
            return ""
        # Said beside the field too: on a short screen the panel's error line lies below the fold.
        if not self.path:
            self._say("Choose the model to start from.", fault=True)
            return "Choose the pretrained model: a diffusers folder, or a .safetensors / .ckpt file."
        if self.is_pickle() and not self.trust_check.isChecked():
            self.trust_check.setStyleSheet("color: #ff6b6b;")  # not bold: it would no longer fit
            return (f"{Path(self.path).name} is a .ckpt file, which can run programs when it is opened: tick "
                    f"\"I trust this file\" to use it, or convert it to .safetensors.")
        if not self._usable:
            self.check_model()
        if not self._usable:
            return self.note.text() or "The pretrained model cannot be used."
        return ""

    def widgets(self) -> tuple[QWidget, ...]:
        """What is usable only while no run is going."""
        return (self.use_check, self.fields)

    def remembered(self) -> dict[str, tuple[Callable[[], Any], Callable[[Any], None], type]]:
        """The fields remembered between starts of the app (not the trust in a file: asked each time)."""
        return {
            "pretrained/path": (self.path_edit.text, self._set_path, str),
            "pretrained/config_folder": (self.config_edit.text, self.config_edit.setText, str),
            "pretrained/lora_rank": (self.rank_spin.value, self.rank_spin.setValue, int),
            "pretrained/train_text_encoder": (self.text_check.isChecked, self.text_check.setChecked, bool),
            "pretrained/prompt_template": (self.template_edit.text, self.template_edit.setText, str),
            "pretrained/prompt": (self.prompt_edit.text, self.prompt_edit.setText, str),
            # Last: turning fine-tuning on checks the model the fields above name.
            "pretrained/use": (self.use_check.isChecked, self.use_check.setChecked, bool),
        }

    # -- the model ------------------------------------------------------------------------
    def set_model(self, path: str, config_folder: str | None = None) -> None:
        """Choose a model as the pickers do: fine-tuning turns on and the model is checked at once."""
        if config_folder is not None:
            self.config_edit.setText(config_folder)
        self._set_path(path)
        self.use_check.setChecked(True)
        self.check_model()

    def _set_path(self, path: str) -> None:
        if path != self.path_edit.text():
            self.trust_check.setChecked(False)  # trust was given to one file, not to whatever comes next
        self.path_edit.setText(path)
        self._show_kind()

    def _show_kind(self) -> None:
        self._form.setRowVisible(self.config_row, self.is_single_file())
        self._form.setRowVisible(self.trust_check, self.is_pickle())

    def check_model(self) -> None:
        """Find the model and read its own image size from its configs (no weights load); its fault beside it."""
        self._show_kind()
        self._usable = False
        if not self.path:
            self._say("")
            return
        from engine.models import stable_diffusion as sd  # torch: loaded when first needed

        try:
            # Reading the configs runs nothing from the file, so a .ckpt is checked before it is trusted.
            cfg = self.pretrained(trusted=True)
            source = sd.find_source(cfg)
            size = sd.native_size(cfg)
        except InputError as exc:
            self._say(in_words(exc), fault=True)
            return
        self._usable = True
        kind = "single file" if source.single_file else "diffusers folder"
        beside = f", settings from {source.folder.name}/" if source.single_file else ""
        self._say(f"Stable Diffusion model ({kind}{beside}), made for {size} px images")
        self.model_checked.emit(size)

    def _say(self, text: str, fault: bool = False) -> None:
        self.note.setText(text)
        self.note.setStyleSheet("color: #ff6b6b;" if fault else "color: #999;")
        self.note.setVisible(bool(text))

    def _on_toggled(self, on: bool) -> None:
        self.fields.setVisible(on)
        self.toggled.emit(on)
        if on and self.path and not self._usable:
            self.check_model()

    def _pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Pretrained model folder (diffusers)")
        if path:
            self.set_model(path)

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Pretrained model file", "",
                                              "Stable Diffusion checkpoints (*.safetensors *.ckpt);;All files (*)")
        if path:
            self.set_model(path)

    def _pick_config(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "The model's diffusers folder (its settings and tokenizer)")
        if path:
            self.config_edit.setText(path)
            self.check_model()
