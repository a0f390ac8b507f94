"""Slice viewer for volumes and 2D images: a Qt-free view-state model and the panes bound to it.

The widgets load lazily so that `medsynth_gui.viewer.state` (and its tests or headless
uses) can be imported without loading Qt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compare import CompareView
    from .state import ViewState
    from .viewer import Viewer

__all__ = ["CompareView", "ViewState", "Viewer"]
_HOMES = {"CompareView": ".compare", "ViewState": ".state", "Viewer": ".viewer"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
