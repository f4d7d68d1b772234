"""The fused gap-free NDVI (docs/method.md part C): interpolation anchored on clear views plus the S1 anomaly.

Per pixel and date, the estimate is the linear interpolation in time between the nearest clear
observations before and after (the anchors), corrected by what Sentinel-1 says happened since:

    fused(t) = I(t) + alpha_pixel * w_bin(t) . [S(t) - I_S(t)] + m_bin(t) * [M - I(t)]

where ``S`` are the pixel's neighbourhood-mean VV and VH (the B.3-B.4 covariates ``VV_Nmean``,
``VH_Nmean``), ``I_S`` their interpolation between the same anchor dates, ``M`` the pixel's mean
of its clear observations, ``w_bin`` and ``m_bin`` weights per bin of distance to the nearest
anchor (``GAP_BINS``; far from clear views the estimate may lean on the pixel's climatology),
and ``alpha_pixel`` how far the S1 correction holds at that pixel. Anchoring cancels whatever is
constant in the S1 error (a pixel's bias), which is why it works where the S1 prediction alone
loses to interpolation; with all weights 0 it *is* linear interpolation.

Everything is learned on the training observations only, by leaving them out: each clear
training observation is predicted from the ``skip``-th training observations before and after
it (``LEAVE_OUT_SKIPS``: 1 = its neighbours, 2 and 3 open the longer gaps that clouds make).
``w_bin`` and ``m_bin`` are a least-absolute-deviation fit pooled over the AOI (S1 errors are
heavy-tailed), in which the two-sided bins share a form linear in the log of the distance;
``alpha_pixel`` is the pixel's own least-squares scale of that correction, shrunk towards 1 by
``fusion_prior_samples`` pseudo-samples. The standard error is the 68.27th percentile of the
leave-out errors of the fused estimate in finer distance bins (``SE_EDGES_*``).

All functions work on one block of pixels, (T, N) series with the full time axis, and are
pure; AOI-wide quantities (the weights, the SE scale) are fitted from what blocks return.
"""

from __future__ import annotations

import numpy as np

from . import _fusion_kernels as _kernels
from ._fusion_kernels import GAP_EDGES, SE_EDGES_ONE_SIDED, SE_EDGES_TWO_SIDED

GAP_BINS = ("<=10", "10-20", "20-40", ">40", "one-sided")  # days to the nearest clear training view
BIN_DAYS = (5.0, 15.0, 30.0, 60.0)  # a typical distance (days) of each two-sided bin, for the weights' form
# standard-error bins: finer than GAP_BINS and nested in them (two-sided, then one-sided)
N_SE_BINS = len(SE_EDGES_TWO_SIDED) + 1 + len(SE_EDGES_ONE_SIDED) + 1
LEAVE_OUT_SKIPS = (1, 2, 3)
HIST_STEP = 0.0025  # NDVI units per bin of the absolute-error histograms
HIST_BINS = 801  # 0 to 2 in HIST_STEP, the last bin holds everything above
SE_QUANTILE = 0.6827  # share of a normal population within one standard deviation
MIN_ROWS_PER_BIN = 200  # fewer leave-out samples (two-sided, or one-sided): their weights stay 0


def gap_bin(distance: np.ndarray, two_sided: np.ndarray) -> np.ndarray:
    """Index into GAP_BINS (0-3 two-sided by distance, 4 one-sided); -1 without anchors."""
    b = np.searchsorted(np.asarray(GAP_EDGES), np.nan_to_num(distance), side="left")
    return np.where(np.isnan(distance), -1, np.where(two_sided, b, len(GAP_EDGES) + 1))


def se_bin(distance: np.ndarray, two_sided: np.ndarray) -> np.ndarray:
    """Index of the standard-error bin (two-sided bins first); -1 without anchors."""
    d = np.nan_to_num(distance)
    two = np.searchsorted(np.asarray(SE_EDGES_TWO_SIDED), d, side="left")
    one = len(SE_EDGES_TWO_SIDED) + 1 + np.searchsorted(np.asarray(SE_EDGES_ONE_SIDED), d, side="left")
    return np.where(np.isnan(distance), -1, np.where(two_sided, two, one))


def _float(a: np.ndarray) -> np.ndarray:
    """float32 or float64 as given (the staged covariates are float32), anything else as float64."""
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype("float64")


