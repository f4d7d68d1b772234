"""Interactive map app and widgets for the notebooks (needs ipywidgets and ipyleaflet; geemap for EE).

Import :class:`OptsarApp` from ``optsar_nb.ui.app``; this package imports nothing heavy by itself.
"""

from __future__ import annotations

__all__ = ["OptsarApp"]


def __getattr__(name: str):
    if name == "OptsarApp":
        from .app import OptsarApp

        return OptsarApp
    raise AttributeError(name)
