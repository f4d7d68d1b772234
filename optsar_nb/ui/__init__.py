"""Interactive map app and widgets for the notebooks (ipywidgets and ipyleaflet; geemap for EE)."""

from __future__ import annotations

from .app import OptsarApp

__all__ = ["OptsarApp"]