def _pixel_major(a: np.ndarray) -> np.ndarray:
    """A (..., T, N) array as a contiguous (..., N, T) copy: each pixel's series in one run of memory."""
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def leave_out_rows(obs: np.ndarray, train: np.ndarray, s1: np.ndarray, days: np.ndarray,
                   skips=LEAVE_OUT_SKIPS) -> dict[str, np.ndarray]:
    """Leave-out samples of the training observations, for learning the weights.

    ``obs`` (T, N) NDVI, ``train`` (T, N) the training observations, ``s1`` (K, T, N). Each
    training observation j of a pixel is predicted from its training observations j - skip and
    j + skip (or the one that exists). Returns rows: ``bin`` (GAP_BINS index), ``resid`` = obs -
    interpolation, ``dep`` (n, K + 1): the S1 departures and the pixel's mean of the training
    observations left in (all but those strictly between the two anchors) minus the
    interpolation, ``se_bin`` and ``pixel`` (column index in the block).
    """
    obs, train = np.asarray(obs, dtype="float64"), np.asarray(train, dtype=bool)
    s1 = _float(s1)
    size = int(train.sum()) * len(skips)
    pixel, resid = np.empty(size, np.int64), np.empty(size)
    bins, dep = np.empty((2, size), np.int64), np.empty((size, s1.shape[0] + 1))
    n = _kernels.leave_out_rows(_pixel_major(obs), _pixel_major(train), _pixel_major(s1),
                                np.asarray(days, dtype="float64"), np.asarray(skips, np.int64), pixel, resid,
                                bins, dep)
    return {"bin": bins[0, :n], "se_bin": bins[1, :n], "resid": resid[:n], "dep": dep[:n], "pixel": pixel[:n]}


def _lad(X: np.ndarray, r: np.ndarray, iterations: int) -> np.ndarray:
    """Least-absolute-deviation fit of r on X by IRLS (weights 1 / max(|e|, 1e-3)), no intercept."""
    w = np.linalg.lstsq(X, r, rcond=None)[0]
    for _ in range(iterations):
        sw = np.sqrt(1.0 / np.maximum(np.abs(r - X @ w), 1e-3))
        w = np.linalg.lstsq(X * sw[:, None], r * sw, rcond=None)[0]
    return w


def fit_weights(bins: np.ndarray, resid: np.ndarray, dep: np.ndarray, *, iterations: int = 30) -> np.ndarray:
    """(len(GAP_BINS), K + 1) least-absolute-deviation weights of the residuals on ``dep``, per bin.

    Two-sided bins share one fit in which each weight is linear in the log of the bin's typical
    distance (BIN_DAYS): w_bin = a + c log(BIN_DAYS[bin] / 15). Measured on Flanders 2017 (8
    splits), this 2 (K + 1)-parameter form generalised better than a free fit per bin, whose
    weights changed from split to split and lost to interpolation on test pixels 10-20 days from
    a clear view. One-sided rows (before the first or after the last clear view) have their own
    fit. No intercept: interpolation is unbiased where S1 is silent. Fewer than
    MIN_ROWS_PER_BIN rows leave the weights at 0 (pure interpolation).
    """
    out = np.zeros((len(GAP_BINS), dep.shape[1]))
    dep, resid = np.asarray(dep, dtype="float64"), np.asarray(resid, dtype="float64")
    two = bins < len(BIN_DAYS)
    if two.sum() >= MIN_ROWS_PER_BIN:
        scale = np.log(np.asarray(BIN_DAYS) / 15.0)
        X = np.column_stack([dep[two], dep[two] * scale[bins[two]][:, None]])
        w = _lad(X, resid[two], iterations)
        k = dep.shape[1]
        out[: len(BIN_DAYS)] = w[:k] + np.outer(scale, w[k:])
    one = bins == len(BIN_DAYS)
    if one.sum() >= MIN_ROWS_PER_BIN:
        out[-1] = _lad(dep[one], resid[one], iterations)
    return out


def pixel_reliability(obs: np.ndarray, train: np.ndarray, s1: np.ndarray, days: np.ndarray, weights: np.ndarray,
                      prior_samples: float, skips=LEAVE_OUT_SKIPS) -> tuple[np.ndarray, np.ndarray]:
    """(N,) per-pixel scale of the S1 correction, and the fused estimate's leave-out errors.

    From each pixel's own leave-out rows (:func:`leave_out_rows`): the least-squares scale
    sum(c r) / sum(c c) of the S1 correction ``c`` against what is left of the residual ``r``
    after the climatology term, shrunk towards 1 with the weight of ``prior_samples`` samples
    and clipped to [0, 2] (1 for a pixel without rows). Also returns the (N_SE_BINS, HIST_BINS)
    histogram of |error| of the fused estimate on those rows, which calibrates the standard error.
    """
    alpha, hist = np.empty(obs.shape[1]), np.zeros((N_SE_BINS, HIST_BINS), np.int64)
    _kernels.reliability(_pixel_major(np.asarray(obs, dtype="float64")), _pixel_major(np.asarray(train, dtype=bool)),
                         _pixel_major(_float(s1)), np.asarray(days, dtype="float64"), np.asarray(skips, np.int64),
                         np.asarray(weights, dtype="float64"), float(prior_samples), HIST_STEP, alpha, hist)
    return alpha, hist


