"""The gap iteration of docs/method.md A.4, compiled: one pass over a block's states (``gaps.gap_block``).

The loop reads the (time, pixel) states in time order, contiguously, and writes each pixel's
gaps to its own row of a (pixel, time) buffer, whose unused slots hold ``SORT_LAST`` so that a
row sorts with its gaps first (numpy's vectorised sort then sorts all rows at once, several
times faster than a compiled per-row sort). Arithmetic follows the vectorised form this
replaced, to the bit: gaps in float32 (whole days, exact up to 2**24 days), the variance
accumulated in float64 from float32 deviations about the float32 mean. ``nogil``: dask's
threads run blocks in parallel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..missions import CLEAR, MISSING

SORT_LAST = np.float32(3e38)


@njit(cache=True, error_model="numpy", nogil=True)
def gap_pass(state, days, revisit_days):
    """(time, pixel) int8 states and ascending whole days -> (gaps (pixel, time) float32, clear
    count, valid count, last clear day (float32; -revisit_days without one), mean (float64),
    variance (float64)); mean and variance are 0 where a pixel has no clear day."""
    n_time, n_px = state.shape
    init = np.float32(-revisit_days)
    t = days.astype(np.float32)
    last = np.full(n_px, init, dtype=np.float32)
    count = np.zeros(n_px, dtype=np.int64)
    valid = np.zeros(n_px, dtype=np.int64)
    gaps = np.full((n_px, n_time), SORT_LAST, dtype=np.float32)
    for i in range(n_time):
        for p in range(n_px):
            s = state[i, p]
            if s != MISSING:
                valid[p] += 1
            if s == CLEAR:
                gaps[p, count[p]] = t[i] - last[p]
                count[p] += 1
                last[p] = t[i]
    mean = np.zeros(n_px)
    var = np.zeros(n_px)
    for p in range(n_px):
        n = count[p]
        if n == 0:
            continue
        m = (np.float64(last[p]) - np.float64(init)) / n  # sum of gaps = last clear day - init
        m32 = np.float32(m)
        acc = 0.0
        for j in range(n):
            d = np.float64(np.float32(gaps[p, j] - m32))
            acc += d * d
        mean[p] = m
        var[p] = acc / n
    return gaps, count, valid, last, mean, var
