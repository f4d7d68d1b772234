"""What a run returns: :class:`GapResult` and :class:`InfillResult`, its outputs on disk and in memory.

Both engines fill them (:mod:`optsar_nb.run` on the local engine, :mod:`optsar_nb.run_ee` on
Earth Engine); the notebooks and the map app display them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .aoi import AOI
from .engine import Engine
from .errors import OptsarError
from .params import GapParams, InfillParams
from .products import GAP_STATISTICS


@dataclass
class GapResult:
    """Outputs of a gap characterization run, on disk and in memory.

    ``statistics``: (stat, y, x) float32 gap statistics (NaN outside the AOI / undefined);
    ``daily_state``: (time, y, x) composited state per day (1 clear, 0 cloudy, -1 missing);
    ``metadata``: one row per input image (ID, CollectionTime, CLOUD_PERCENTAGE_AOI, PIXEL_COUNT_AOI).
    On the EE engine ``ee_image`` holds the statistics image and the arrays are None.
    """

    params: GapParams
    engine: Engine
    aoi: AOI | None
    paths: dict[str, Path] = field(default_factory=dict)
    statistics: xr.DataArray | None = None
    daily_state: xr.DataArray | None = None
    metadata: pd.DataFrame | None = None
    ee_image: Any = None  # EE: the statistics image
    ee_collection: Any = None  # EE: the same-day composites (ee.ImageCollection of states)
    dates: list[str] | None = None  # EE: the composites' dates, YYYY-MM-DD
    tasks: list = field(default_factory=list)  # EE: export reports, output name -> skipped/done/started

    def summary(self) -> pd.DataFrame:
        """Per statistic: unit, and mean, minimum, maximum over the AOI pixels where it is defined."""
        if self.statistics is None:
            raise OptsarError("this run has no local statistics array (Earth Engine runs export them instead)")
        stats = self.statistics.compute()
        has_data = np.asarray(stats.sel(stat="valid_count").values) > 0  # inside the AOI, with data
        rows = []
        for stat in GAP_STATISTICS:
            values = np.asarray(stats.sel(stat=stat.name).values)[has_data]
            finite = values[np.isfinite(values)]
            rows.append({
                "statistic": stat.name, "unit": stat.unit,
                "mean": float(finite.mean()) if finite.size else np.nan,
                "min": float(finite.min()) if finite.size else np.nan,
                "max": float(finite.max()) if finite.size else np.nan,
                "pixels": int(finite.size),
            })
        return pd.DataFrame(rows).set_index("statistic")


@dataclass
class InfillResult:
    """Outputs of an infilling run, on disk and as lazy (time, y, x) stacks read back from the files.

    ``observed`` (clear observations), ``predicted`` (calibrated prediction), ``gapfree``, ``mask``
    (1 clear, 0 cloudy, -1 missing) have one image per optical-SAR pair; ``vv``/``vh`` are the S1
    inputs; ``metadata`` the Output_Metadata table; ``metrics`` MAE/RMSE/R2/bias per split and method;
    ``metrics_by_gap`` the same per bin of distance to the nearest clear training view.
    """

    params: InfillParams
    engine: Engine
    aoi: AOI | None
    paths: dict[str, Path] = field(default_factory=dict)
    observed: xr.DataArray | None = None
    predicted: xr.DataArray | None = None
    gapfree: xr.DataArray | None = None
    mask: xr.DataArray | None = None
    vv: xr.DataArray | None = None
    vh: xr.DataArray | None = None
    metadata: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None
    metrics_by_gap: pd.DataFrame | None = None
    n_images: int = 0
    dates: list[str] | None = None  # EE: the pairs' dates
    tasks: list = field(default_factory=list)  # EE: export reports, output name -> skipped/done/started

    @property
    def n_pairs(self) -> int:
        return 0 if self.metadata is None else len(self.metadata)

    @property
    def accuracy(self) -> pd.DataFrame:
        """MAE (NDVI units) per split (rows) for every estimate: fusion, S1 model, the two baselines."""
        if self.metrics is None:
            raise OptsarError("this run has no local accuracy table (Earth Engine runs export it instead)")
        table = self.metrics.pivot(index="split", columns="method", values="MAE")
        return table.reindex(index=["validation", "test"], columns=["fusion", "model", "pixel_mean", "interpolation"])

    @property
    def accuracy_by_gap(self) -> pd.DataFrame:
        """MAE per (split, days to the nearest clear training view) (rows) and estimate (columns)."""
        if self.metrics_by_gap is None:
            raise OptsarError("this run has no local accuracy table (Earth Engine runs export it instead)")
        t = self.metrics_by_gap
        table = t.pivot_table(index=["split", "gap_bin"], columns="method", values="MAE", sort=False)
        n = t[t.method == "fusion"].set_index(["split", "gap_bin"])["n"]
        return table[["fusion", "model", "pixel_mean", "interpolation"]].assign(n=n)

    @property
    def verdict(self) -> str:
        """One sentence naming the best estimate on validation, and a warning when the product loses to a baseline."""
        from .report import verdict

        if self.metrics is None:
            return "Accuracy is computed by the local engine (Earth Engine runs export their inputs for it)."
        return " ".join(part for part in verdict(self.metrics, self.params.method) if part)