def fused(obs: np.ndarray, anchor: np.ndarray, s1: np.ndarray, days: np.ndarray, weights: np.ndarray,
          alpha, where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fused estimate from the anchors (clear views) of each pixel, at the dates ``where``.

    ``obs`` (T, N), ``anchor`` (T, N) bool, ``s1`` (K, T, N), ``weights`` (len(GAP_BINS), K + 1):
    K S1 weights then the climatology weight, ``alpha`` (N,) the pixels' reliability of the S1
    correction, ``where`` (T, N) the positions to estimate (default: all). Returns (T, N): the
    estimate and the linear interpolation it corrects (NaN outside ``where`` and for a pixel
    without anchors), the distance to the nearest anchor (days, NaN without), its GAP_BINS index
    and its SE bin (:func:`gap_bin`, :func:`se_bin`; -1 without anchors). At an anchor's own date
    the estimate ignores that anchor; an undefined S1 departure contributes 0.
    """
    T, N = obs.shape
    where = np.ones((T, N), bool) if where is None else np.asarray(where, dtype=bool)
    alpha = np.ascontiguousarray(np.broadcast_to(np.asarray(alpha, dtype="float64"), (N,)))
    out, bins = np.empty((3, N, T)), np.empty((2, N, T), np.int8)
    _kernels.fused(_pixel_major(np.asarray(obs, dtype="float64")), _pixel_major(np.asarray(anchor, dtype=bool)),
                   _pixel_major(_float(s1)), np.asarray(days, dtype="float64"), np.asarray(weights, dtype="float64"),
                   alpha, _pixel_major(where), out, bins)
    return out[0].T, out[1].T, out[2].T, bins[0].T, bins[1].T


def score_errors(obs, pred, fused_est, interp, pixel_mean, score, gap_bins, se_bins, split,
                 n_splits: int) -> tuple[np.ndarray, np.ndarray]:
    """Every estimate's errors at the scored points of a block, all (T, N) but ``pixel_mean`` (N,).

    Estimates, in order: the S1 model (``pred``; ``fused_est`` where it is NaN), the fusion, the
    pixel mean, the interpolation. ``split`` (T,): each date's scored split (0..n_splits-1), -1
    for dates not scored. Returns the error sums (4, T, len(GAP_BINS), 6) = n, e, |e|, e^2, y, y^2
    (e = estimate - obs) per date and gap bin, and the (2, n_splits, N_SE_BINS, HIST_BINS)
    histograms of |error| of the model and the fusion (points with a NaN are left out).
    """
    T = obs.shape[0]
    sums = np.zeros((4, T, len(GAP_BINS), 6))
    hist = np.zeros((2, n_splits, N_SE_BINS, HIST_BINS), np.int64)
    _kernels.score_points(np.asarray(obs), np.asarray(pred), np.asarray(fused_est), np.asarray(interp),
                          np.asarray(pixel_mean, dtype="float64"), np.asarray(score, dtype=bool), np.asarray(gap_bins),
                          np.asarray(se_bins), np.asarray(split, np.int64), HIST_STEP, sums, hist)
    return sums, hist


def se_scale(hist: np.ndarray) -> np.ndarray:
    """(N_SE_BINS,) standard errors: the SE_QUANTILE of |error| per SE bin, from histograms.

    A bin with fewer than MIN_ROWS_PER_BIN errors takes the pooled value; within the two-sided
    and the one-sided bins the SE never decreases with distance.
    """
    def quantile(h):
        c = np.cumsum(h)
        if c[-1] == 0:
            return np.nan
        return (np.searchsorted(c, SE_QUANTILE * c[-1]) + 1) * HIST_STEP  # upper edge of the bin

    pooled = quantile(hist.sum(axis=0))
    se = np.array([quantile(h) if h.sum() >= MIN_ROWS_PER_BIN else pooled for h in hist])
    n_two = len(SE_EDGES_TWO_SIDED) + 1
    se[:n_two] = np.fmax.accumulate(se[:n_two])
    se[n_two:] = np.fmax.accumulate(se[n_two:])
    return se


def coverage(hist: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """(covered, total) counts of errors within 1 SE, from per-SE-bin histograms of |error|."""
    covered = total = 0.0
    for h, s in zip(hist, se):
        if np.isfinite(s):
            covered += h[: int(round(s / HIST_STEP))].sum()
        total += h.sum()
    return covered, total
