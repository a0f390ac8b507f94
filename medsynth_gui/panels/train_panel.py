"""Train panel: pick data and settings, start/stop/resume, watch loss, previews, ETA and device."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.config import (
    FINE_TUNE_PRESET,
    batch_for,
    load_preset,
 preset_description,
    preset_names,
    resolve,
    size_multiple,
    spec,
)
from engine.errors import InputError
from engine.jobs import Checkpoint, DataSummary, Done, Loss, Message, Preview, Progress
from engine.runtime.devices import pick_device
from engine.runtime.estimate import Estimate, device_warning, format_duration
from engine.settings import Device, LossKind, MaskMode, Objective, overrides
from engine.training.run_dir import RunDir
from medsynth_gui.images import to_pixmap
from medsynth_gui.labels import ElidedLabel, WrapLabel
from medsynth_gui.panels.choice_combo import ChoiceCombo
from medsynth_gui.panels.job_panel import JobPanel
from medsynth_gui.panels.loss_plot import LossPlot
from medsynth_gui.panels.pretrained_box import PretrainedBox, in_words
from medsynth_gui.panels.processes_combo import ProcessesCombo
from medsynth_gui.panels.ranged import ranged
from medsynth_gui.panels.widgets import path_row

if TYPE_CHECKING:
    from engine.training.train import TrainJob


def format_eta(seconds: float) -> str:
    """Time left as a duration: "13:47" reads like a clock time."""
    if not math.isfinite(seconds) or seconds < 0:
        return "estimating time left…"
    if seconds < 60:
        return "less than a minute left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min left"
    h, m = divmod(minutes, 60)
    return f"{h} h {m:02d} min left"


class TrainPanel(JobPanel):
    run_finished = Signal(str)  # run directory, when a run ends with a checkpoint

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Start", parent, one_line_status=True)
        self.runner.losses.connect(self._on_losses)
        self._t_start = 0.0
        self._step_start = 0
        self._auto_size = 0  # the image size a preset or a chosen model set, until the user changes it
        self._own_preset = "demo"  # the last preset that trains MedSynth's own network
        self._build()
        self._apply_preset("demo")
        self.restore_settings()

    # -- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        setup = QGroupBox("Training run")
        form = QFormLayout(setup)
        self._build_paths(form)
        self._build_settings(form)
        outer.addWidget(setup)
        outer.addLayout(self._build_buttons())

        self.progress.setFormat("%v / %m steps")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.progress)
        self.data_summary = WrapLabel()  # what the data holds and the model size, kept while training runs
        outer.addWidget(self.data_summary)
        self.estimate = WrapLabel()  # the run's measured duration; a GPU preset's warning on a CPU
        outer.addWidget(self.estimate)
        outer.addWidget(self.status)
        outer.addWidget(self.error)

        self.plot = LossPlot()
        outer.addWidget(self.plot, 1)
        outer.addWidget(self._build_previews())
        outer.addWidget(self.preview_caption)
        self._reset_plot()
        self.enable_while(idle=(self.resume_btn, self.data_edit, self.run_edit, self.preset, self.steps_spin,
                                self.ae_steps_spin,
                                self.batch_spin, self.lr_spin, self.loss_combo, self.objective_combo, self.size_spin,
                                self.mask_combo,
                                self.classes_check, self.device_combo, self.gpus_combo,
                                *self.pretrained.widgets()),
                          running=(self.sample_btn, self.save_btn))

    def _build_paths(self, form: QFormLayout) -> None:
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("npz, NIfTI, MedSynth .h5, or a folder (images/ + masks/, MSD)")
        file_btn, folder_btn = QPushButton("File…"), QPushButton("Folder…")
        file_btn.clicked.connect(self._pick_data_file)
        folder_btn.clicked.connect(self._pick_data_folder)
        form.addRow("Data", path_row(self.data_edit, file_btn, folder_btn))
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("folder for checkpoints and the loss log")
        run_btn = QPushButton("Browse…")
        run_btn.clicked.connect(self._pick_run)
        form.addRow("Run folder", path_row(self.run_edit, run_btn))
        self.pretrained = PretrainedBox()
        self.pretrained.toggled.connect(self._on_fine_tune)
        self.pretrained.model_checked.connect(self._on_model)
        form.addRow(self.pretrained)

    def _build_settings(self, form: QFormLayout) -> None:
        """The preset and the fields it fills."""
        self.preset = QComboBox()
        self.preset.addItems(preset_names())
        for i, name in enumerate(preset_names()):
            self.preset.setItemData(i, preset_description(name), Qt.ItemDataRole.ToolTipRole)
        self.preset.currentTextChanged.connect(self._apply_preset)
        form.addRow("Preset", self.preset)
        self.preset_note = WrapLabel("")
        self.preset_note.setStyleSheet("color: #999;")
        form.addRow("", self.preset_note)
        self.steps_spin = ranged(QSpinBox(maximum=10_000_000, singleStep=100), spec("train", "steps"))
        self.batch_spin = ranged(QSpinBox(maximum=4096), spec("train", "batch"))
        self.lr_spin = ranged(QDoubleSpinBox(decimals=6, singleStep=1e-4), spec("train", "lr"))
        self.loss_combo = ChoiceCombo(LossKind)
        self.objective_combo = ChoiceCombo(Objective)
        self.objective_combo.setToolTip("Flow matching samples well in 5-20 steps (Euler); noise and velocity "
                                        "models need 25 or more (DPM-Solver++)")
        self.size_spin = ranged(QSpinBox(singleStep=4), spec("model", "image_size"))
        self.classes_check = QCheckBox("class-conditional (when the data has labels)")
        self.mask_combo = ChoiceCombo(MaskMode)
        self.device_combo = ChoiceCombo(Device)
        self.gpus_combo = ProcessesCombo()
        # Shown for latent presets only: how long stage 1 trains before the diffusion model starts.
        self.ae_steps_spin = ranged(QSpinBox(maximum=10_000_000, singleStep=100), spec("autoencoder", "steps"))
        self.ae_steps_spin.setToolTip("Stage 1 of a latent preset: the autoencoder's training steps, before the "
                                      "diffusion model's")
        self._form = form
        form.addRow("Steps", self.steps_spin)
        form.addRow("Autoencoder steps", self.ae_steps_spin)
        form.addRow("Batch", self.batch_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Loss", self.loss_combo)
        form.addRow("Objective", self.objective_combo)
        form.addRow("Image size (px)", self.size_spin)
        form.addRow("Masks", self.mask_combo)
        form.addRow("", self.classes_check)
        form.addRow("Device", self.device_combo)
        form.addRow("GPUs", self.gpus_combo)
        form.setRowVisible(self.gpus_combo, self.gpus_combo.offered)

    def _build_buttons(self) -> QHBoxLayout:
        buttons = QHBoxLayout()
        self.resume_btn = QPushButton("Resume")
        self.sample_btn = QPushButton("Preview now")
        self.save_btn = QPushButton("Save now")
        self.resume_btn.clicked.connect(self.resume)
        self.sample_btn.clicked.connect(self.runner.preview_now)
        self.save_btn.clicked.connect(self.runner.save_now)
        for b in (self.run_btn, self.stop_btn, self.resume_btn, self.sample_btn, self.save_btn):
            buttons.addWidget(b)
        return buttons

    def _build_previews(self) -> QGroupBox:
        previews = QGroupBox("Previews (EMA weights, 25 sampler steps)")
        grid = QGridLayout(previews)
        self.preview_labels = [QLabel() for _ in range(8)]
        for i, lab in enumerate(self.preview_labels):
            lab.setFixedSize(72, 72)
            lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lab.setStyleSheet("background: #111; border: 1px solid #333;")
            grid.addWidget(lab, i // 4, i % 4)
        self.preview_caption = ElidedLabel("—")
        self._captions = {"preview": "", "checkpoint": ""}
        return previews

    # -- settings -----------------------------------------------------------------------
    def _apply_preset(self, name: str) -> None:
        if not name:
            return
        cfg = load_preset(name)
        self.preset.blockSignals(True)
        self.preset.setCurrentText(name)
        self.preset.blockSignals(False)
        note = preset_description(name)
        self.preset_note.setText(note)
        self.preset.setToolTip(note)
        self.steps_spin.setValue(cfg.train.steps)
        self.ae_steps_spin.setValue(cfg.autoencoder.steps)
        self._form.setRowVisible(self.ae_steps_spin, cfg.autoencoder.enabled)
        self.batch_spin.setValue(batch_for(cfg.train, pick_device("auto")))
        self._show_estimate(device_warning(name, pick_device("auto")), warning=True)
        self.lr_spin.setValue(cfg.train.lr)
        self.loss_combo.set_value(cfg.train.loss)
        self.objective_combo.set_value(cfg.train.objective)
        self.size_spin.setValue(cfg.model.image_size)
        self._auto_size = cfg.model.image_size
        self.size_spin.setSingleStep(size_multiple(cfg))  # the arrows step through sizes the preset's networks take
        self.mask_combo.set_value(cfg.data.mask_mode)
        self.classes_check.setChecked(cfg.data.class_conditional)
        self.device_combo.set_value(cfg.train.device)
        # The fine-tune preset is the one that starts from a pretrained model; any other trains MedSynth's own.
        if name == FINE_TUNE_PRESET:
            self.pretrained.set_defaults(cfg.pretrained)
        else:
            self._own_preset = name
        self.pretrained.use_check.setChecked(name == FINE_TUNE_PRESET)

    def _on_fine_tune(self, on: bool) -> None:
        """Fine-tuning a pretrained model: its preset, and none of the fields its own model decides."""
        if on and self.preset.currentText() != FINE_TUNE_PRESET:
            self.preset.setCurrentText(FINE_TUNE_PRESET)
        elif not on and self.preset.currentText() == FINE_TUNE_PRESET:
            self.preset.setCurrentText(self._own_preset)  # back to the preset the user had before
        # The model's own noise schedule sets the objective; it makes images from text, not masks.
        for w in (self.objective_combo, self.mask_combo, self.classes_check):
            self._form.setRowVisible(w, not on)

    def _on_model(self, size: int) -> None:
        """A usable model was chosen: the fine-tune preset, at the model's own image size unless the user set one."""
        if self.preset.currentText() != FINE_TUNE_PRESET:
            self.preset.setCurrentText(FINE_TUNE_PRESET)
        if self.size_spin.value() == self._auto_size:
            self.size_spin.setValue(size)
            self._auto_size = size
        self.size_spin.setSingleStep(8)  # the VAE's factor; the model's own levels are checked when it loads

    def _fields(self) -> dict[str, tuple[Callable[[], Any], Callable[[Any], None], type]]:
        """The fields remembered between starts of the app: key → (read, write, type)."""
        return {
            "data": (self.data_edit.text, self.data_edit.setText, str),
            "run": (self.run_edit.text, self.run_edit.setText, str),
            "steps": (self.steps_spin.value, self.steps_spin.setValue, int),
            "autoencoder_steps": (self.ae_steps_spin.value, self.ae_steps_spin.setValue, int),
            "batch": (self.batch_spin.value, self.batch_spin.setValue, int),
            "lr": (self.lr_spin.value, self.lr_spin.setValue, float),
            "loss": (self.loss_combo.value, self.loss_combo.set_value, str),
            "objective": (self.objective_combo.value, self.objective_combo.set_value, str),
            "image_size": (self.size_spin.value, self.size_spin.setValue, int),
            "masks": (self.mask_combo.value, self.mask_combo.set_value, str),
            "classes": (self.classes_check.isChecked, self.classes_check.setChecked, bool),
            "device": (self.device_combo.value, self.device_combo.set_value, str),
            **self.pretrained.remembered(),
        }

    def save_settings(self) -> None:
        settings = QSettings()
        settings.setValue("train/preset", self.preset.currentText())
        for key, (read, _, _) in self._fields().items():
            settings.setValue(f"train/{key}", read())

    def restore_settings(self) -> None:
        """The fields as the user left them; the preset first, since choosing it fills the others."""
        settings = QSettings()
        preset = settings.value("train/preset", "", type=str)
        if preset in preset_names():
            self._apply_preset(preset)
        for key, (_, write, kind) in self._fields().items():
            if settings.contains(f"train/{key}"):
                write(settings.value(f"train/{key}", type=kind))
        if self.pretrained.used:
            QTimer.singleShot(0, self.pretrained.check_model)  # after the window shows: it loads torch

    def config(self) -> Any:
        fields = overrides(data=self.data_edit.text().strip(), size=self.size_spin.value(),
                           steps=self.steps_spin.value(), batch=self.batch_spin.value(), lr=self.lr_spin.value(),
                           autoencoder_steps=self.ae_steps_spin.value() if self._latent() else None,
                           loss=self.loss_combo.value(), objective=self.objective_combo.value(),
                           device=self.device_combo.value(),
                           mask_mode=self.mask_combo.value(), class_conditional=self.classes_check.isChecked(),
                           **self.pretrained.overrides())
        return resolve(self.preset.currentText(), None, fields, source="Train panel")

    def _latent(self) -> bool:
        name = self.preset.currentText()
        return name in preset_names() and load_preset(name).autoencoder.enabled

    def _pick_data_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Training data", "", "Images (*.npz *.nii *.nii.gz *.h5 "
                                              "*.hdf5);;All files (*)")
        if path:
            self.data_edit.setText(path)

    def _pick_data_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training data folder")
        if path:
            self.data_edit.setText(path)

    def _pick_run(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Run folder")
        if path:
            self.run_edit.setText(path)

    # -- actions ------------------------------------------------------------------------
    def start(self) -> None:
        self.show_error("")
        if not self.data_edit.text().strip():
            self.show_error("Choose the training data first.")
            return
        if not self.run_edit.text().strip():
            self.show_error("Choose a run folder for checkpoints.")
            return
        fault = self.pretrained.fault()
        if fault:
            self.show_error(fault)
            return
        from engine.training.jobs import train_job  # torch, diffusers, accelerate: loaded when first needed

        try:
            recipe = functools.partial(train_job, self.config(), self.run_edit.text().strip(), preview_at_end=True)
            job = recipe()
        except InputError as exc:
            self.show_error(in_words(exc))
            return
        self._reset_plot()
        self._launch(recipe, job, 0)

    def resume(self) -> None:
        self.show_error("")
        if not self.run_edit.text().strip():
            self.show_error("Choose the run folder to resume.")
            return
        from engine.training.jobs import train_job

        run = RunDir(self.run_edit.text().strip())
        try:
            step = run.resume_step()
            recipe = functools.partial(train_job, None, run.path, resume=True,
                                       steps=max(self.steps_spin.value(), step), preview_at_end=True)
            job = recipe()
        except InputError as exc:
            self.show_error(in_words(exc))
            return
        self._reset_plot()
        self.plot.add((row["step"], row["loss"]) for row in run.loss_rows(upto=step))
        self._launch(recipe, job, step)

    def _launch(self, recipe: Callable[[], TrainJob], job: TrainJob, step: int) -> None:
        self.progress.setRange(0, job.cfg.train.steps)
        self.progress.setValue(step)
        self._t_start, self._step_start = time.monotonic(), step
        self.save_settings()
        self.launch_on(recipe, job, "Loading data…", self.gpus_combo.processes(), self.gpus_combo.gpus,
                       self.device_combo.value())

    def stop(self) -> None:
        if self.runner.running:
            self.status.setText("Stopping after this step; a checkpoint will be saved…")
        super().stop()

    # -- events -------------------------------------------------------------------------
    def _on_event(self, ev: object) -> None:
        if isinstance(ev, Progress) and ev.stage in ("train", "autoencoder"):
            if ev.stage != getattr(self, "_stage", "train"):
                # A latent run trains its autoencoder first: rate and ETA restart with each stage.
                self._t_start, self._step_start = time.monotonic(), ev.done - 1
            self._stage = ev.stage
            self.progress.setMaximum(ev.total)
            self.progress.setValue(ev.done)
            elapsed = time.monotonic() - self._t_start
            done = ev.done - self._step_start
            rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
            eta = (ev.total - ev.done) / rate if rate == rate and rate > 0 else float("nan")
            parts = [f"{rate:.2f} steps/s" if rate == rate else "", format_eta(eta), str(ev.info.get("device", ""))]
            if "gpu_mem_gib" in ev.info:
                parts.append(f"{ev.info['gpu_mem_gib']:.2f} GiB GPU memory")
            loss = ev.info.get("loss")
            known = loss is not None and math.isfinite(loss)
            parts.insert(0, f"loss {loss:.4f}" if known else "waiting for the first loss")
            if ev.stage == "autoencoder":
                parts.insert(0, f"stage 1 of 2, autoencoder {ev.done}/{ev.total}")
            self.status.setText("  ·  ".join(p for p in parts if p))
        elif isinstance(ev, Progress) and ev.stage == "preview":
            text = f"Rendering a preview of step {ev.info.get('step', '')}… {ev.done}/{ev.total}"
            self._caption(preview=text)
            # Also on the status line: on a short screen the previews lie below the fold of the dock.
            self.status.setText(text)
        elif isinstance(ev, Estimate):
            self._show_estimate(ev.text, ev.warning)
        elif isinstance(ev, Preview):
            self._show_previews(ev)
        elif isinstance(ev, Checkpoint):
            self._caption(checkpoint=f"checkpoint saved at step {ev.step}")
        elif isinstance(ev, DataSummary):
            self.data_summary.setText(ev.text)
        elif isinstance(ev, Message):
            self.status.setText(ev.text)

    def _show_estimate(self, text: str, warning: bool) -> None:
        self.estimate.setText(text)
        self.estimate.setStyleSheet("color: #f0a020;" if warning else "")

    @property
    def steps(self) -> list[int]:
        """The steps whose losses are plotted."""
        return self.plot.steps

    def _on_losses(self, losses: list[Loss]) -> None:
        self.plot.add((ev.step, ev.loss) for ev in losses)

    def _reset_plot(self) -> None:
        self.plot.reset()
        # An earlier run's previews under the new run's caption would pass for the new model's.
        for lab in self.preview_labels:
            lab.clear()
        self._captions = {"preview": "", "checkpoint": ""}
        self._caption()

    def _show_previews(self, ev: Preview) -> None:
        images = np.asarray(ev.images)
        lo, hi = np.percentile(images, (0.5, 99.5))
        for lab, image in zip(self.preview_labels, images):
            lab.setPixmap(to_pixmap(image[0] if image.shape[0] == 1 else image, lo, hi, 72))
        self._caption(preview=f"previews at step {ev.step}")

    def _caption(self, **parts: str) -> None:
        """The line under the previews: what they show, and the last checkpoint."""
        self._captions.update(parts)
        self.preview_caption.setText("  ·  ".join(t for t in self._captions.values() if t) or "—")

    def _on_done(self, done: Done) -> None:
        r = done.result
        verb = "Stopped" if done.cancelled else "Finished"
        loss = r.get("loss", float("nan"))
        loss_text = f" — loss {loss:.4f}" if math.isfinite(loss) else ""
        ckpt = r.get("checkpoint")
        saved = f"; checkpoint {Path(ckpt).name} in the run folder" if ckpt else ""
        if r.get("stage") == "autoencoder":
            # No diffusion checkpoint yet: nothing to generate from, and Resume goes on in stage 1.
            self.status.setText(f"{verb} in stage 1 (the autoencoder); Resume goes on from its last checkpoint")
        elif r.get("step") is None:
            self.status.setText(f"{verb} before training began")
        else:
            self.status.setText(f"{verb} at step {r.get('step')}{loss_text}{saved}")
        if r.get("seconds"):
            # The estimate line said how long it would take; now it says how long it took.
            self._show_estimate(f"{verb} after {format_duration(float(r['seconds']))}.", warning=False)
        if r.get("stage") != "autoencoder" and r.get("step") is not None:
            self.progress.setValue(int(r["step"]))  # the last update may have been a preview's
        if r.get("checkpoint") and r.get("stage") != "autoencoder":
            self.run_finished.emit(str(r.get("run_dir")))
