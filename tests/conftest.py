"""Shared fixtures: tiny configs and a tiny trained run, made once per session."""

from __future__ import annotations

import os

# A QApplication without a display aborts the whole process; GUI tests run offscreen.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Test models are tiny: one thread each is faster than two threads fighting over two cores,
# and subprocesses (the CLI, two-process training) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from engine.config import RunConfig, load_preset  # noqa: E402
from engine.data.phantoms import make_phantoms  # noqa: E402
from engine.jobs import Requests  # noqa: E402


def tiny_config(steps: int = 20, mask_mode: str = "joint", **train: object) -> RunConfig:
    """A model small enough that a training step takes milliseconds on 2 CPU cores."""
    cfg = load_preset("demo")
    cfg.model.image_size = 16
    cfg.model.block_out_channels = [16, 32]
    cfg.model.attention_levels = [False, True]
    cfg.train.steps = steps
    cfg.train.batch = 8
    cfg.train.checkpoint_every = 10
    cfg.train.log_every = 5
    cfg.train.warmup_steps = 5
    cfg.data.mask_mode = mask_mode
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.fixture(autouse=True)
def own_app_settings(tmp_path_factory):
    """Every test starts with no remembered app settings: the panels remember their fields between starts, and one
    test's choices (a latent preset, an objective) must not become the next test's defaults."""
    try:
        from PySide6.QtCore import QSettings
    except ImportError:  # an install without the app
        yield
        return
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path_factory.mktemp("settings")))
    yield


@pytest.fixture(scope="session")
def phantoms16():
    return make_phantoms(64, size=16, seed=1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, phantoms16):
    """A run directory with a few training steps done: enough to sample from."""
    from engine.training.train import TrainJob

    run = tmp_path_factory.mktemp("run") / "run"
    events: list = []
    TrainJob(tiny_config(steps=20), run, data=phantoms16).run(events.append, Requests())
    return run


def tiny_cli_setup(folder, n: int, train: str):
    """Phantom data and a tiny-model TOML for tests that run `medsynth train` as a process."""
    from engine.io.medsynth_writer import write_image_set

    data = write_image_set(folder / "d.h5", make_phantoms(n, 16))
    cfg = folder / "tiny.toml"
    cfg.write_text("[model]\nimage_size = 16\nblock_out_channels = [16, 32]\nattention_levels = [false, true]\n"
                   f"[train]\n{train}\nbatch = 4\n")
    return data, cfg


COPIES = (4, 17, 31)  # synthetic indices that are copies of training images 10, 20, 30


def make_evaluation_files(root, n_train: int = 120, n_test: int = 40, n_synth: int = 48,
                          copies: dict[int, int] | None = None):
    """Training, held-out and "synthetic" phantom files for evaluation tests. The synthetic file is a
    fresh phantom draw (a perfect generator) with planted copies of training images, {synthetic index: training
    index} (COPIES' three by default)."""
    from engine.io.medsynth_writer import SampleWriter, write_image_set

    train = make_phantoms(n_train, size=32, seed=0)
    train_path = write_image_set(root / "train.h5", train)
    test_path = write_image_set(root / "test.h5", make_phantoms(n_test, size=32, seed=5000))
    synth = make_phantoms(n_synth, size=32, seed=9000)
    copies = {i: 10 * (k + 1) for k, i in enumerate(COPIES)} if copies is None else copies
    for i, src in copies.items():
        synth.images[i], synth.masks[i], synth.labels[i] = train.images[src], train.masks[src], train.labels[src]
    synth_path = root / "synth.h5"
    with SampleWriter(synth_path, len(synth), synth.images.shape[1:], masks=True, labels=True,
                      class_names=synth.class_names, label_names=synth.label_names,
                      normalisation={"modality": "MR", "lo": 0.0, "hi": 1000.0, "units": "a.u."},
                      config={"data": {"path": str(train_path)}}) as w:
        w.append(synth.images, np.arange(len(synth)), synth.masks, synth.labels)
    return root, train_path, test_path, synth_path


def open_main_window(qtbot, tmp_path, monkeypatch, size: tuple[int, int] | None = None, show: bool = False):
    """The app's main window as a user first meets it (Fusion style, dark palette), with its settings, home and
    cache folders in the test's own place so no test reads or writes the developer's."""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    from medsynth_gui.app import dark_palette
    from medsynth_gui.main_window import MainWindow

    QApplication.instance().setStyle("Fusion")
    dark_palette(QApplication.instance())
    win = MainWindow()
    win.quiet_errors = True
    qtbot.addWidget(win)
    if size is not None:
        win.resize(*size)
    if show:
        win.show()
        qtbot.waitExposed(win)
    return win


@pytest.fixture
def gallery(qtbot):
    """The gallery in a shown window of a fixed size, for the gallery tests."""
    from medsynth_gui.gallery import Gallery

    g = Gallery()
    qtbot.addWidget(g)
    g.resize(900, 640)
    g.show()
    qtbot.waitExposed(g)
    return g


class StopAfter(Requests):
    """Requests that ask a job to stop at its (polls + 1)-th poll: a stop at a known point of a job, as if a
    user had pressed Stop there. ``polls`` counts how often the job asked."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.limit, self.polls = polls, 0

    def stop_asked(self) -> bool:
        self.polls += 1
        if self.polls > self.limit:
            self.stop()
        return super().stop_asked()
