"""Gap characterization on simulated state stacks of the published sizes: wall time and memory.

Run on demand: ``.venv/bin/python benchmarks/bench_gaps.py [case ...]`` (cases 1, 2, 3).
States are drawn at random per pixel and date (timing does not depend on cloud shapes) into
memory before the timed part (int8: case 3, 2750 x 4671 px and 380 images, takes 4.9 GB), so
that the time is the statistics' own, not the random generator's. Prints wall time and peak
resident memory, and the time to classify an SCL stack of those states (uint8 classes, in memory,
chunked as a reader's windows) into states, as a run from files does first.
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

from optsar_nb.local.gaps import cloud_state, gap_statistics
from optsar_nb.params import GapParams

REPEATS = 3  # wall times on a shared machine vary by 2x from run to run
CASES = {  # docs/method.md, "Published scale figures": (rows, cols, images)
    "1": (248, 240, 207),
    "2": (500, 414, 437),
    "3": (2750, 4671, 380),
}


def simulated_states(rows: int, cols: int, images: int, *, chunk_px: int = 512) -> xr.DataArray:
    """Random CLEAR/CLOUDY/MISSING states (40/50/10 %), one image every 5 days from 2019-01-01,
    drawn into memory (int8; case 3 takes 4.9 GB) block by block."""
    rng = np.random.default_rng(42)
    classes = np.array([1] * 4 + [0] * 5 + [-1], dtype="int8")  # a uniform digit -> its state
    state = np.empty((images, rows, cols), dtype="int8")
    for r in range(0, rows, chunk_px):
        for c in range(0, cols, chunk_px):
            u = rng.integers(0, 10, size=(images, min(chunk_px, rows - r), min(chunk_px, cols - c)), dtype="uint8")
            state[:, r:r + chunk_px, c:c + chunk_px] = classes[u]
    times = pd.date_range("2019-01-01", periods=images, freq="5D")
    return xr.DataArray(
        state, dims=("time", "y", "x"),
        coords={"time": times, "y": -10.0 * np.arange(rows), "x": 10.0 * np.arange(cols)},
    )


def run(case: str) -> None:
    rows, cols, images = CASES[case]
    t0 = time.perf_counter()
    state = simulated_states(rows, cols, images)
    drawing = time.perf_counter() - t0
    drawn_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    end = (pd.Timestamp(state.time.values[-1]) + pd.Timedelta(days=1)).date().isoformat()
    params = GapParams(start="2019-01-01", end=end)
    with dask.config.set(scheduler="threads"):
        gap_statistics(state[:, :16, :16], params).compute()  # compiled code loaded: not timed
        walls = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            # reduce to per-statistic means so that only the statistics, not the stack, are kept
            means = gap_statistics(state, params).mean(("y", "x")).compute()
            walls.append(time.perf_counter() - t0)
    wall = min(walls)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"case {case}: {rows} x {cols} px, {images} images ({rows * cols * images / 1e6:,.0f} M pixel-dates; "
          f"states drawn in {drawing:.1f} s, not timed)")
    print(f"  gap statistics: {wall:7.2f} s wall (best of {REPEATS}; median {np.median(walls):.2f} s), "
          f"{rows * cols * images / wall / 1e6:,.0f} M pixel-dates/s, peak RSS {peak_mb:,.0f} MB "
          f"({drawn_mb:,.0f} MB once the states were drawn)")
    print("  AOI means: " + ", ".join(f"{s}={float(v):.2f}" for s, v in zip(means.stat.values, means.values)))
    scl = np.array([4, 8, 0], dtype="uint8")[1 - state.values]  # clear -> 4 (vegetation), cloudy -> 8, missing -> 0
    scl = xr.DataArray(da.from_array(scl, chunks=(-1, 256, 256)), dims=state.dims, coords=state.coords,
                       attrs={"nodata": 0})
    walls = []
    with dask.config.set(scheduler="threads"):
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            same = bool((cloud_state(scl, "scl").data == state.data).all().compute())
            walls.append(time.perf_counter() - t0)
    print(f"  SCL classes -> states: {min(walls):7.2f} s wall (best of {REPEATS}), states as drawn: {same}")


if __name__ == "__main__":
    for case in sys.argv[1:] or ["1", "2"]:
        run(case)
