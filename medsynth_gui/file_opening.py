"""Opening files in the main window: the Open dialogs, any path MedSynth reads, a sample of a file, a
segmentation onto the image shown, and the recent-files menu.

A mixin of MainWindow: it works on the window's gallery, viewer, tabs and settings (named below), and asks
medsynth_gui.loaders (and through it the engine's source registry) what a path is.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog, QMenu, QStackedWidget, QTabWidget

from engine.errors import InputError
from engine.io.sources import View
from engine.io.sources.h5 import sample_view
from medsynth_gui.gallery import Gallery
from medsynth_gui.loaders import (
    ViewCache,
    dataset_view,
    default_cache_root,
    opened_as,
    with_segmentation,
)
from medsynth_gui.viewer import Viewer

MAX_RECENT = 10


class FileOpening:
    """Everything that puts a file on screen; the window provides the widgets it fills."""

    settings: QSettings
    view_cache: ViewCache
    current: View | None
    current_ref: tuple[str, int] | None
    stack: QStackedWidget
    tabs: QTabWidget
    viewer: Viewer
    gallery: Gallery
    recent_menu: QMenu
    # and its show_error(text) and statusBar(), which a mixin must not shadow

    # -- opening ------------------------------------------------------------------------
    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open", str(self.settings.value("open/dir", "")),
                                              "Medical images (*.h5 *.hdf5 *.nii *.nii.gz *.npz);;All files (*)")
        if path:
            self.open_path(path)

    def open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open folder", str(self.settings.value("open/dir", "")))
        if path:
            self.open_path(path)

    def open_path(self, path: str | Path) -> bool:
        """Open anything MedSynth reads; errors go to a message, never a traceback."""
        p = Path(path)
        self.settings.setValue("open/dir", str(p.parent))
        try:
            how, view = opened_as(p)  # the engine's source registry says what the path is
            if how == "gallery":
                if not self.gallery.open_file(str(p)):
                    return False  # the gallery has said why, through its failed signal
                self.stack.setCurrentWidget(self.tabs)
                self.tabs.setCurrentWidget(self.gallery)
                if self.gallery.count():
                    self.open_sample(str(p), 0, switch=False)
            elif view is not None:
                self.show_image(view)
                if view.mask is not None and not view.image.any():
                    self.viewer.state.window_level = (1.0, 0.5)  # a label map alone: labels on black
                if view.note:
                    self.show_error(view.note)
            else:
                self._open_as_dataset(p)
        except InputError as exc:
            self.show_error(str(exc))
            return False
        self._remember(str(p))
        return True

    @staticmethod
    def _cache_root() -> Path:
        base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericCacheLocation)
        return Path(base) / "medsynth" / "views" if base else default_cache_root()

    def _open_as_dataset(self, p: Path) -> None:
        """npz and data folders: read through the engine into a private cached copy, browsed in the
        gallery under the folder's own name."""
        if self.gallery.path() == str(self.view_cache.path_for(p)):
            self.gallery.close_file()  # its copy is about to be replaced
        out, title = dataset_view(p, self.view_cache)
        self.gallery.open_file(str(out), title=title)
        self.stack.setCurrentWidget(self.tabs)
        self.tabs.setCurrentWidget(self.gallery)

    def open_sample(self, path: str, index: int, switch: bool = True) -> None:
        try:
            shown = sample_view(path, index, self.view_cache.title(path))
        except InputError as exc:
            self.show_error(str(exc))
            return
        self.current_ref = (path, index)
        self.show_image(shown, switch=switch)

    def show_image(self, d: View, switch: bool = True) -> None:
        self.current = d
        self.statusBar().clearMessage()  # the last readout described the previous image
        self.viewer.set_image(d.image, mask=d.mask, affine=d.affine, spacing=d.spacing,
                              label_names=d.label_names, units=d.units, title=d.title)
        self.stack.setCurrentWidget(self.tabs)
        if switch:
            self.tabs.setCurrentWidget(self.viewer)

    def load_segmentation_dialog(self) -> None:
        if self.current is None:
            self.show_error("Open an image first; its segmentation is then loaded onto it.")
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load segmentation", str(self.settings.value("open/dir", "")),
                                              "Label maps (*.nii *.nii.gz);;All files (*)")
        if path:
            self.load_segmentation(path)

    def load_segmentation(self, path: str | Path) -> bool:
        """Show a label NIfTI as the overlay of the image in the viewer, keeping the slice and window;
        a label map that does not fit the image is a message, and the image stays as it was."""
        if self.current is None:
            self.show_error("Open an image first; its segmentation is then loaded onto it.")
            return False
        try:
            shown = with_segmentation(self.current, path)
        except InputError as exc:
            self.show_error(str(exc))
            return False
        state = self.viewer.state
        cursor, window_level = state.cursor, state.window_level
        self.show_image(shown)
        state.cursor, state.window_level = cursor, window_level
        self.statusBar().showMessage(f"Segmentation {Path(path).name} loaded", 5000)
        return True

    # -- recent files -------------------------------------------------------------------
    def _recent(self) -> list[str]:
        value = self.settings.value("recent", [])
        return [value] if isinstance(value, str) else list(value or [])

    def _remember(self, path: str) -> None:
        items = [path] + [p for p in self._recent() if p != path]
        self.settings.setValue("recent", items[:MAX_RECENT])
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        items = self._recent()
        for path in items:
            self.recent_menu.addAction(QAction(path, self, triggered=lambda _=False, p=path: self.open_path(p)))
        self.recent_menu.setEnabled(bool(items))

