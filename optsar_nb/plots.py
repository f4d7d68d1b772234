"""Static figures (PNG) for files, reports and the app, and the gap statistics panel.

Figures are made with matplotlib's object API on an Agg canvas, never through pyplot: the
user's backend (a notebook's inline or widget backend) is left as it was, and no figure stays
open in pyplot's list.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import xarray as xr

from .products import STATISTICS_BY_NAME


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplots):
    """A figure and its axes, as ``pyplot.subplots`` gives them, drawn by Agg without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **subplots)


def colormap(name: str | list[str], *, bad: str | None = None):
    """A matplotlib colormap by name, or of a list of colours (``bad``: the colour of masked values)."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(name) if isinstance(name, list) else matplotlib.colormaps[name]
    return cmap.with_extremes(bad=bad) if bad else cmap


def save_png(fig, path: str | Path, *, dpi: int, overwrite: bool | str = False) -> Path:
    """Write ``fig`` as a PNG, atomically (:func:`optsar_nb.outputs.atomic_path`)."""
    from .outputs import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)


def png_bytes(fig, *, dpi: int = 90) -> bytes:
    """``fig`` as PNG bytes (for an image widget)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()


def gap_panel(stats: xr.DataArray, path: str | Path, *, title: str = "Gap statistics",
              overwrite: bool | str = False) -> Path:
    """One map per statistic band of a (stat, y, x) array, each with a colorbar in its unit."""
    values = stats.compute()
    names = [str(s) for s in values.stat.values]
    ncols = 4
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), squeeze=False)
    cells = list(axes.flat)
    for ax, name in zip(cells[:len(names)], names, strict=True):
        info = STATISTICS_BY_NAME.get(name)
        img = values.sel(stat=name).values
        finite = img[np.isfinite(img)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmin == vmax:
            vmax = vmin + 1
        cmap = colormap(info.palette if info else "viridis", bad="lightgrey")
        im = ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label(info.unit if info else "")
    for ax in cells[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{title}  (grey: undefined)")
    fig.tight_layout()
    return save_png(fig, path, dpi=80, overwrite=overwrite)


def map_picture(values: np.ndarray, path: str | Path, *, title: str, palette: str | list[str], vmin: float, vmax: float,
                label: str, ticks: dict[float, str] | None = None, overwrite: bool | str = False) -> Path:
    """A static picture of one map layer: the (y, x) values with a colorbar (``ticks``: value ->
    name, for categories), transparent (white) where undefined."""
    fig, ax = new_figure(figsize=(6, 5))
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colormap(palette), vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)
    if ticks:
        cbar.set_ticks(list(ticks), labels=list(ticks.values()))
    return save_png(fig, path, dpi=80, overwrite=overwrite)
