"""The main window: viewer, gallery and compare in the centre; train and generate panels docked."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFrame,
    QHBoxLayout,
    QMainWindow,
    QMessageBox,
    QProgressDialog,
    QPushButton,
    QScrollArea,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine import __version__
from engine.config import RESOURCES
from engine.io.sources import View
from medsynth_gui.file_opening import FileOpening
from medsynth_gui.gallery import Gallery
from medsynth_gui.loaders import ViewCache
from medsynth_gui.panels.evaluate_panel import EvaluatePanel
from medsynth_gui.panels.generate_panel import GeneratePanel
from medsynth_gui.panels.train_panel import TrainPanel
from medsynth_gui.panels.widgets import fresh_name
from medsynth_gui.reader_study import ReaderStudyWidget
from medsynth_gui.viewer import CompareView, Viewer
from medsynth_gui.welcome import welcome_page

DEMO_DIR = RESOURCES / "demo"
# Quitting waits this long for a job to stop at its next step (a 3D step on a CPU can take a minute).
STOP_WAIT_MS = 180_000
SHORTCUTS = [
    ("Mouse wheel, Up/Down", "next / previous slice"),
    ("Page Up / Page Down", "jump ten slices"),
    ("Left click, Shift + move", "set the crosshair in all views"),
    ("Ctrl + wheel", "zoom"),
    ("Middle drag", "pan"),
    ("Right drag", "window (left-right) and level (up-down)"),
    ("w", "window/level mode for the left button"),
    ("g", "show / hide the mask overlay"),
    ("r", "reset zoom and pan"),
    ("Ctrl+O", "open a file"),
]


def user_dir() -> Path:
    d = Path.home() / "MedSynth"
    d.mkdir(parents=True, exist_ok=True)
    return d


def scrolling(panel: QWidget) -> QScrollArea:
    """A dock's panel scrolls up and down when the screen is shorter than the panel (a 768 px laptop)."""
    area = QScrollArea()
    area.setWidget(panel)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return area


