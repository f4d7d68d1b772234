"""B.9 over spatial blocks: each image's standardization statistics as AOI-wide reductions.

B.9 maps an image's smoothed prediction onto the distribution of its clear observations, from the
mean and two interval means (the mean of the values between two quantiles) of each, over the same
pixels (:func:`~optsar_nb.local.steps_post.standardize_one` does it on one whole image). Here no
image is ever gathered in one place: every pass reads blocks (time, y, x) of the staged stacks
and returns small per-image results that are summed, so the statistics are reductions like the
others of the job, and run on any dask scheduler. The quantiles are exact: the order statistics
of the whole image, interpolated as numpy's default ("linear") does.

1. per image and series (observation, prediction): count, sum, minimum and maximum;
2. a histogram of N_BINS equal bins between minimum and maximum, which gives the bin holding each
   order statistic a quantile needs and how many values lie below that bin;
3. the values of those bins only (a few per thousand of an image), gathered and sorted: the order
   statistics, hence the quantiles;
4. the sums and counts of the values within each interval;
then each block is calibrated with its images' statistics, and the per-image MAE summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np

from ..missions import CLEAR, MISSING
from ..params import InfillParams
from . import _postprocess, _store

N_BINS = 4096
OBS, PRED = 0, 1  # the two series


@dataclass
class Blocks:
    """The staged stacks B.9 reads (numpy or Zarr, (T, H, W); ``donor`` (H, W)) and what it needs."""

    smooth: object  # the PCA-smoothed prediction (float64, or the prediction when not smoothed)
    obs: object
    state: object
    donor: object
    labels: np.ndarray
    params: InfillParams

    def values(self, rows: slice, cols: slice):
        """A block's (2, T, n) float64 observations and predictions, the (T, n) pixels whose values
        enter the statistics, and the (T, n) clear and valid (not MISSING) pixels."""
        st = np.asarray(self.state[:, rows, cols])
        T = st.shape[0]
        st = st.reshape(T, -1)
        vals = np.stack([np.asarray(self.obs[:, rows, cols], dtype="float64").reshape(T, -1),
                         np.asarray(self.smooth[:, rows, cols], dtype="float64").reshape(T, -1)])
        clear = st == CLEAR
        # on a validation pair, the pixels its artificial clouds leave visible (nothing hidden leaks in)
        used = clear & ~((self.labels == "validation")[:, None] & np.asarray(self.donor[rows, cols]).reshape(1, -1))
        ok = used & np.isfinite(vals).all(axis=0)
        return vals, ok, clear, st != MISSING


def _ranges(b: Blocks, rows, cols) -> dict[str, np.ndarray]:
    vals, ok, clear, valid = b.values(rows, cols)
    return {"n": ok.sum(axis=1), "sum": np.where(ok, vals, 0.0).sum(axis=2),
            "min": np.where(ok, vals, np.inf).min(axis=2), "max": np.where(ok, vals, -np.inf).max(axis=2),
            "clear": clear.sum(axis=1), "valid": valid.sum(axis=1)}


def _bins(vals: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(2, T, n) bin of each value (meaningful where the value is used): monotone in the value."""
    with np.errstate(invalid="ignore"):
        b = (vals - lo[..., None]) * scale[..., None]
    return np.clip(np.nan_to_num(b, nan=0.0), 0, N_BINS - 1).astype(np.int64)


def _histogram(b: Blocks, rows, cols, lo, scale) -> np.ndarray:
    vals, ok, _, _ = b.values(rows, cols)
    series = np.arange(vals.shape[0] * vals.shape[1]).reshape(vals.shape[0], vals.shape[1], 1)
    index = series * N_BINS + _bins(vals, lo, scale)
    return np.bincount(index[np.broadcast_to(ok, vals.shape)], minlength=vals.shape[0] * vals.shape[1] * N_BINS)


def _gather(b: Blocks, rows, cols, lo, scale, wanted) -> tuple[np.ndarray, np.ndarray]:
    """The (series x image x bin) index and value of the block's used values in ``wanted`` bins."""
    vals, ok, _, _ = b.values(rows, cols)
    series = np.arange(vals.shape[0] * vals.shape[1]).reshape(vals.shape[0], vals.shape[1], 1)
    index = series * N_BINS + _bins(vals, lo, scale)
    pick = np.broadcast_to(ok, vals.shape) & wanted.ravel()[index]
    return index[pick], vals[pick]


def _interval_sums(b: Blocks, rows, cols, bounds) -> np.ndarray:
    """(2, T, 2 intervals, [sum, count]) of the used values within each interval ``bounds`` (2, T, 2, 2)."""
    vals, ok, _, _ = b.values(rows, cols)
    out = np.zeros((*vals.shape[:2], 2, 2))
    for k in range(2):
        inside = ok & (vals >= bounds[..., k, 0, None]) & (vals <= bounds[..., k, 1, None])
        out[:, :, k, 0] = np.where(inside, vals, 0.0).sum(axis=2)
        out[:, :, k, 1] = inside.sum(axis=2)
    return out


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


