"""B.9 over spatial blocks: each image's standardization statistics as AOI-wide reductions.

B.9 maps an image's smoothed prediction onto the distribution of its clear observations, from the
mean and two interval means (the mean of the values between two quantiles) of each, over the same
pixels (:func:`~optsar_nb.local.steps_post.standardize_one` does it on one whole image). Here no
image is ever gathered in one place: every pass (compiled) reads blocks (time, y, x) of the staged
stacks and returns small per-image results combined in a tree of tasks, so the statistics are
reductions like the others of the job and run on any dask scheduler. The quantiles are exact:
the order statistics of the whole image, interpolated as numpy's default ("linear") does.

1. per image: count and sums of both series (observation, prediction), the prediction's range;
2. a histogram of N_BINS equal bins (observations on [-1, 1], where NDVI lies; predictions on
   their range), which gives the bin holding each order statistic a quantile needs and how many
   values lie below that bin;
3. the values of those bins only (a few per thousand of an image), gathered and sorted: the order
   statistics, hence the quantiles;
4. the sums and counts of the values within each interval: the second pass also sums the values
   of each bin, and the bins an interval ends in are among the third pass's;
then each block is calibrated with its images' statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np
from numba import njit

from ..missions import CLEAR
from ..params import InfillParams
from . import _postprocess, _store

N_BINS = 4096
OBS, PRED = 0, 1  # the two series
HISTOGRAM_GROUPS = 16  # tasks of the histogram pass (each sums a share of the blocks)


@dataclass
class Blocks:
    """The staged stacks B.9 reads (numpy or Zarr, (T, H, W); ``donor`` (H, W)) and what it needs."""

    smooth: object  # the PCA-smoothed prediction (float64, or the prediction when not smoothed)
    obs: object
    state: object
    donor: object
    labels: np.ndarray
    cloud: np.ndarray  # (T,) each image's cloud fraction over the AOI (its Cloud_cover / 100)
    params: InfillParams

    def read(self, rows: slice, cols: slice) -> tuple:
        """A block's (T, h, w) observations, predictions and states, its (h, w) artificial clouds
        and the (T,) validation images (on those, the statistics use only the pixels the
        artificial clouds leave visible: nothing hidden leaks in)."""
        return (np.asarray(self.obs[:, rows, cols]), np.asarray(self.smooth[:, rows, cols]),
                np.asarray(self.state[:, rows, cols]), np.asarray(self.donor[rows, cols]),
                self.labels == "validation")


# ---------------------------------------------------------------------------------------------
# compiled passes over one block: a value enters the statistics where the pixel is clear, not
# artificially clouded on a validation image, and both series are finite


@njit(cache=True, nogil=True, inline="always")
def _used(o, p, s, hidden) -> bool:
    return s == CLEAR and not hidden and np.isfinite(o) and np.isfinite(p)


@njit(cache=True, nogil=True, inline="always")
def _bin(v, lo, scale) -> int:
    """The histogram bin of a value: monotone in the value, the same in every pass."""
    return int(min(max((v - lo) * scale, 0.0), N_BINS - 1))


@njit(cache=True, nogil=True)
def _ranges_kernel(obs, pred, state, donor, validation, out):
    """out (5, T): n, sum obs, sum pred, min pred, max pred."""
    T, h, w = state.shape
    for t in range(T):
        for y in range(h):
            for x in range(w):
                o, p = np.float64(obs[t, y, x]), np.float64(pred[t, y, x])
                if _used(o, p, state[t, y, x], validation[t] and donor[y, x]):
                    out[0, t] += 1
                    out[1, t] += o
                    out[2, t] += p
                    out[3, t] = min(out[3, t], p)
                    out[4, t] = max(out[4, t], p)


@njit(cache=True, nogil=True)
def _histogram_kernel(obs, pred, state, donor, validation, lo, scale, hist, sums):
    """Per (series, image, bin): the count (``hist``) and the sum (``sums``) of the used values."""
    T, h, w = state.shape
    for t in range(T):
        for y in range(h):
            for x in range(w):
                o, p = np.float64(obs[t, y, x]), np.float64(pred[t, y, x])
                if _used(o, p, state[t, y, x], validation[t] and donor[y, x]):
                    b = _bin(o, lo[0, t], scale[0, t])
                    hist[0, t, b] += 1
                    sums[0, t, b] += o
                    b = _bin(p, lo[1, t], scale[1, t])
                    hist[1, t, b] += 1
                    sums[1, t, b] += p


@njit(cache=True, nogil=True)
def _gather_kernel(obs, pred, state, donor, validation, lo, scale, wanted, index, values) -> int:
    """Writes the (series, image, bin) flat index and the value of every used value in a
    ``wanted`` bin into ``index``/``values`` (as many as they hold); returns how many there are."""
    T, h, w = state.shape
    k = 0
    for t in range(T):
        for y in range(h):
            for x in range(w):
                o, p = np.float64(obs[t, y, x]), np.float64(pred[t, y, x])
                if _used(o, p, state[t, y, x], validation[t] and donor[y, x]):
                    for series, v in ((0, o), (1, p)):
                        b = _bin(v, lo[series, t], scale[series, t])
                        if wanted[series, t, b]:
                            if k < index.size:
                                index[k] = (series * T + t) * N_BINS + b
                                values[k] = v
                            k += 1
    return k


def ranges_of(b: Blocks, rows, cols) -> np.ndarray:
    """The first pass on one block: (5, T) per image n, sum obs, sum pred, min pred, max pred."""
    data = b.read(rows, cols)
    out = np.zeros((5, data[2].shape[0]))
    out[3], out[4] = np.inf, -np.inf
    _ranges_kernel(*data, out)
    return out


def merge_ranges(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = a + b
    out[3], out[4] = np.minimum(a[3], b[3]), np.maximum(a[4], b[4])
    return out


def _histogram(b: Blocks, group, lo, scale) -> tuple[np.ndarray, np.ndarray]:
    """The histogram and bin sums of a group of blocks ((rows, cols) slices), accumulated in place."""
    hist = np.zeros((2, lo.shape[1], N_BINS), np.int32)
    sums = np.zeros(hist.shape)
    for rows, cols in group:
        _histogram_kernel(*b.read(rows, cols), lo, scale, hist, sums)
    return hist, sums


def _add_pairs(a: tuple, b: tuple) -> tuple:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _gather(b: Blocks, rows, cols, lo, scale, wanted, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """``capacity``: how many values the wanted bins hold over the whole AOI (an upper bound here)."""
    index, values = np.empty(capacity, np.int64), np.empty(capacity)
    k = _gather_kernel(*b.read(rows, cols), lo, scale, wanted, index, values)
    return index[:k].copy(), values[:k].copy()


def quantile_positions(n: int, q: float) -> tuple[int, int, float]:
    """The order statistics (ranks, 0-based) and weight numpy's "linear" quantile of ``n`` sorted
    values interpolates between: as numpy computes them (virtual index (n - 1) q)."""
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return n - 1, n - 1, 0.0
    if virtual < 0:
        return 0, 0, 0.0
    below = int(np.floor(virtual))
    return below, below + 1, float(np.float64(virtual) - below)


def lerp(a: float, b: float, t: float) -> float:
    """numpy's interpolation between two order statistics (exact in both ends)."""
    diff = np.float64(b) - np.float64(a)
    return float(np.float64(b) - diff * (1 - t)) if t >= 0.5 else float(np.float64(a) + diff * t)


