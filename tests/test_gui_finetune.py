"""The app's text-prompted fine-tuning: the Train panel starts from a tiny Stable-Diffusion-format model on a
folder of grey chest-X-ray-like PNGs with a labels.csv, and the Generate panel makes images from a prompt."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")
pytest.importorskip("diffusers")

from engine.io import medsynth_h5  # noqa: E402
from medsynth_gui.panels.generate_panel import GeneratePanel  # noqa: E402
from medsynth_gui.panels.prompt_box import history  # noqa: E402
from medsynth_gui.panels.train_panel import TrainPanel  # noqa: E402
from tests.sd_tiny import make_tiny_sd, write_ckpt, write_single_file  # noqa: E402

SHOTS = Path("/tmp/shots/issue17")


@pytest.fixture(scope="module")
def sd_model(tmp_path_factory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("models"))


def xray_folder(root: Path, n: int = 8, size: int = 32) -> Path:
    """16-bit grey PNGs as a CXR export gives them, with labels.csv naming each one's finding."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["stem,class"]
    for i in range(n):
        yy, xx = np.mgrid[:size, :size] / size
        lung = 30000 + 20000 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 6) + rng.normal(0, 800, (size, size))
        Image.fromarray(np.clip(lung, 0, 65535).astype(np.uint16)).save(images / f"cxr_{i:02d}.png")
        rows.append(f"cxr_{i:02d},{'pneumonia' if i % 2 else 'normal'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def shot(widget, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    widget.grab().save(str(SHOTS / name))


def run_to_end(qtbot, panel, action) -> None:
    """Press a panel's button and wait until its job has ended, finished or failed."""
    with qtbot.waitSignal(panel.runner.running_changed, timeout=120_000, check_params_cb=lambda running: not running):
        action()
    assert not panel.error.isVisible(), panel.error.text()


def generate(qtbot, panel: GeneratePanel, out: Path, prompt: str = "", class_row: int = 0) -> None:
    panel.out_edit.setText(str(out))
    panel.n_spin.setValue(2)
    panel.steps_spin.setValue(3)
    panel.prompt_combo.setEditText(prompt)
    panel.class_combo.setCurrentIndex(class_row)
    run_to_end(qtbot, panel, panel.start)


def test_fine_tune_from_the_train_panel_then_generate_from_a_prompt(qtbot, sd_model, tmp_path):
    data = xray_folder(tmp_path / "cxr")
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.resize(560, 1100)
    panel.show()
    assert not panel.pretrained.fields.isVisible()  # off until asked for: MedSynth's own models are the default
    panel.data_edit.setText(str(data))
    panel.run_edit.setText(str(tmp_path / "run"))
    panel.pretrained.set_model(str(sd_model))
    # Choosing a model picks the fine-tune preset at the model's own size; fields its model decides are hidden.
    assert panel.preset.currentText() == "sd-finetune" and panel.size_spin.value() == 32
    assert "made for 32 px" in panel.pretrained.note.text()
    assert not panel.objective_combo.isVisible() and not panel.mask_combo.isVisible()
    assert not panel.pretrained.trust_check.isVisible() and not panel.pretrained.config_row.isVisible()
    assert panel.pretrained.rank_spin.minimum() == 0 and panel.pretrained.rank_spin.maximum() == 1024
    panel.pretrained.rank_spin.setValue(0)
    assert panel.pretrained.rank_spin.text() == "whole UNet (full fine-tune)"
    panel.pretrained.rank_spin.setValue(4)
    panel.pretrained.template_edit.setText("chest x-ray, {class}")
    panel.steps_spin.setValue(4)
    panel.batch_spin.setValue(2)
    panel.device_combo.set_value("cpu")
    cfg = panel.config()
    assert cfg.fine_tune and cfg.pretrained.path == str(sd_model) and cfg.pretrained.lora_rank == 4
    assert cfg.pretrained.prompt_template == "chest x-ray, {class}" and not cfg.pretrained.trust_pickle
    finished: list[str] = []
    panel.run_finished.connect(finished.append)
    run_to_end(qtbot, panel, panel.start)
    assert "Finished at step 4" in panel.status.text() and finished == [str(tmp_path / "run")]
    # Resume goes on as the same kind of run: the pretrained model with its adapters, not MedSynth's own network.
    panel.steps_spin.setValue(6)
    run_to_end(qtbot, panel, panel.resume)
    assert "Finished at step 6" in panel.status.text() and panel.steps[-1] == 6
    shot(panel, "train_panel_finetuned.png")

    gen = GeneratePanel()
    qtbot.addWidget(gen)
    gen.resize(560, 800)
    gen.show()
    gen.set_checkpoint(finished[0])
    assert gen.prompt_combo.isVisible() and gen.negative_edit.isVisible() and not gen.redraw_check.isVisible()
    assert "tiny-sd fine-tuned on text prompts (LoRA rank 4)" in gen.model_info.text()
    assert gen.class_combo.isVisible() and gen.class_combo.count() == 3  # a class gives its templated prompt
    offered = [gen.prompt_combo.itemText(i) for i in range(gen.prompt_combo.count())]
    assert {"chest x-ray, normal", "chest x-ray, pneumonia"} <= set(offered)
    gen.negative_edit.setText("text, letters")
    generate(qtbot, gen, tmp_path / "pneumonia.h5", prompt="pneumonia")
    shot(gen, "generate_panel_prompt.png")
    with medsynth_h5.open_file(tmp_path / "pneumonia.h5") as f:
        assert medsynth_h5.read_prompts(f) == ["pneumonia", "pneumonia"]
    assert history()[0] == "pneumonia" and gen.prompt_combo.itemText(0) == "pneumonia"

    # No prompt: the class chosen gives each sample its templated prompt, and the class is stored with it.
    gen.negative_edit.clear()
    generate(qtbot, gen, tmp_path / "by_class.h5", class_row=gen.class_combo.findData(1))
    with medsynth_h5.open_file(tmp_path / "by_class.h5") as f:
        assert medsynth_h5.read_prompts(f) == ["chest x-ray, pneumonia"] * 2
        assert list(f["labels"][:]) == [1, 1]

    again = GeneratePanel()  # the next start of the app remembers what was asked, most recent first
    qtbot.addWidget(again)
    again.set_checkpoint(finished[0])
    assert again.prompt_combo.itemText(0) == "pneumonia"


def test_a_model_trained_on_many_prompts_without_classes_needs_one_typed(qtbot, sd_model, tmp_path):
    from engine.config import resolve
    from engine.jobs import Requests
    from engine.settings import overrides
    from engine.training.jobs import train_job

    data = xray_folder(tmp_path / "cxr", n=4)
    (data / "labels.csv").unlink()
    (data / "prompts.csv").write_text("stem,prompt\n" + "".join(f"cxr_{i:02d},chest x-ray {i}\n" for i in range(4)))
    cfg = resolve("sd-finetune", None, overrides(data=data, size=32, steps=2, batch=2, device="cpu",
                                                 from_pretrained=sd_model, lora=2), source="test")
    train_job(cfg, tmp_path / "run").run(lambda ev: None, Requests())
    gen = GeneratePanel()
    qtbot.addWidget(gen)
    gen.set_checkpoint(str(tmp_path / "run"))
    assert not gen.class_combo.isEnabled() and gen.class_combo.isHidden() and not gen.prompt_combo.isHidden()
    gen.out_edit.setText(str(tmp_path / "out.h5"))
    gen.start()
    assert not gen.runner.running and "Type a prompt" in gen.error.text()
    assert not (tmp_path / "out.h5").exists()


def test_a_ckpt_file_cannot_start_until_the_user_trusts_it(qtbot, sd_model, tmp_path):
    data = xray_folder(tmp_path / "cxr", n=4)
    ckpt = write_ckpt(sd_model, sd_model.with_suffix(".ckpt"))  # its diffusers folder beside it gives the settings
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.resize(560, 1100)
    panel.show()
    panel.data_edit.setText(str(data))
    panel.run_edit.setText(str(tmp_path / "run"))
    panel.pretrained.set_model(str(ckpt))
    assert panel.pretrained.trust_check.isVisible() and not panel.pretrained.trust_check.isChecked()
    assert "settings from tiny-sd/" in panel.pretrained.note.text()
    panel.start()
    assert not panel.runner.running and not (tmp_path / "run").exists()
    assert "I trust this file" in panel.error.text() and "--" not in panel.error.text()
    assert "ff6b6b" in panel.pretrained.trust_check.styleSheet()  # marked where the user looks, near the picker
    shot(panel, "train_panel_ckpt_untrusted.png")
    panel.pretrained.trust_check.setChecked(True)
    assert panel.pretrained.trust_check.styleSheet() == "" and panel.pretrained.fault() == ""
    assert panel.config().pretrained.trust_pickle
    # Trust goes with the file: another file chosen asks again.
    panel.pretrained.set_model(str(tmp_path / "other.ckpt"))
    assert not panel.pretrained.trust_check.isChecked()


def test_a_model_that_cannot_be_used_says_why_beside_the_picker(qtbot, sd_model, tmp_path):
    panel = TrainPanel()
    qtbot.addWidget(panel)
    single = write_single_file(sd_model, tmp_path / "models" / "tiny.safetensors")  # no configs beside it
    panel.pretrained.set_model(str(single))
    note = panel.pretrained.note.text()
    assert "diffusers folder" in note and "--" not in note, note
    assert panel.pretrained.fault() == note
    broken = tmp_path / "broken"
    shutil.copytree(sd_model, broken)
    shutil.rmtree(broken / "vae")
    panel.pretrained.config_edit.setText(str(broken))
    panel.pretrained.check_model()
    assert "lacks vae/" in panel.pretrained.note.text()
    panel.size_spin.setValue(48)  # the user's own size stays when a usable model is chosen
    panel.pretrained.config_edit.setText(str(sd_model))
    panel.pretrained.check_model()
    assert panel.pretrained.fault() == "" and panel.size_spin.value() == 48
    assert panel.config().pretrained.config_folder == str(sd_model)


def test_the_pretrained_fields_come_back_after_a_restart_but_not_the_trust(qtbot, sd_model, tmp_path):
    ckpt = write_ckpt(sd_model, tmp_path / "model.ckpt")
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.pretrained.set_model(str(ckpt), config_folder=str(sd_model))
    panel.pretrained.trust_check.setChecked(True)
    panel.pretrained.rank_spin.setValue(16)
    panel.pretrained.text_check.setChecked(True)
    panel.save_settings()
    again = TrainPanel()  # the next start of the app
    qtbot.addWidget(again)
    assert again.preset.currentText() == "sd-finetune" and again.pretrained.used
    assert again.pretrained.path == str(ckpt) and again.pretrained.config_edit.text() == str(sd_model)
    assert again.pretrained.rank_spin.value() == 16 and again.pretrained.text_check.isChecked()
    assert not again.pretrained.trust_check.isChecked()
    qtbot.waitUntil(lambda: "made for 32 px" in again.pretrained.note.text(), timeout=10_000)
    # Turning fine-tuning off goes back to MedSynth's own networks, and their fields come back.
    again.pretrained.use_check.setChecked(False)
    assert again.preset.currentText() == "demo" and not again.config().fine_tune
    assert not again.objective_combo.isHidden() and not again.mask_combo.isHidden()
