"""Lazy imports of the optional interactive dependencies, with a message naming what to install."""

from __future__ import annotations

import importlib

from ..errors import OptsarError

# module -> how to get it (the package's extra where there is one)
INSTALL_HINTS = {
    "ipyleaflet": "pip install ipyleaflet (installed with optsar_nb; conda install -c conda-forge ipyleaflet)",
    "ipywidgets": "pip install ipywidgets (installed with optsar_nb; conda install -c conda-forge ipywidgets)",
    "geemap": "pip install 'optsar_nb[geemap]' (or conda install -c conda-forge geemap)",
    "matplotlib": "pip install matplotlib",
}


class MissingDependency(OptsarError, ImportError):
    """An optional dependency needed by the interactive map is not installed."""


def require(module: str):
    """Import ``module`` or raise MissingDependency saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = INSTALL_HINTS.get(top, f"pip install {top}")
        raise MissingDependency(f"the interactive map needs {top!r}, which is not installed ({exc}): {hint}") from None