class MainWindow(FileOpening, QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(f"MedSynth {__version__}")
        self.setAcceptDrops(True)
        self.settings = QSettings()
        self.current: View | None = None
        self.current_ref: tuple[str, int] | None = None
        self.view_cache = ViewCache(self._cache_root())
        self._build_centre()
        self._build_docks()
        self._build_menus()
        self.statusBar().showMessage("Open a file, drop one here, or try the demo.")
        self.viewer.readout.connect(self.statusBar().showMessage)
        self.gallery.sample_activated.connect(self.open_sample)
        self.reader_study.reading.connect(self._blind_window)
        self.gallery.failed.connect(lambda message: self.show_error(message))
        self.train.run_finished.connect(self.generate.set_checkpoint)
        self.generate.file_started.connect(self._generation_started)
        self.generate.model_chosen.connect(lambda run: self._suggest_output(f"{run}-synthetic.h5"))
        self._suggested_output = ""
        self.generate.file_progress.connect(lambda _p: self.gallery.refresh())
        # Done: the samples now lie under the output's own name (the file that filled was renamed onto it).
        self.generate.file_done.connect(lambda p: (self.gallery.open_file(p), self._remember(p)))
        self.generate.file_done.connect(self.evaluate.set_file)
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            room = self.screen().availableGeometry()  # a first start on a 1366 x 768 laptop
            self.resize(min(1500, room.width()), min(900, room.height()))
        state = self.settings.value("window/state")
        self._sized_docks = state is not None and self.restoreState(state)
        self.stopping: QProgressDialog | None = None  # shown while quitting waits for a job to stop
        self._quit_anyway = False
        self._stop_timer = QTimer(self, singleShot=True)
        self._stop_timer.timeout.connect(self._close_anyway)
        # Tests replace this to answer the close question without a modal dialog.
        self.confirm = lambda title, text: QMessageBox.question(self, title, text) == QMessageBox.StandardButton.Yes

    # -- layout -------------------------------------------------------------------------
    def _build_centre(self) -> None:
        self.stack = QStackedWidget()
        self.welcome = welcome_page(self.open_demo, self.open_dialog)
        self.tabs = QTabWidget()
        self.viewer = Viewer()
        self.gallery = Gallery()
        self.compare = CompareView()
        compare_page = QWidget()
        lay = QVBoxLayout(compare_page)
        buttons = QHBoxLayout()
        left_btn = QPushButton("Current sample → left")
        right_btn = QPushButton("Current sample → right")
        left_btn.clicked.connect(lambda: self._to_compare("left"))
        right_btn.clicked.connect(lambda: self._to_compare("right"))
        buttons.addWidget(left_btn)
        buttons.addWidget(right_btn)
        buttons.addStretch(1)
        lay.addLayout(buttons)
        lay.addWidget(self.compare, 1)
        self.tabs.addTab(self.viewer, "Viewer")
        self.tabs.addTab(self.gallery, "Gallery")
        self.tabs.addTab(compare_page, "Compare")
        self.evaluate = EvaluatePanel()
        self.tabs.addTab(self.evaluate, "Evaluate")
        self.reader_study = ReaderStudyWidget()
        self.tabs.addTab(self.reader_study, "Reader study")
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(self.tabs)
        self.setCentralWidget(self.stack)

    def _build_docks(self) -> None:
        self.train = TrainPanel()
        self.generate = GeneratePanel()
        self.train_dock = QDockWidget("Train", self)
        self.train_dock.setObjectName("train_dock")
        self.train_dock.setWidget(scrolling(self.train))
        self.generate_dock = QDockWidget("Generate", self)
        self.generate_dock.setObjectName("generate_dock")
        self.generate_dock.setWidget(scrolling(self.generate))
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.train_dock)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.generate_dock)
        self.tabifyDockWidget(self.train_dock, self.generate_dock)
        self.generate_dock.raise_()

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        act = QAction("&Open…", self, shortcut=QKeySequence.StandardKey.Open, triggered=self.open_dialog)
        file_menu.addAction(act)
        file_menu.addAction(QAction("Open &folder…", self, triggered=self.open_folder_dialog))
        file_menu.addAction(QAction("Load &segmentation…", self, triggered=self.load_segmentation_dialog))
        self.recent_menu = file_menu.addMenu("Open &recent")
        self._refresh_recent()
        file_menu.addAction(QAction("Open the &demo", self, triggered=self.open_demo))
        file_menu.addSeparator()
        file_menu.addAction(QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit, triggered=self.close))
        view_menu = self.menuBar().addMenu("&View")
        view_menu.addAction(self.train_dock.toggleViewAction())
        view_menu.addAction(self.generate_dock.toggleViewAction())
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(QAction("&Keyboard shortcuts", self, shortcut="F1", triggered=self.show_shortcuts))
        help_menu.addAction(QAction("&About MedSynth", self, triggered=self.show_about))

    def _to_compare(self, side: str) -> None:
        d = self.current
        if d is None:
            self.show_error("Open a sample first (double-click one in the gallery).")
            return
        setter = self.compare.set_left if side == "left" else self.compare.set_right
        setter(d.image, mask=d.mask, affine=d.affine, spacing=d.spacing, label_names=d.label_names,
               units=d.units, title=d.title)

    def open_demo(self) -> None:
        data = DEMO_DIR / "phantoms.h5"
        run = DEMO_DIR / "run"
        if not data.exists():
            self.show_error(f"{data}: the bundled demo data is missing from this installation")
            return
        self.open_path(data)
        if run.exists():
            self.generate.set_checkpoint(str(run))
        self._suggest_output("demo-synthetic.h5")
        self.train.data_edit.setText(str(data))
        self.train.run_edit.setText(str(fresh_name(user_dir() / "demo-run")))
        self.generate_dock.raise_()
        # A hint for the first minute, not a caption that outlives the training and generation it invites.
        self.statusBar().showMessage("Demo: phantom images with lesion masks. Press Generate to make new ones.", 60_000)

    def _suggest_output(self, name: str) -> None:
        """Name the Generate output after the model, unless the user has typed a name of their own."""
        current = self.generate.out_edit.text().strip()
        if current and current != self._suggested_output:
            return
        self._suggested_output = str(fresh_name(user_dir() / name))
        self.generate.out_edit.setText(self._suggested_output)

    def _generation_started(self, path: str) -> None:
        self.gallery.open_file(path)
        self.stack.setCurrentWidget(self.tabs)
        self.tabs.setCurrentWidget(self.gallery)

    def _blind_window(self, reading: bool) -> None:
        """While a reader reads a study, the docks, the other tabs and the status bar could name the files
        or show their samples: hide them, and bring back what was shown when reading stops."""
        if reading:
            self._docks_before_reading = [d for d in (self.train_dock, self.generate_dock) if d.isVisible()]
            for dock in self._docks_before_reading:
                dock.hide()
        else:
            for dock in getattr(self, "_docks_before_reading", []):
                dock.show()
            self._docks_before_reading = []
        study = self.tabs.indexOf(self.reader_study)
        for i in range(self.tabs.count()):
            if i != study:
                self.tabs.setTabEnabled(i, not reading)
        self.statusBar().showMessage("Reading a study: everything else is hidden until you stop." if reading else "")

    # -- messages -----------------------------------------------------------------------
    def show_error(self, text: str) -> None:
        self.statusBar().showMessage(text, 15000)
        if self.isVisible() and not getattr(self, "quiet_errors", False):
            QMessageBox.warning(self, "MedSynth", text)

    def show_shortcuts(self) -> None:
        rows = "".join(f"<tr><td><b>{k}</b></td><td>&nbsp;&nbsp;{v}</td></tr>" for k, v in SHORTCUTS)
        QMessageBox.information(self, "Keyboard shortcuts", f"<table>{rows}</table>")

    def show_about(self) -> None:
        QMessageBox.about(self, "About MedSynth", f"MedSynth {__version__}<br>Synthetic, labeled medical images "
                          "from diffusion models trained on your own data.")

    def showEvent(self, event: object) -> None:
        super().showEvent(event)
        if not self._sized_docks:
            # Docks only take a width once the window has its own; the images get the rest.
            self._sized_docks = True
            self.resizeDocks([self.train_dock], [min(480, self.width() // 3)], Qt.Orientation.Horizontal)

    # -- drag and drop, closing ---------------------------------------------------------
    def _stop_then_close(self, busy: list) -> None:
        """Ask the jobs to stop and wait for them in the event loop: the window keeps painting, and says why."""
        training = self.train.runner in busy
        self.stopping = QProgressDialog("Saving a checkpoint and stopping training…" if training
                                        else "Stopping generation…", "", 0, 0, self)  # 0..0: a busy bar
        self.stopping.setWindowTitle("Quitting MedSynth")
        self.stopping.setCancelButton(None)
        self.stopping.setWindowModality(Qt.WindowModality.WindowModal)
        self.stopping.setMinimumDuration(0)
        self.stopping.show()
        for runner in busy:
            runner.running_changed.connect(self._close_when_stopped)
        if training:
            self.train.stop()
        self.generate.runner.stop()
        self._stop_timer.start(STOP_WAIT_MS)

    def _close_when_stopped(self, running: bool) -> None:
        if not running and not (self.train.runner.running or self.generate.runner.running):
            self._stop_timer.stop()
            self.stopping.close()
            self.close()

    def _close_anyway(self) -> None:
        self._quit_anyway = True
        self.close()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.open_path(url.toLocalFile())
                break

    def closeEvent(self, event: QCloseEvent) -> None:
        busy = [r for r in (self.train.runner, self.generate.runner) if r.running]
        if busy and not self._quit_anyway:
            if self.stopping is None:
                if self.train.runner.running and not self.confirm("Training is running",
                                                                  "Stop training, save a checkpoint and quit?"):
                    event.ignore()
                    return
                self._stop_then_close(busy)
            event.ignore()  # closes itself once the jobs have stopped
            return
        self.train.save_settings()
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        # Folders opened in the gallery leave no copy behind.
        self.gallery.close_file()
        self.view_cache.clear()
        event.accept()
