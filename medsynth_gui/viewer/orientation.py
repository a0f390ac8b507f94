"""Which voxel axes each pane shows, and which way round, read from the affine (no Qt).

The three panes follow 3D Slicer's default radiological layout whatever order the
file stores its voxels in: axial has the patient's right on the screen's left and
anterior at the top; coronal right-left and superior at the top; sagittal
anterior on the left and superior at the top. The letters at the edges are then
read back from the affine through nibabel, never assumed from array axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
WORLD_LETTERS = ("R", "A", "S")  # the positive end of each RAS+ world axis

# name, world axis along the normal, then the world axis and its direction (+1 or -1)
# that should run to the screen's right, and the one that should run up the screen.
VIEWS_3D = (
    ("Axial", 2, (0, -1), (1, +1)),
    ("Coronal", 1, (0, -1), (2, +1)),
    ("Sagittal", 0, (1, -1), (2, +1)),
)

# Slicer's colours for the red (axial), green (coronal) and yellow (sagittal) panes.
VIEW_COLORS = {"Axial": (232, 80, 80), "Coronal": (96, 200, 96), "Sagittal": (236, 208, 64), "Image": (236, 208, 64)}


@dataclass(frozen=True)
class Plane:
    """One pane's geometry: the slicing axis and the in-plane axes with their flips."""

    name: str
    normal: int | None  # voxel axis sliced through; None for a 2D image
    h_axis: int  # voxel axis running along the screen's horizontal
    h_flip: bool  # True when that axis' index grows towards the screen's left
    v_axis: int  # voxel axis running along the screen's vertical
    v_flip: bool  # True when that axis' index grows towards the screen's bottom
    left: str = ""
    right: str = ""
    top: str = ""
    bottom: str = ""
    normal_sign: int = 1  # +1 when the normal axis' index grows towards R, A or S
    normal_letter: str = ""  # world direction of the normal axis, for "S 12.0 mm" style labels

    @property
    def letters(self) -> dict[str, str]:
        return {"left": self.left, "right": self.right, "top": self.top, "bottom": self.bottom}


def default_affine(spacing: tuple[float, ...]) -> np.ndarray:
    """Voxel to millimetres when the file gave none: a 3D volume is taken as RAS.

    A 2D image's columns run along x and its rows along y, so positions read (x, y).
    """
    a = np.eye(4)
    if len(spacing) == 3:
        a[0, 0], a[1, 1], a[2, 2] = spacing
    else:
        a[0, 0] = a[1, 1] = 0.0
        a[1, 0], a[0, 1] = spacing
    return a


ARRAY_ORDER = np.array([[0, 1], [1, 1], [2, 1]], float)


def _ornt(affine: np.ndarray) -> np.ndarray | None:
    """Each voxel axis' nearest world axis and sign, or None when the affine does not say.

    nibabel does not raise for a degenerate affine (a zero or NaN column, e.g. a header with a
    zero pixdim): it returns NaN rows, which used to crash the viewer on int(nan).
    """
    try:
        ornt = nib.orientations.io_orientation(affine)
    except Exception:
        return None
    return ornt if np.isfinite(ornt).all() else None


def planes_for(affine: np.ndarray, shape: tuple[int, ...]) -> list[Plane]:
    """The panes for an image of this spatial shape: three for a volume, one for a 2D image."""
    if len(shape) == 2:
        # A photograph-like image: row 0 at the top, column 0 at the left, no anatomy letters.
        return [Plane("Image", None, h_axis=1, h_flip=False, v_axis=0, v_flip=True)]
    ornt = _ornt(affine)
    if ornt is None:
        # Array order, with "?" at every edge: naming directions the file does not give would mislead.
        ornt, codes = ARRAY_ORDER, (None, None, None)
    else:
        codes = nib.orientations.ornt2axcodes(ornt)
    # For each world axis: the voxel axis closest to it and whether the index grows with it.
    voxel_of_world = {int(w): (axis, int(s)) for axis, (w, s) in enumerate(ornt)}

    def edge(axis: int, flip: bool) -> str:
        # The letter at the end the index grows towards; flipping puts the other end there.
        letter = codes[axis] or "?"
        return OPPOSITE.get(letter, "?") if flip else letter

    planes = []
    for name, normal_world, (hw, hdir), (vw, vdir) in VIEWS_3D:
        h_axis, h_sign = voxel_of_world[hw]
        v_axis, v_sign = voxel_of_world[vw]
        n_axis, n_sign = voxel_of_world[normal_world]
        h_flip, v_flip = h_sign != hdir, v_sign != vdir
        right, top = edge(h_axis, h_flip), edge(v_axis, v_flip)
        planes.append(Plane(name, n_axis, h_axis, h_flip, v_axis, v_flip,
                            left=OPPOSITE.get(right, "?"), right=right, top=top, bottom=OPPOSITE.get(top, "?"),
                            normal_sign=n_sign, normal_letter=WORLD_LETTERS[normal_world]))
    return planes


def display_slice(array: np.ndarray, plane: Plane, index: tuple[int, ...], channels_first: bool = False) -> np.ndarray:
    """The pane's picture as a view into `array` (no copy): [h, v(, c)], h to the right, v upwards.

    That is pyqtgraph's column-major order with the y axis pointing up.
    """
    a = np.moveaxis(array, 0, -1) if channels_first else array
    if plane.normal is not None:
        a = _index(a, plane.normal, index[plane.normal])
        rest = [ax for ax in range(3) if ax != plane.normal]
    else:
        rest = [0, 1]
    if rest.index(plane.h_axis) != 0:
        a = a.swapaxes(0, 1)
    if plane.h_flip:
        a = a[::-1]
    if plane.v_flip:
        a = a[:, ::-1]
    return a


def _index(a: np.ndarray, axis: int, i: int) -> np.ndarray:
    # Basic indexing keeps a view; np.take would copy the slice.
    key = [slice(None)] * a.ndim
    key[axis] = i
    return a[tuple(key)]


def to_display(plane: Plane, shape: tuple[int, ...], index: tuple[int, ...]) -> tuple[int, int]:
    """Voxel index -> (column, row-from-bottom) in the pane's picture."""
    h, v = index[plane.h_axis], index[plane.v_axis]
    if plane.h_flip:
        h = shape[plane.h_axis] - 1 - h
    if plane.v_flip:
        v = shape[plane.v_axis] - 1 - v
    return h, v


def from_display(plane: Plane, shape: tuple[int, ...], cursor: tuple[int, ...], dh: int, dv: int) -> tuple[int, ...]:
    """(column, row-from-bottom) in the pane -> voxel index, keeping the cursor's slice."""
    nh, nv = shape[plane.h_axis], shape[plane.v_axis]
    dh, dv = min(max(dh, 0), nh - 1), min(max(dv, 0), nv - 1)
    out = list(cursor)
    out[plane.h_axis] = nh - 1 - dh if plane.h_flip else dh
    out[plane.v_axis] = nv - 1 - dv if plane.v_flip else dv
    return tuple(out)


def orientation_code(affine: np.ndarray) -> str:
    try:
        return "".join(c or "?" for c in nib.aff2axcodes(affine))
    except Exception:
        return "???"
