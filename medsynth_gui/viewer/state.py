"""The viewer's state as a plain observable model: no Qt here, so it can be tested bare.

Widgets subscribe to a field by name and write back through the same attributes;
because a setter only notifies on a real change, a widget that echoes a value
back into the model ends the loop instead of ringing forever.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import colors
from .orientation import Plane, default_affine, planes_for

Callback = Callable[[Any], None]

# 'image' means a new picture was loaded: every field may have changed at once.
EVENTS = ("image", "mask", "cursor", "window_level", "mask_visible", "mask_opacity", "label_colors",
          "label_names", "wl_mode", "link_zoom")


def _same(a: Any, b: Any) -> bool:
    # Arrays compare by identity: comparing contents would cost a pass over a whole volume.
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is b
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b


class Field:
    """An attribute that notifies subscribers of its name when it really changes."""

    def __init__(self, default: Any = None, coerce: Callable[[Any, Any], Any] | None = None) -> None:
        self.default = default
        self.coerce = coerce

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.attr = "_f_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj, self.attr, self.default)

    def __set__(self, obj: Any, value: Any) -> None:
        if self.coerce is not None:
            value = self.coerce(obj, value)
        if _same(getattr(obj, self.attr, self.default), value):
            return
        setattr(obj, self.attr, value)
        obj.notify(self.name, value)


class Observable:
    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callback]] = {}

    def subscribe(self, event: str, callback: Callback) -> Callable[[], None]:
        """Call `callback(new_value)` on `event`; returns a function that unsubscribes."""
        if event not in EVENTS:
            raise ValueError(f"unknown viewer event {event!r}; known: {', '.join(EVENTS)}")
        self._subscribers.setdefault(event, []).append(callback)
        return lambda: self._subscribers[event].remove(callback)

    def notify(self, event: str, value: Any = None) -> None:
        for callback in list(self._subscribers.get(event, ())):
            callback(value)


def _clip_cursor(state: ViewState, value: Any) -> tuple[int, ...]:
    shape = state.spatial_shape
    idx = tuple(int(round(float(v))) for v in value)
    if len(idx) != len(shape):
        raise ValueError(f"cursor {idx} has {len(idx)} indices; the image has {len(shape)} dimensions")
    return tuple(min(max(i, 0), n - 1) for i, n in zip(idx, shape))


def _window_level(_: ViewState, value: Any) -> tuple[float, float]:
    window, level = (float(v) for v in value)
    # A zero window would divide by zero in the display mapping.
    return (max(window, 1e-6), level)


def _unit(_: ViewState, value: Any) -> float:
    return min(max(float(value), 0.0), 1.0)


def _check_mask(state: ViewState, mask: Any, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    shape = state.spatial_shape if shape is None else shape
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {shape}")
    # Label values above 255 do not fit the overlay's colour table; they wrap.
    return mask if mask.dtype == np.uint8 else mask.astype(np.uint8)


def _label_bounds(mask: np.ndarray) -> tuple[slice, ...] | None:
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


class ViewState(Observable):
    """What the viewer shows and where: one instance per Viewer, shared by its slice views."""

    mask = Field(None, _check_mask)
    cursor = Field((), _clip_cursor)
    window_level = Field((1.0, 0.5), _window_level)
    mask_visible = Field(True, lambda _, v: bool(v))
    mask_opacity = Field(0.5, _unit)
    label_colors = Field({}, lambda _, v: {int(k): tuple(int(c) for c in rgb[:3]) for k, rgb in dict(v).items()})
    label_names = Field({}, lambda _, v: {int(k): str(n) for k, n in dict(v or {}).items()})
    wl_mode = Field(False, lambda _, v: bool(v))  # left-drag does window/level instead of moving the cursor
    link_zoom = Field(False, lambda _, v: bool(v))  # zooming one pane zooms the others by the same factor

    def __init__(self) -> None:
        super().__init__()
        self.volume: np.ndarray | None = None
        self.affine = np.eye(4)
        self.spacing: tuple[float, ...] = ()
        self.units = ""
        self.title = ""
        self.is_rgb = False
        self.planes: list[Plane] = []
        self.presets: dict[str, tuple[float, float]] = {}
        self.data_range = (0.0, 1.0)

    # -- loading ----------------------------------------------------------------------
    def set_image(self, volume: np.ndarray, mask: np.ndarray | None = None, affine: np.ndarray | None = None,
                  spacing: tuple[float, ...] | None = None, label_names: dict[int, str] | None = None,
                  units: str = "", title: str = "") -> None:
        """Load a picture: (X, Y, Z) volume, (H, W) image or (3, H, W) colour image."""
        volume = np.asarray(volume)
        if volume.dtype.kind not in "fiu" or volume.dtype.itemsize > 4:
            volume = volume.astype(np.float32)
        # (3, H, W) is colour only without an affine: a volume three voxels thick comes with one.
        is_rgb = volume.ndim == 3 and volume.shape[0] == 3 and affine is None and min(volume.shape[1:]) > 3
        spatial = volume.shape[1:] if is_rgb else volume.shape
        if len(spatial) not in (2, 3):
            raise ValueError(f"image shape {volume.shape}: the viewer shows (H, W), (3, H, W) or (X, Y, Z)")
        ndim = len(spatial)
        if affine is not None:
            affine = np.asarray(affine, dtype=float)
            if affine.shape != (4, 4):
                raise ValueError(f"affine must be 4x4, got {affine.shape}")
            if spacing is None:
                spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(ndim))
        sp = tuple(float(s) for s in (spacing or ()))[:ndim]
        sp = sp if len(sp) == ndim and all(s > 0 and math.isfinite(s) for s in sp) else (1.0,) * ndim
        mask = _check_mask(self, mask, tuple(spatial))  # before anything changes: a bad mask leaves all as it was
        self.volume, self.is_rgb, self.spacing = volume, is_rgb, sp
        self.affine = affine if affine is not None else default_affine(sp)
        self.units, self.title = units, title
        self.planes = planes_for(self.affine, spatial)
        self._f_mask = mask
        self._f_label_names = {int(k): str(v) for k, v in (label_names or {}).items()}
        # The legend lists the named labels and any other value found in the mask.
        found = set() if mask is None else set(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist())
        wanted = set(self._f_label_names) | found
        self._f_label_colors = {lab: colors.label_color(lab) for lab in sorted(wanted) if lab > 0}
        self._f_cursor = tuple(n // 2 for n in spatial)
        self.presets, self.data_range = colors.presets_for(volume)
        self._f_window_level = self.presets[colors.default_preset(units, is_rgb)]
        self.notify("image", volume)

    @property
    def has_image(self) -> bool:
        return self.volume is not None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        if self.volume is None:
            return ()
        return tuple(self.volume.shape[1:] if self.is_rgb else self.volume.shape)

    @property
    def levels(self) -> tuple[float, float]:
        window, level = self.window_level
        return (level - window / 2.0, level + window / 2.0)

    @property
    def mask_bounds(self) -> tuple[slice, ...] | None:
        """Smallest box holding every nonzero label, or None when there are none.

        Panes copy only this box of the overlay, and skip slices outside it: most of a label
        map is background, and gathering a whole strided slice of it cost more than the image.
        """
        m = self.mask
        if m is None:
            return None
        if getattr(self, "_bounds_of", None) is not m:
            self._bounds_of, self._bounds = m, _label_bounds(m)
        return self._bounds

    @property
    def present_labels(self) -> list[int]:
        """Labels with a colour, for the legend: the named ones and any found in the mask."""
        return sorted(self.label_colors)

    # -- positions ----------------------------------------------------------------------
    def world(self, index: tuple[int, ...]) -> np.ndarray:
        """Millimetre position of a voxel centre (x, y, z) through the affine."""
        v = np.zeros(4)
        v[: len(index)] = index
        v[3] = 1.0
        return (self.affine @ v)[:3]

    @property
    def cursor_world(self) -> np.ndarray:
        return self.world(self.cursor)

    def voxel_at(self, xyz: np.ndarray) -> tuple[int, ...]:
        """Nearest voxel to a world position (clipped into the image)."""
        ijk = np.linalg.solve(self.affine, np.append(np.asarray(xyz, float)[:3], 1.0))[:3]
        return _clip_cursor(self, ijk[: len(self.spatial_shape)])

    def set_cursor_world(self, xyz: np.ndarray) -> None:
        if self.has_image:
            self.cursor = self.voxel_at(xyz)

    # -- readout ----------------------------------------------------------------------
    def value_at(self, index: tuple[int, ...]) -> float | tuple[float, ...]:
        if self.is_rgb:
            return tuple(float(c) for c in self.volume[(slice(None), *index)])
        return float(self.volume[index])

    def label_at(self, index: tuple[int, ...]) -> int | None:
        return None if self.mask is None else int(self.mask[index])

    def describe(self, view: str, index: tuple[int, ...]) -> str:
        """One status-bar line: view, position in mm, voxel index, value and label."""
        pos = self.world(index)
        if len(index) == 3:
            where = f"({pos[0]:.1f}, {pos[1]:.1f}, {pos[2]:.1f}) mm RAS"
        else:
            where = f"({pos[0]:.1f}, {pos[1]:.1f}) mm"
        value = self.value_at(index)
        shown = "(" + ", ".join(f"{c:.4g}" for c in value) + ")" if isinstance(value, tuple) else f"{value:.4g}"
        text = f"{view}  {where}  voxel [{', '.join(str(i) for i in index)}]  value {shown}"
        if self.units:
            text += f" {self.units}"
        label = self.label_at(index)
        if label is not None:
            name = self.label_names.get(label, "background" if label == 0 else "unnamed")
            text += f"  label {label} {name}"
        return text