def statistics(b: Blocks, blocks, workers: int | None, ranges: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per image: ``n`` pixels used, ``apply`` (B.9 applies: cloud cover under the threshold and
    a pixel used) and (2, T, 3) ``stats`` [mean, lower-interval mean, upper-interval mean] of the
    observation and the prediction (NaN where an image has no used pixel). ``ranges``: the
    first pass's result (:func:`ranges_of`, summed over the blocks with :func:`merge_ranges`) when
    an earlier pass over the blocks computed it."""
    def total(tasks, combine):
        return _store.total(tasks, combine, processes=False, workers=workers)

    r = ranges if ranges is not None else total([dask.delayed(ranges_of)(b, rows, cols) for rows, cols in blocks],
                                                merge_ranges)
    n, T = r[0].astype(np.int64), r.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = r[1:3] / n
        # observations are NDVI, in [-1, 1] (any beyond fall in the end bins: still exact, only slower);
        # predictions between their extremes
        lo = np.stack([np.full(T, -1.0), np.where(n > 0, r[3], 0.0)])
        width = np.stack([np.full(T, 2.0), np.where(n > 0, r[4] - r[3], 0.0)])
        scale = np.where(width > 0, N_BINS / width, 0.0)
    # a task per group of blocks, not per block: fewer (2, T, N_BINS) partials to allocate, add and
    # move between workers; a fixed number of groups, so that the sums' order does not depend on
    # the machine
    groups = [g for g in np.array_split(np.arange(len(blocks)), HISTOGRAM_GROUPS) if g.size]
    hist, bin_sums = total([dask.delayed(_histogram)(b, [blocks[i] for i in g], lo, scale) for g in groups],
                           _add_pairs)
    hist = hist.astype(np.int64)
    cum = np.cumsum(hist, axis=2)
    p = b.params
    qs = (p.standardize_lower[0], p.standardize_lower[1], p.standardize_upper[0], p.standardize_upper[1])
    # the order statistics every quantile needs: (series, image, rank) -> (bin, count below the bin)
    need, wanted = {}, np.zeros((2, T, N_BINS), bool)
    for s in range(2):
        for t in np.flatnonzero(n > 0):
            for q in qs:
                for rank in quantile_positions(int(n[t]), q)[:2]:
                    bin_ = int(np.searchsorted(cum[s, t], rank, side="right"))
                    need[s, t, rank] = (bin_, int(cum[s, t, bin_] - hist[s, t, bin_]))
                    wanted[s, t, bin_] = True
    capacity = int(hist[wanted].sum())
    parts = _store.compute([dask.delayed(_gather)(b, rows, cols, lo, scale, wanted, capacity) for rows, cols in blocks],
                           processes=False, workers=workers)
    index, vals = np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])
    order = np.lexsort((vals, index))
    index, vals = index[order], vals[order]
    start = np.searchsorted(index, np.arange(2 * T * N_BINS + 1))  # first value of each (series, image, bin)
    bounds = np.full((2, T, 2, 2), np.nan)
    for s in range(2):
        for t in np.flatnonzero(n > 0):
            for k, q in enumerate(qs):
                below, above, weight = quantile_positions(int(n[t]), q)
                ends = []
                for rank in (below, above):
                    bin_, count_below = need[s, t, rank]
                    ends.append(vals[start[(s * T + t) * N_BINS + bin_] + rank - count_below])
                bounds[s, t, k // 2, k % 2] = lerp(ends[0], ends[1], weight)
    # each interval's sum and count: the bins strictly between its ends' bins lie wholly inside it;
    # its ends' bins hold an order statistic it was interpolated from (or nothing), so their
    # values were gathered: those within it are added one by one
    sums = np.zeros((2, T, 2, 2))
    for s in range(2):
        for t in np.flatnonzero(n > 0):
            for k in range(2):
                a, z = bounds[s, t, k]
                first, last = _bin(a, lo[s, t], scale[s, t]), _bin(z, lo[s, t], scale[s, t])
                sums[s, t, k] = bin_sums[s, t, first + 1 : last].sum(), hist[s, t, first + 1 : last].sum()
                for bin_ in {first, last}:
                    i = (s * T + t) * N_BINS + bin_
                    v = vals[start[i] : start[i + 1]]
                    v = v[(a <= v) & (v <= z)]
                    sums[s, t, k] += v.sum(), v.size
    with np.errstate(invalid="ignore", divide="ignore"):
        interval = np.where(sums[..., 1] > 0, sums[..., 0] / sums[..., 1], bounds.mean(axis=3))  # none: the midpoint
    stats = np.concatenate([means[..., None], interval], axis=2)
    return {"n": n, "apply": (b.cloud < p.standardize_max_cloud) & (n > 0),
            "stats": np.where((n > 0)[:, None], stats, np.nan)}


def calibrated(smooth: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """B.9 applied to a block's (T, h, w) smoothed prediction with its images' statistics
    (:func:`statistics`): the calibrated prediction, float32."""
    cal = smooth.astype("float32")
    for t in np.flatnonzero(stats["apply"]):
        _postprocess.standardize_image(smooth[t], stats["stats"][OBS, t], stats["stats"][PRED, t], out=cal[t])
    return cal


def calibrated_block(b: Blocks, stats: dict[str, np.ndarray], rows: slice, cols: slice) -> np.ndarray:
    """The calibrated prediction of a block of ``b`` (the argument order of ``_blocks.BlockArray``)."""
    return calibrated(np.asarray(b.smooth[:, rows, cols]), stats)


def mae_sums(obs: np.ndarray, state: np.ndarray, cal: np.ndarray) -> np.ndarray:
    """(2, T) [sum |obs - calibrated|, count] over the clear pixels of a block's (T, ...)
    observations, states and calibrated predictions: B.10's per-image MAE (:func:`mae`), summed
    over blocks."""
    T = state.shape[0]
    obs, state, cal = (a.reshape(T, -1) for a in (obs, state, cal))
    ok = (state == CLEAR) & np.isfinite(obs) & np.isfinite(cal)
    err = np.where(ok, np.abs(obs.astype("float64") - cal), 0.0)
    return np.stack([err.sum(axis=1), ok.sum(axis=1)])


def mae(sums: np.ndarray) -> np.ndarray:
    """The per-image MAE from the blocks' :func:`mae_sums` summed (-1 where an image has no clear pixel)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[1] > 0, sums[0] / sums[1], -1.0)
