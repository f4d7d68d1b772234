"""Gap characterization on simulated state stacks of the published sizes: wall time and memory.

Run on demand: ``.venv/bin/python benchmarks/bench_gaps.py [case ...]`` (cases 1, 2, 3).
States are drawn lazily per spatial block (independent of one another: timing does not depend
on cloud shapes), so even case 3 (2750 x 4671 px, 380 images, 4.9e9 pixel-dates) never sits in
memory whole. Prints wall time and peak resident memory.
"""

from __future__ import annotations

import resource
import sys
import time

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from optsar_nb.local.gaps import gap_statistics
from optsar_nb.params import GapParams

CASES = {  # docs/method.md, "Published scale figures": (rows, cols, images)
    "1": (248, 240, 207),
    "2": (500, 414, 437),
    "3": (2750, 4671, 380),
}


def simulated_states(rows: int, cols: int, images: int, *, chunk_px: int = 512) -> xr.DataArray:
    """Random CLEAR/CLOUDY/MISSING states (40/50/10 %), one image every 5 days from 2019-01-01."""
    rng = da.random.default_rng(42)
    u = rng.random((images, rows, cols), chunks=(images, chunk_px, chunk_px), dtype="float32")
    state = da.where(u < 0.4, 1, da.where(u < 0.9, 0, -1)).astype("int8")
    times = pd.date_range("2019-01-01", periods=images, freq="5D")
    return xr.DataArray(
        state, dims=("time", "y", "x"),
        coords={"time": times, "y": -10.0 * np.arange(rows), "x": 10.0 * np.arange(cols)},
    )


def run(case: str) -> None:
    rows, cols, images = CASES[case]
    state = simulated_states(rows, cols, images)
    end = (pd.Timestamp(state.time.values[-1]) + pd.Timedelta(days=1)).date().isoformat()
    params = GapParams(start="2019-01-01", end=end)
    t0 = time.perf_counter()
    stats = gap_statistics(state, params)
    with dask.config.set(scheduler="threads"):
        # reduce to per-statistic means so that only the statistics, not the stack, are kept
        means = stats.mean(("y", "x")).compute()
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"case {case}: {rows} x {cols} px, {images} images ({rows * cols * images / 1e6:,.0f} M pixel-dates)")
    print(f"  gap statistics: {wall:7.1f} s wall, {rows * cols * images / wall / 1e6:,.0f} M pixel-dates/s, "
          f"peak RSS {peak_mb:,.0f} MB")
    print("  AOI means: " + ", ".join(f"{s}={float(v):.2f}" for s, v in zip(means.stat.values, means.values)))


if __name__ == "__main__":
    for case in sys.argv[1:] or ["1", "2"]:
        run(case)