def _sum(parts: list) -> object:
    return sum(parts[1:], parts[0])


def statistics(b: Blocks, blocks, workers: int | None) -> dict[str, np.ndarray]:
    """Per image: ``cloud`` fraction, ``n`` pixels used, ``apply`` (B.9 applies) and (2, T, 3)
    ``stats`` [mean, lower-interval mean, upper-interval mean] of the observation and the
    prediction (NaN where an image has no used pixel)."""
    def run(fn, *args):
        return _store.compute([dask.delayed(fn)(b, rows, cols, *args) for rows, cols in blocks],
                              processes=False, workers=workers)

    ranges = run(_ranges)
    r = {k: _sum([p[k] for p in ranges]) if k not in ("min", "max") else
         (np.minimum if k == "min" else np.maximum).reduce([p[k] for p in ranges]) for k in ranges[0]}
    n, (S, T) = r["n"], r["sum"].shape
    lo = np.where(n > 0, r["min"], 0.0)
    width = np.where(n > 0, r["max"] - lo, 0.0)
    with np.errstate(divide="ignore"):
        scale = np.where(width > 0, N_BINS / width, 0.0)
    hist = _sum(run(_histogram, lo, scale)).reshape(S, T, N_BINS)
    cum = np.cumsum(hist, axis=2)
    p = b.params
    qs = (p.standardize_lower[0], p.standardize_lower[1], p.standardize_upper[0], p.standardize_upper[1])
    # the order statistics every quantile needs: (series, image, rank) -> (bin, count below the bin)
    need, wanted = {}, np.zeros((S, T, N_BINS), bool)
    for s in range(S):
        for t in np.flatnonzero(n > 0):
            for q in qs:
                for rank in quantile_positions(int(n[t]), q)[:2]:
                    bin_ = int(np.searchsorted(cum[s, t], rank, side="right"))
                    need[s, t, rank] = (bin_, int(cum[s, t, bin_] - hist[s, t, bin_]))
                    wanted[s, t, bin_] = True
    parts = run(_gather, lo, scale, wanted)
    index, vals = np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])
    order = np.lexsort((vals, index))
    index, vals = index[order], vals[order]
    start = np.searchsorted(index, np.arange(S * T * N_BINS))  # first value of each (series, image, bin)
    bounds = np.full((S, T, 2, 2), np.nan)
    for s in range(S):
        for t in np.flatnonzero(n > 0):
            for k, q in enumerate(qs):
                below, above, weight = quantile_positions(int(n[t]), q)
                ends = []
                for rank in (below, above):
                    bin_, count_below = need[s, t, rank]
                    ends.append(vals[start[(s * T + t) * N_BINS + bin_] + rank - count_below])
                bounds[s, t, k // 2, k % 2] = lerp(ends[0], ends[1], weight)
    sums = _sum(run(_interval_sums, bounds))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums[..., 0] / sums[..., 1]
        means = np.where(sums[..., 1] > 0, means, bounds.mean(axis=3))  # no value inside: the midpoint
        stats = np.concatenate([(r["sum"] / n)[..., None], means], axis=2)
    cloud = 1.0 - r["clear"] / np.maximum(r["valid"], 1)
    return {"cloud": cloud, "n": n, "apply": (cloud < p.standardize_max_cloud) & (n > 0),
            "stats": np.where((n > 0)[..., None], stats, np.nan)}


def calibrate_block(b: Blocks, rows, cols, out, stats: dict[str, np.ndarray]) -> np.ndarray:
    """B.9 on one block, written into ``out`` (T, H, W) float32; returns its (2, T) MAE sums
    [sum |obs - calibrated|, count] over the clear pixels (B.10)."""
    smooth = np.asarray(b.smooth[:, rows, cols])
    cal = smooth.astype("float32")
    for t in np.flatnonzero(stats["apply"]):
        cal[t] = _postprocess.standardize_image(smooth[t], stats["stats"][OBS, t], stats["stats"][PRED, t])
    out[:, rows, cols] = cal
    obs = np.asarray(b.obs[:, rows, cols])
    ok = (np.asarray(b.state[:, rows, cols]) == CLEAR) & np.isfinite(obs) & np.isfinite(cal)
    err = np.where(ok, np.abs(obs.astype("float64") - cal), 0.0)
    T = cal.shape[0]
    return np.stack([err.reshape(T, -1).sum(axis=1), ok.reshape(T, -1).sum(axis=1)])


def calibrate(b: Blocks, blocks, out, workers: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """B.9-B.10 over all blocks: the calibrated predictions written into ``out``; returns the
    statistics (:func:`statistics`) and the per-image MAE (-1 where an image has no clear pixel)."""
    stats = statistics(b, blocks, workers)
    sums = _sum(_store.compute([dask.delayed(calibrate_block)(b, rows, cols, out, stats) for rows, cols in blocks],
                               processes=False, workers=workers))
    with np.errstate(invalid="ignore", divide="ignore"):
        return stats, np.where(sums[1] > 0, sums[0] / sums[1], -1.0)
