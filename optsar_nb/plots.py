"""Static figures (PNG) for files and reports: the gap statistics panel."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import xarray as xr

from .products import STATISTICS_BY_NAME


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def gap_panel(stats: xr.DataArray, path: str | Path, *, title: str = "Gap statistics", overwrite: bool = False) -> Path:
    """One map per statistic band of a (stat, y, x) array, each with a colorbar in its unit."""
    from .outputs import atomic_path

    plt = _pyplot()
    values = stats.compute()
    names = [str(s) for s in values.stat.values]
    ncols = 4
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        info = STATISTICS_BY_NAME.get(name)
        img = values.sel(stat=name).values
        finite = img[np.isfinite(img)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmin == vmax:
            vmax = vmin + 1
        cmap = plt.get_cmap(info.palette if info else "viridis").with_extremes(bad="lightgrey")
        im = ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label(info.unit if info else "")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{title}  (grey: undefined)")
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)
