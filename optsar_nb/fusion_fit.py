"""What both engines share of the fused gap-free NDVI (docs/method.md part C): the distance bins,
the fit of the weights, each pixel's reliability of the S1 correction and the standard error.

Everything here works on *leave-out rows*, which each engine computes its own way (the local
engine in compiled per-pixel loops, Earth Engine with band arithmetic): a clear training
observation predicted from the training observations around it. A row holds its pixel, its
GAP_BINS index and SE bin, ``resid`` = observation - interpolation and ``dep`` (n, K + 1): the K
S1 departures from their interpolation and the climatology departure (see
:mod:`optsar_nb.local.fusion` for the estimate itself).
"""

from __future__ import annotations

import numpy as np

from .params import GAP_BIN_EDGES_DAYS

GAP_BINS = ("<=10", "10-20", "20-40", ">40", "one-sided")  # days to the nearest clear training view
GAP_EDGES = GAP_BIN_EDGES_DAYS
BIN_DAYS = (5.0, 15.0, 30.0, 60.0)  # a typical distance (days) of each two-sided bin, for the weights' form
# standard-error bins: finer than GAP_BINS and nested in them (two-sided, then one-sided)
SE_EDGES_TWO_SIDED = (5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0)
SE_EDGES_ONE_SIDED = (20.0, 60.0)
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


def _lad(X: np.ndarray, r: np.ndarray, iterations: int) -> np.ndarray:
    """Least-absolute-deviation fit of r on X by IRLS (weights 1 / max(|e|, 1e-3)), no intercept.

    Each weighted least-squares step solves its normal equations (X' U X) w = X' U r, a system
    of X's few columns (minimum-norm when singular): on a million rows three times as fast as a
    least-squares solve of the weighted rows, within 1e-12 of it (relative; measured on case 2's
    rows)."""
    w = np.linalg.lstsq(X, r, rcond=None)[0]
    for _ in range(iterations):
        xu = X.T * (1.0 / np.maximum(np.abs(r - X @ w), 1e-3))
        w = np.linalg.lstsq(xu @ X, xu @ r, rcond=None)[0]
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


def reliability_from_rows(pixel: np.ndarray, bins: np.ndarray, resid: np.ndarray, dep: np.ndarray,
                          weights: np.ndarray, prior_samples: float, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_pixels,) reliability ``alpha`` of each pixel's S1 correction, and each row's error.

    Per pixel, from its own rows: the least-squares scale sum(c r) / sum(c c) of the S1
    correction c = w_bin . dep[:K] against what is left of the residual r after the climatology
    term, shrunk towards 1 with the weight of ``prior_samples`` samples and clipped to [0, 2]
    (1 for a pixel without rows). The rows' errors are those of the fused estimate with that
    alpha: resid - m_bin dep[K] - alpha c.
    """
    weights = np.asarray(weights, dtype="float64")
    dep = np.asarray(dep, dtype="float64")
    k = dep.shape[1] - 1
    c = np.einsum("ij,ij->i", dep[:, :k], weights[bins, :k])
    r = np.asarray(resid, dtype="float64") - weights[bins, k] * dep[:, k]
    scc = np.bincount(pixel, c * c, minlength=n_pixels)
    scr = np.bincount(pixel, c * r, minlength=n_pixels)
    count = np.bincount(pixel, minlength=n_pixels)
    own = np.divide(scr, scc, out=np.ones(n_pixels), where=scc > 0)
    prior = prior_samples / np.maximum(count, 1)
    alpha = np.clip((own + prior) / (1.0 + prior), 0.0, 2.0)
    return alpha, r - alpha[pixel] * c


def error_histogram(se_bins: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """(N_SE_BINS, HIST_BINS) counts of |error| per SE bin, in HIST_STEP (the last bin holds the rest)."""
    h = np.minimum((np.abs(errors) / HIST_STEP).astype(np.int64), HIST_BINS - 1)
    return np.bincount(se_bins * HIST_BINS + h, minlength=N_SE_BINS * HIST_BINS).reshape(N_SE_BINS, HIST_BINS)


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
