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

from ..fusion_fit import (  # noqa: F401 (the fusion's shared part, re-exported)
    BIN_DAYS,
    GAP_BINS,
    GAP_EDGES,
    HIST_BINS,
    HIST_STEP,
    LEAVE_OUT_SKIPS,
    MIN_ROWS_PER_BIN,
    N_SE_BINS,
    SE_EDGES_ONE_SIDED,
    SE_EDGES_TWO_SIDED,
    SE_QUANTILE,
    coverage,
    fit_weights,
    gap_bin,
    se_bin,
    se_scale,
)
from . import _fusion_kernels as _kernels


def _float(a: np.ndarray) -> np.ndarray:
    """float32 or float64 as given (the staged covariates are float32), anything else as float64."""
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype("float64")


def _pixel_major(a: np.ndarray, dtype=None) -> np.ndarray:
    """A (..., T, N) array as a contiguous (..., N, T) copy (cast to ``dtype``; default: its own):
    each pixel's series in one run of memory."""
    a = np.asarray(a)
    out = np.empty((*a.shape[:-2], a.shape[-1], a.shape[-2]), dtype or a.dtype)
    for i in np.ndindex(a.shape[:-2]):
        _kernels.transpose_into(a[i], out[i])
    return out


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
    obs, train, s1 = _series(obs, train, s1)
    size = int(train.sum()) * len(skips)
    pixel, resid = np.empty(size, np.int64), np.empty(size)
    bins, dep = np.empty((2, size), np.int64), np.empty((size, s1.shape[0] + 1))
    n = _kernels.leave_out_rows(obs, train, s1, np.asarray(days, dtype="float64"), np.asarray(skips, np.int64),
                                pixel, resid, bins, dep)
    return {"bin": bins[0, :n], "se_bin": bins[1, :n], "resid": resid[:n], "dep": dep[:n], "pixel": pixel[:n]}


def pixel_reliability(obs: np.ndarray, train: np.ndarray, s1: np.ndarray, days: np.ndarray, weights: np.ndarray,
                      prior_samples: float, skips=LEAVE_OUT_SKIPS) -> tuple[np.ndarray, np.ndarray]:
    """(N,) per-pixel scale of the S1 correction, and the fused estimate's leave-out errors.

    From each pixel's own leave-out rows (:func:`leave_out_rows`): the least-squares scale
    sum(c r) / sum(c c) of the S1 correction ``c`` against what is left of the residual ``r``
    after the climatology term, shrunk towards 1 with the weight of ``prior_samples`` samples
    and clipped to [0, 2] (1 for a pixel without rows). Also returns the (N_SE_BINS, HIST_BINS)
    histogram of |error| of the fused estimate on those rows, which calibrates the standard error.
    """
    return _reliability(*_series(obs, train, s1), days, weights, prior_samples, skips)


def _series(obs, anchor, s1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block's (N, T) float64 observations, (N, T) anchors and (K, N, T) S1 covariates, pixel-major."""
    return _pixel_major(obs, "float64"), _pixel_major(anchor, bool), _pixel_major(_float(s1))


def _reliability(obs, train, s1, days, weights, prior_samples, skips=LEAVE_OUT_SKIPS):
    """:func:`pixel_reliability` of pixel-major series (:func:`_series`)."""
    alpha, hist = np.empty(obs.shape[0]), np.zeros((N_SE_BINS, HIST_BINS), np.int64)
    _kernels.reliability(obs, train, s1, np.asarray(days, dtype="float64"), np.asarray(skips, np.int64),
                         np.asarray(weights, dtype="float64"), float(prior_samples), HIST_STEP, alpha, hist)
    return alpha, hist


def reliability_and_fused(obs: np.ndarray, train: np.ndarray, s1: np.ndarray, days: np.ndarray, weights: np.ndarray,
                          prior_samples: float, where: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """:func:`pixel_reliability`, then :func:`fused` from the training observations as anchors
    with that reliability, at ``where``: the series made pixel-major once for both."""
    series = _series(obs, train, s1)
    alpha, hist = _reliability(*series, days, weights, prior_samples)
    return alpha, hist, _fused(*series, days, weights, alpha, where)


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
    return _fused(*_series(obs, anchor, s1), days, weights, alpha, where)


def _fused(obs, anchor, s1, days, weights, alpha, where):
    """:func:`fused` of pixel-major series (:func:`_series`); ``where`` (T, N) as given there."""
    N, T = obs.shape
    where = np.ones((N, T), bool) if where is None else _pixel_major(where, bool)
    alpha = np.ascontiguousarray(np.broadcast_to(np.asarray(alpha, dtype="float64"), (N,)))
    out, bins = np.empty((3, N, T)), np.empty((2, N, T), np.int8)
    _kernels.fused(obs, anchor, s1, np.asarray(days, dtype="float64"), np.asarray(weights, dtype="float64"),
                   alpha, where, out, bins)
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
