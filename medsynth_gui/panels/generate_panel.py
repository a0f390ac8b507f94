"""Generate panel: checkpoint, count, sampler, class or class mix (or a prompt, for a model fine-tuned from text),
seed → an HDF5 file that fills live."""

from __future__ import annotations

import functools
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.config import from_dict
from engine.errors import InputError
from engine.io.medsynth_writer import in_the_way
from engine.jobs import Done, Progress
from engine.settings import OPTIONS, SAMPLER_STEPS, MaskMode, Objective, Sampler, samplers_for
from engine.training import checkpoints
from engine.training.run_dir import RunDir, resolve_checkpoint
from medsynth_gui.labels import WrapLabel
from medsynth_gui.panels.choice_combo import ChoiceCombo
from medsynth_gui.panels.job_panel import JobPanel
from medsynth_gui.panels.pretrained_box import in_words
from medsynth_gui.panels.processes_combo import ProcessesCombo
from medsynth_gui.panels.prompt_box import PromptCombo, negative_edit
from medsynth_gui.panels.ranged import ranged
from medsynth_gui.panels.widgets import fresh_name, path_row


class GeneratePanel(JobPanel):
    file_started = Signal(str)  # the file being filled exists (beside the output, until it is done)
    file_progress = Signal(str)
    file_done = Signal(str)
    model_chosen = Signal(str)  # the training run's name, when a model has loaded

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Generate", parent)
        self._announced = False
        self._text_model = False  # the chosen model was fine-tuned from text prompts
        self._one_prompt = False  # ... on one prompt alone, which it makes when none is typed
        self._build()

    def _build(self) -> None:
        outer = QVBoxLayout(self)
        box = QGroupBox("Generate synthetic data")
        form = QFormLayout(box)
        self.ckpt_edit = QLineEdit()
        self.ckpt_edit.setPlaceholderText("a training run folder or one of its checkpoints")
        self.ckpt_edit.editingFinished.connect(self._load_classes)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._pick_ckpt)
        form.addRow("Model", path_row(self.ckpt_edit, browse))
        self.model_info = WrapLabel("")
        form.addRow("", self.model_info)
        self.n_spin = ranged(QSpinBox(maximum=1_000_000, value=64), OPTIONS["sample", "n"])
        form.addRow("Samples", self.n_spin)
        self.sampler = ChoiceCombo(Sampler)
        self.sampler.currentIndexChanged.connect(
            lambda _: self.steps_spin.setValue(SAMPLER_STEPS[self.sampler.value()]))
        form.addRow("Sampler", self.sampler)
        self.steps_spin = ranged(QSpinBox(maximum=1000, value=SAMPLER_STEPS[Sampler.DPM]), OPTIONS["sample", "steps"])
        form.addRow("Steps", self.steps_spin)
        self._build_prompt(form)
        self.class_combo = QComboBox()
        self.class_combo.addItem("Uniform mix of classes")
        form.addRow("Class", self.class_combo)
        self.mix_edit = QLineEdit()
        self.mix_edit.setPlaceholderText('optional weights, e.g. "0:0.5,3:0.5"')
        form.addRow("Class mix", self.mix_edit)
        self.guidance = ranged(QDoubleSpinBox(maximum=20.0, singleStep=0.5, value=2.0), OPTIONS["sample", "guidance"])
        self.guidance.setToolTip("classifier-free guidance; 1 = none, 2-4 = stronger class fidelity")
        form.addRow("Guidance", self.guidance)
        self.seed_spin = ranged(QSpinBox(), OPTIONS["sample", "seed"])
        form.addRow("First seed", self.seed_spin)
        self.redraw_check = QCheckBox("Draw again a sample whose mask contradicts its class")
        self.redraw_check.setChecked(True)
        self.redraw_check.setToolTip("Only where the classes count what the mask shows (\"1 lesion\", \"2 lesions\"): "
                                     "such a sample would carry a label that lies. Costs extra time.")
        form.addRow("", self.redraw_check)
        self._build_output(form)
        self._show_text_fields()
        outer.addWidget(box)
        row = QHBoxLayout()
        row.addWidget(self.run_btn)
        row.addWidget(self.stop_btn)
        outer.addLayout(row)
        self.progress.setFormat("%v / %m samples")
        outer.addWidget(self.progress)
        outer.addWidget(self.status)
        outer.addWidget(self.error)
        outer.addStretch(1)

    def _build_output(self, form: QFormLayout) -> None:
        """Where the samples go, and on a machine with several GPUs, on how many they are drawn."""
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("output .h5 file")
        out_btn = QPushButton("Save as…")
        out_btn.clicked.connect(self._pick_out)
        form.addRow("Output", path_row(self.out_edit, out_btn))
        self.gpus_combo = ProcessesCombo()
        form.addRow("GPUs", self.gpus_combo)
        form.setRowVisible(self.gpus_combo, self.gpus_combo.offered)

    def _build_prompt(self, form: QFormLayout) -> None:
        """Shown for a model fine-tuned from text only."""
        self._form = form
        self.prompt_combo = PromptCombo()
        form.addRow("Prompt", self.prompt_combo)
        self.negative_edit = negative_edit()
        form.addRow("Negative prompt", self.negative_edit)

    def set_checkpoint(self, path: str) -> None:
        self.ckpt_edit.setText(path)
        self._load_classes()

    def _load_classes(self) -> None:
        self.class_combo.clear()
        self.class_combo.addItem("Uniform mix of classes")
        try:
            ckpt = resolve_checkpoint(self.ckpt_edit.text().strip())
            state = checkpoints.read_state(ckpt)
        except InputError as exc:
            self.model_info.setText(str(exc) if self.ckpt_edit.text().strip() else "")
            self._text_model = False
            self._show_text_fields()
            return
        cfg = from_dict(state["config"])
        names = state.get("class_names") or []
        k = cfg.facts.num_classes
        self._text_model = cfg.fine_tune
        self._one_prompt = len(state.get("prompts") or []) == 1
        if cfg.fine_tune:
            self.prompt_combo.offer(list(state.get("prompts") or []), names[:k], cfg.pretrained.prompt_template)
        for i in range(k):
            self.class_combo.addItem(f"{i}: {names[i] if i < len(names) else i}", i)
        self._show_text_fields()
        self.class_combo.setEnabled(k > 0)
        self.mix_edit.setEnabled(k > 0)
        self.guidance.setEnabled(k > 0 or cfg.fine_tune)  # a text model is guided by its prompt
        objective = Objective(cfg.train.objective)
        self.sampler.offer(samplers_for(objective))  # only the samplers that fit how the model was trained
        if cfg.fine_tune:
            p = cfg.pretrained
            how = f"LoRA rank {p.lora_rank}" if p.lora_rank else "whole UNet"
            self.model_info.setText(f"{Path(p.path).name} fine-tuned on text prompts ({how}); step "
                                    f"{state['step']}, {cfg.model.image_size} px, {k} classes")
        else:
            self.model_info.setText(f"step {state['step']}, {cfg.model.image_size} px, "
                                    f"{MaskMode(cfg.mask_mode).label.lower()}, {k} classes, "
                                    f"{objective.label.split(' (')[0].lower()} objective")
        run = RunDir.of_checkpoint(ckpt)
        self.model_chosen.emit(run.path.name if run is not None else ckpt.name)

    def _show_text_fields(self) -> None:
        """The prompt fields for a model fine-tuned from text; the mask redraw only where samples have masks."""
        for w in (self.prompt_combo, self.negative_edit):
            self._form.setRowVisible(w, self._text_model)
        self._form.setRowVisible(self.redraw_check, not self._text_model)
        # A text model without classes is asked by prompt alone; MedSynth's own keeps its (disabled) class fields.
        for w in (self.class_combo, self.mix_edit):
            self._form.setRowVisible(w, not self._text_model or self.class_combo.count() > 1)

    def _pick_ckpt(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training run")
        if path:
            self.set_checkpoint(path)

    def _pick_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Output file", "synthetic.h5", "MedSynth HDF5 (*.h5)")
        if path:
            self.out_edit.setText(path if path.endswith((".h5", ".hdf5")) else path + ".h5")

    def start(self) -> None:
        self.show_error("")
        out = self.out_edit.text().strip()
        if not out:
            self._on_failed("Choose an output file.")
            return
        lost = in_the_way(out)
        replace = lost is not None
        if replace and not self._may_replace(lost):
            self.show_error(f"{lost}: already exists; choose another name, or answer Replace to write over it.")
            return
        class_index = self.class_combo.currentData()
        class_mix = self.mix_edit.text().strip() or None
        prompt = self.prompt_combo.text() if self._text_model else ""
        if self._text_model and not prompt and not self.class_combo.isEnabled() and not self._one_prompt:
            self._on_failed("Type a prompt: say what to generate, for example \"chest x-ray, pneumonia\" "
                            "(this model has no classes to generate from).")
            return
        if prompt:
            class_index = class_mix = None  # the prompt says what each sample is
        try:
            from engine.inference.sample import SampleJob  # diffusers and torch: loaded when first needed

            recipe = functools.partial(
                SampleJob, self.ckpt_edit.text().strip(), self.n_spin.value(), out, overwrite=replace,
                sampler_name=self.sampler.value(), steps=self.steps_spin.value(), seed=self.seed_spin.value(),
                class_index=class_index, class_mix=class_mix, guidance=self.guidance.value(), batch=16,
                redraw_mismatches=self.redraw_check.isChecked(), prompts=[prompt] if prompt else None,
                negative_prompt=self.negative_edit.text().strip() if self._text_model else "")
            job = recipe()
        except InputError as exc:
            self._on_failed(in_words(exc))
            return
        if prompt:
            self.prompt_combo.remember()
        self.progress.setRange(0, self.n_spin.value())
        self.progress.setValue(0)
        self._announced = False
        self._out = out
        self.launch_on(recipe, job, "Loading the model…", self.gpus_combo.processes(), self.gpus_combo.gpus)

    def _may_replace(self, path: Path) -> bool:
        """As a Save dialog asks: the file's samples would be lost, so only on a clear Replace."""
        what = (f"{path.name} already exists in {path.parent}." if path.suffix != ".partial" else
                f"{path.name} in {path.parent} holds the samples of a run that was interrupted.")
        box = QMessageBox(QMessageBox.Icon.Question, "Replace the file?",
                          f"{what}\nReplace it with the new samples?",
                          QMessageBox.StandardButton.Cancel, self)
        replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is replace

    def _on_event(self, ev: object) -> None:
        if isinstance(ev, Progress) and ev.stage == "sample":
            self.progress.setValue(ev.done)
            per = ev.info.get("per_sample_s", 0.0)
            live = ev.info.get("file", self._out)  # filled beside the output, renamed onto it when done
            later = "" if live else " · the gallery shows them when the GPUs finish"
            self.status.setText(f"{ev.done} of {ev.total} samples · {per:.2f} s per sample{later}")
            if not live:
                return  # several processes: each fills a shard, and the one file is shown when merged
            if not self._announced:
                self._announced = True
                self.file_started.emit(live)
            else:
                self.file_progress.emit(live)

    def _on_done(self, done: Done) -> None:
        r = done.result
        verb = "Stopped" if done.cancelled else "Done"
        n = r.get("in_file", r.get("n")) or 0  # several processes stopped: the file holds the first samples drawn
        text = f"{verb}: {n} samples in {Path(r.get('out', '')).name} ({r.get('seconds', 0):.1f} s)"
        if r.get("redrawn"):
            left = r.get("mask_class_disagreements", 0)
            text += (f"; {r['redrawn']} drawn again because the mask contradicted the class"
                     + (f", {left} still do (flagged in the gallery)" if left else ""))
        self.status.setText(text)
        if n:
            if not self._announced:
                self._announced = True
                self.file_started.emit(r["out"])
            self.file_done.emit(r["out"])
            if self.out_edit.text().strip() == r["out"]:
                # Generate again means more samples, not the same file written over: the next free name.
                self.out_edit.setText(str(fresh_name(Path(r["out"]))))
