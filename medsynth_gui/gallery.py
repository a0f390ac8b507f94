"""The gallery: a MedSynth HDF5 file as a scrolling grid of thumbnails, filterable by class."""

from __future__ import annotations

from html import escape
from pathlib import Path

from PySide6.QtCore import (
    QModelIndex,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QColor, QImage, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from engine.errors import InputError
from engine.io import destination
from medsynth_gui.gallery_view import GridView, ThumbnailDelegate
from medsynth_gui.labels import ElidedLabel, WrapLabel
from medsynth_gui.loaders import h5_names
from medsynth_gui.thumbnail_drawing import label_colour
from medsynth_gui.thumbnails import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, POLL_MS, ThumbnailModel


class Gallery(QWidget):
    """Thumbnails of every complete sample of a MedSynth file, filterable by class."""

    sample_activated = Signal(str, int)  # path, sample index in the file
    failed = Signal(str)  # one line naming the file and the fault

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = ThumbnailModel(self)
        self.model.wanted = self._row_visible
        self.title: str | None = None  # what the header calls the file shown, when not its own name
        self._build_header()
        bar = self._build_bar()
        self._build_view()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.header)
        layout.addWidget(self.details)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)

        self.poll_timer = QTimer(self, interval=POLL_MS)
        self.poll_timer.timeout.connect(self.refresh)
        self._refresh_combo()

    def _build_header(self) -> None:
        self.header = ElidedLabel("No file open")  # plain text: file names are not markup
        font = self.header.font()
        if font.pointSizeF() > 0:
            font.setPointSizeF(font.pointSizeF() * 1.15)
        font.setBold(True)
        self.header.setFont(font)
        self.details = WrapLabel("")
        self.details.setTextFormat(Qt.TextFormat.RichText)

    def _build_bar(self) -> QHBoxLayout:
        """The class filter, the thumbnail size and a hint, in one row above the grid."""
        self.class_combo = QComboBox()
        self.class_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.class_combo.setToolTip("Show only the samples of one class")
        self.class_combo.currentIndexChanged.connect(self._combo_changed)
        self.size_slider = QSlider(Qt.Orientation.Horizontal)
        self.size_slider.setRange(MIN_SIZE, MAX_SIZE)
        self.size_slider.setSingleStep(8)
        self.size_slider.setPageStep(32)
        self.size_slider.setValue(DEFAULT_SIZE)
        self.size_slider.setFixedWidth(140)
        self.size_slider.setToolTip("Thumbnail size")
        self.size_slider.valueChanged.connect(self._size_changed)
        self._size_timer = QTimer(self, singleShot=True, interval=60)  # coalesce a slider drag
        self._size_timer.timeout.connect(self._apply_size)
        hint = QLabel("Double-click a thumbnail to open it")
        hint.setStyleSheet("color: #777;")
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Class:"))
        bar.addWidget(self.class_combo)
        bar.addSpacing(16)
        bar.addWidget(QLabel("Size:"))
        bar.addWidget(self.size_slider)
        bar.addStretch(1)
        bar.addWidget(hint)
        return bar

    def _build_view(self) -> None:
        """The thumbnail grid, with its delegate and the timers that load thumbnails as it scrolls."""
        self.view = GridView()
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setFlow(QListView.Flow.LeftToRight)
        self.view.setWrapping(True)
        self.view.setUniformItemSizes(True)
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setBatchSize(2000)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.view.setMouseTracking(True)
        self.delegate = ThumbnailDelegate(self.model, self.view)
        self.view.setItemDelegate(self.delegate)
        self.view.setModel(self.model)
        pal = self.view.palette()
        pal.setColor(QPalette.ColorRole.Base, QColor(24, 24, 24))
        pal.setColor(QPalette.ColorRole.Text, QColor(200, 200, 200))
        self.view.setPalette(pal)
        self.view.doubleClicked.connect(self._activate)
        self.view.enter_pressed.connect(self._activate)
        self.view.resized.connect(self._update_grid)
        # Prefetch once the view rests: after the visible thumbnails load, or after a scroll that needed none.
        self._prefetch_timer = QTimer(self, singleShot=True, interval=100)
        self._prefetch_timer.timeout.connect(self._prefetch)
        self.model.loaded.connect(self._prefetch_timer.start)
        # Not connected to start() directly: valueChanged's int would become the timer's interval.
        self.view.verticalScrollBar().valueChanged.connect(lambda _v: self._prefetch_timer.start())
        # Always on: a scroll bar that comes and goes would change the width and re-flow the grid.
        self.view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self._update_grid()

    # ---- public API ----
    def open_file(self, path: str | Path, title: str | None = None) -> bool:
        """Show a MedSynth file, headed by `title` (a folder read into a cached copy) or the file's name;
        on a bad file emit failed(message) and keep what was shown."""
        try:
            self.model.load(path)
            names = h5_names(path)
        except InputError as exc:
            if not self.model.path:
                self.close_file()  # nothing left to show
            if not _renamed_away(path):
                self.failed.emit(str(exc))
            return False
        self.title, self.delegate.names = title, names
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.blockSignals(False)
        self._refresh_combo()
        self._update_header()
        self._update_polling()
        return True

    def refresh(self) -> None:
        """Pick up samples that a running job has completed since the last look."""
        if not self.model.path:
            return
        try:
            before, now = self.model.reopen()
        except (InputError, OSError, KeyError, ValueError) as exc:
            self.poll_timer.stop()
            if _renamed_away(self.model.path):
                return
            self.failed.emit(str(exc) if isinstance(exc, InputError) else
                             f"{self.model.path}: could not be re-read ({exc})")
            return
        if now < before:
            self.open_file(self.model.path)
            return
        if now != before:
            self._refresh_combo()
        self._update_header()
        self._update_polling()

    def set_class_filter(self, cls: int | None) -> None:
        """Show one class (its index in class_names) or, with None, every class."""
        i = self.class_combo.findData(cls if cls is not None else -1)
        if cls is not None and i < 0:
            raise ValueError(f"no class {cls} in {Path(self.model.path).name or 'the gallery'}")
        if i >= 0 and i != self.class_combo.currentIndex():
            self.class_combo.setCurrentIndex(i)  # _combo_changed applies it
        elif self.model.class_filter != cls:
            self._apply_filter(cls)

    def close_file(self) -> None:
        """Let go of the file (e.g. before it is deleted or overwritten) and show nothing."""
        self.poll_timer.stop()
        self.model.unload()
        self.class_combo.clear()
        self._refresh_combo()
        self.header.setText("No file open")
        self.details.setText("")
        self.title = self.delegate.names = None

    def count(self) -> int:
        """Number of thumbnails shown (complete samples passing the filter)."""
        return self.model.rowCount()

    def path(self) -> str:
        return self.model.path

    def thumbnail(self, sample: int) -> QImage:
        """The thumbnail of one sample at the current size, rendered now."""
        return self.model.render(sample)

    def pending_thumbnails(self) -> int:
        return self.model.pending()

    def visible_rows(self) -> range:
        """Rows whose cells the viewport shows now, even in part."""
        n, view = self.model.rowCount(), self.view
        height = view.viewport().height()
        lo, hi = 0, n
        while lo < hi:  # cells run top to bottom in row order: bisect for the first one in sight
            mid = (lo + hi) // 2
            if view.visualRect(self.model.index(mid)).bottom() < 0:
                lo = mid + 1
            else:
                hi = mid
        end = lo
        while end < n and view.visualRect(self.model.index(end)).top() < height:
            end += 1
        return range(lo, end)

    def screen_loaded(self) -> bool:
        """True once every thumbnail in sight is drawn (what a user waits for)."""
        m = self.model
        return all(m.has_thumbnail(m.sample_at(r)) for r in self.visible_rows())

    def set_thumbnail_size(self, size: int) -> None:
        self.size_slider.setValue(size)
        self._apply_size()

    # ---- internals ----
    def _row_visible(self, row: int) -> bool:
        if not self.view.isVisible():
            return False
        return self.view.visualRect(self.model.index(row)).intersects(self.view.viewport().rect())

    def _prefetch(self) -> None:
        rows = self.visible_rows()
        if len(rows):
            after = range(rows.stop, rows.stop + len(rows))
            before = range(max(0, rows.start - len(rows)), rows.start)
            # The next page first (the usual way through a file), then the one above, nearest first.
            self.model.prefetch([*after, *reversed(before)])

    def _activate(self, index: QModelIndex) -> None:
        if index.isValid():
            self.sample_activated.emit(self.model.path, self.model.sample_at(index.row()))

    def _combo_changed(self, i: int) -> None:
        data = self.class_combo.itemData(i)
        self._apply_filter(None if data is None or data < 0 else int(data))

    def _apply_filter(self, cls: int | None) -> None:
        current = self.view.currentIndex()
        keep = self.model.sample_at(current.row()) if current.isValid() else None
        self.model.set_class_filter(cls)
        if keep is not None and (row := self.model.row_of(keep)) >= 0:
            self.view.setCurrentIndex(self.model.index(row))
            self.view.scrollTo(self.model.index(row))
        self._update_header()

    def _refresh_combo(self) -> None:
        """Rewrite the item texts in place so that a growing file keeps the user's choice."""
        m = self.model
        counts = m.class_counts()
        combo = self.class_combo
        combo.blockSignals(True)
        if combo.count() == 0:
            combo.addItem("", -1)
        combo.setItemText(0, f"All classes ({m.n_complete})" if m.labels is not None
                          else f"All samples ({m.n_complete})")
        for k, c in enumerate(counts):
            text = f"{m.class_name(k)} ({int(c)})"
            if k + 1 < combo.count():
                combo.setItemText(k + 1, text)
            else:
                combo.addItem(text, k)
        combo.setEnabled(m.labels is not None)
        combo.blockSignals(False)

    def _update_header(self) -> None:
        m = self.model
        if not m.path:
            return
        if self.title:
            self.header.setText(self.title)
        else:
            self.header.setText(f"{Path(m.path).name} — {m.n_planned} samples ({m.n_complete} complete)")
        shape = m.shape
        spatial = "×".join(str(s) for s in shape[2:])
        kind = {"synthetic": "Synthetic samples", "real": "Real data"}.get(m.header.kind, "")
        bits = [kind, f"{'3D volumes' if m.volume else '2D images'} {spatial}"]
        if shape and shape[1] == 3:
            bits.append("RGB")
        if m.volume:
            bits.append("central axial slice")
        if m.prompts is not None:
            bits.append("a prompt per sample (hover to read it)")
        if m.class_filter is not None:
            bits.append(f"showing {len(m.rows)} of class “{escape(m.class_name(m.class_filter))}”")
        if m.n_complete < m.n_planned:
            bits.append("<b>still being written</b>")
        text = " · ".join(b for b in bits if b)
        if m.has_masks:
            labels = sorted(m.label_names.items()) or [(1, "label 1")]
            legend = "&nbsp;&nbsp;".join(
                f"<span style='color:rgb{label_colour(k)}; font-weight:bold'>■</span> {escape(name)}"
                for k, name in labels if k > 0)
            text += f"&nbsp;&nbsp;&nbsp;Outlines: {legend}"
        self.details.setText(text)

    def _update_polling(self) -> None:
        m = self.model
        if m.path and m.n_complete < m.n_planned:
            if not self.poll_timer.isActive():
                self.poll_timer.start()
        else:
            self.poll_timer.stop()

    def _size_changed(self, _value: int) -> None:
        self._size_timer.start()

    def _apply_size(self) -> None:
        self._size_timer.stop()
        if self.size_slider.value() != self.model.size:
            self.model.set_size(self.size_slider.value())
            self._update_grid()

    def _update_grid(self) -> None:
        # Share the spare width among the columns so the grid fills the view edge to edge.
        cell = self.delegate.cell_size(self.view.font()) + QSize(6, 6)
        width = self.view.viewport().width() - 1  # the layout wraps a cell that ends exactly at the edge
        cols = max(1, width // cell.width())
        grid = QSize(max(cell.width(), width // cols), cell.height())
        if grid != self.view.gridSize():
            self.view.setGridSize(grid)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.close_file()
        super().closeEvent(event)


def _renamed_away(path: str | Path) -> bool:
    """A running job's file that was renamed onto its own name (even while being read): no fault, the job opens
    the finished file itself."""
    return destination.is_temp(path) and not Path(path).exists()
