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
``w_bin`` is a least-absolute-deviation fit pooled over the AOI (S1 errors are heavy-tailed);
``alpha_pixel`` is the pixel's own least-squares scale of that correction, shrunk towards 1 by
``fusion_prior_samples`` pseudo-samples. The standard error is the 68.27th percentile of the
leave-out errors of the fused estimate in finer distance bins (``SE_EDGES_*``).

All functions work on one block of pixels, (T, N) series with the full time axis, and are
pure; AOI-wide quantities (the weights, the SE scale) are fitted from what blocks return.
"""

from __future__ import annotations

import numpy as np

GAP_BINS = ("<=10", "10-20", "20-40", ">40", "one-sided")  # days to the nearest clear training view
GAP_EDGES = (10.0, 20.0, 40.0)
# standard-error bins: finer than GAP_BINS and nested in them (two-sided, then one-sided)
SE_EDGES_TWO_SIDED = (5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0)
SE_EDGES_ONE_SIDED = (20.0, 60.0)
N_SE_BINS = len(SE_EDGES_TWO_SIDED) + 1 + len(SE_EDGES_ONE_SIDED) + 1
LEAVE_OUT_SKIPS = (1, 2, 3)
HIST_STEP = 0.0025  # NDVI units per bin of the absolute-error histograms
HIST_BINS = 801  # 0 to 2 in HIST_STEP, the last bin holds everything above
SE_QUANTILE = 0.6827  # share of a normal population within one standard deviation
MIN_ROWS_PER_BIN = 200  # fewer leave-out samples in a distance bin: its S1 weights stay 0


def anchor_positions(anchor: np.ndarray, skip: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(T, N) time indices of the ``skip``-th anchor strictly before and strictly after each date; -1 if none."""
    T = anchor.shape[0]
    count = anchor.sum(axis=0)
    order = np.argsort(~anchor, axis=0, kind="stable")  # each pixel's anchor positions first, in time order
    upto = np.cumsum(anchor, axis=0)
    before = upto - anchor
    j_prev, j_next = before - skip, upto + skip - 1
    prev = np.where(j_prev >= 0, np.take_along_axis(order, np.clip(j_prev, 0, T - 1), 0), -1)
    nxt = np.where(j_next < count, np.take_along_axis(order, np.clip(j_next, 0, T - 1), 0), -1)
    return prev, nxt


def interpolate(values: np.ndarray, prev: np.ndarray, nxt: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Linear interpolation in time of (..., T, N) ``values`` between the anchors ``prev`` and ``nxt``.

    The nearest anchor is held where only one exists; NaN where there is none.
    """
    T = prev.shape[0]
    t = np.asarray(days, dtype="float64")[:, None]
    p, n = np.clip(prev, 0, T - 1), np.clip(nxt, 0, T - 1)
    v_p = np.take_along_axis(values, np.broadcast_to(p, values.shape), -2)
    v_n = np.take_along_axis(values, np.broadcast_to(n, values.shape), -2)
    t_p, t_n = days[p], days[n]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(t_n > t_p, (t - t_p) / (t_n - t_p), 0.0)
    both = v_p + frac * (v_n - v_p)
    return np.where((prev >= 0) & (nxt >= 0), both, np.where(prev >= 0, v_p, np.where(nxt >= 0, v_n, np.nan)))


def anchor_distance(prev: np.ndarray, nxt: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Days to the nearest anchor (NaN with none) and whether there are anchors on both sides."""
    T = prev.shape[0]
    t = np.asarray(days, dtype="float64")[:, None]
    d_p = np.where(prev >= 0, t - days[np.clip(prev, 0, T - 1)], np.inf)
    d_n = np.where(nxt >= 0, days[np.clip(nxt, 0, T - 1)] - t, np.inf)
    d = np.minimum(d_p, d_n)
    return np.where(np.isfinite(d), d, np.nan), (prev >= 0) & (nxt >= 0)


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


def departures(s1: np.ndarray, prev: np.ndarray, nxt: np.ndarray, days: np.ndarray) -> np.ndarray:
    """(K, T, N) S1 covariates minus their interpolation between the anchor dates."""
    return s1 - interpolate(s1, prev, nxt, days)


def correction(weights: np.ndarray, dep: np.ndarray, mean_gap: np.ndarray, bins: np.ndarray,
               alpha) -> np.ndarray:
    """(T, N) correction of the interpolation: alpha * w_S1 . S1 departures + w_mean * (pixel mean - interpolation).

    ``weights`` (len(GAP_BINS), K + 1): K S1 weights, then the climatology weight. An
    undefined S1 departure contributes 0; NaN without a bin.
    """
    w = np.asarray(weights, dtype="float64")[np.clip(bins, 0, None)]  # (T, N, K + 1)
    s1 = np.einsum("tnk,ktn->tn", w[..., :-1], np.nan_to_num(dep))
    s1 = np.where(np.isfinite(dep).all(axis=0), s1, 0.0)
    return np.where(bins >= 0, np.asarray(alpha) * s1 + w[..., -1] * mean_gap, np.nan)


def leave_out_rows(obs: np.ndarray, train: np.ndarray, s1: np.ndarray, days: np.ndarray,
                   skips=LEAVE_OUT_SKIPS) -> dict[str, np.ndarray]:
    """Leave-out samples of the training observations, for learning the weights.

    ``obs`` (T, N) NDVI, ``train`` (T, N) the training observations, ``s1`` (K, T, N). Returns
    rows: ``bin`` (GAP_BINS index), ``resid`` = obs - interpolation, ``dep`` (n, K + 1): the S1
    departures and the pixel's mean of the training observations left in (all but those
    between the two anchors) minus the interpolation, ``se_bin`` and ``pixel`` (column index
    in the block).
    """
    seen = np.where(train, obs, np.nan)
    T = obs.shape[0]
    # sums and counts of the observations up to each date, with a leading 0 (position -1)
    csum = np.concatenate([np.zeros((1, obs.shape[1])), np.cumsum(np.nan_to_num(seen), axis=0)])
    ccount = np.concatenate([np.zeros((1, obs.shape[1])), np.cumsum(train, axis=0)])
    rows = {k: [] for k in ("bin", "resid", "dep", "se_bin", "pixel")}
    pixel = np.broadcast_to(np.arange(obs.shape[1]), obs.shape)
    for skip in skips:
        prev, nxt = anchor_positions(train, skip)
        est = interpolate(seen, prev, nxt, days)
        dep = departures(s1, prev, nxt, days)
        dist, two = anchor_distance(prev, nxt, days)
        # the observations strictly between the anchors are the ones left out
        lo, hi = prev + 1, np.where(nxt >= 0, nxt, T)
        out_sum = csum[-1] - (np.take_along_axis(csum, hi, 0) - np.take_along_axis(csum, lo, 0))
        out_n = ccount[-1] - (np.take_along_axis(ccount, hi, 0) - np.take_along_axis(ccount, lo, 0))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_others = np.where(out_n > 0, out_sum / out_n, np.nan)
        keep = train & np.isfinite(est) & np.isfinite(dep).all(axis=0) & np.isfinite(mean_others)
        rows["bin"].append(gap_bin(dist, two)[keep])
        rows["se_bin"].append(se_bin(dist, two)[keep])
        rows["resid"].append((obs - est)[keep])
        rows["dep"].append(np.column_stack([dep[:, keep].T, (mean_others - est)[keep]]))
        rows["pixel"].append(pixel[keep])
    return {k: np.concatenate(v) for k, v in rows.items()}


def fit_weights(bins: np.ndarray, resid: np.ndarray, dep: np.ndarray, *, iterations: int = 30) -> np.ndarray:
    """(len(GAP_BINS), K + 1) least-absolute-deviation weights of the residuals on ``dep``, per bin.

    IRLS with weights 1 / max(|e|, 1e-3); no intercept (interpolation is unbiased where S1 is
    silent). Bins with fewer than MIN_ROWS_PER_BIN samples keep weights 0 (pure interpolation).
    """
    out = np.zeros((len(GAP_BINS), dep.shape[1]))
    for b in range(len(GAP_BINS)):
        sel = bins == b
        if sel.sum() < MIN_ROWS_PER_BIN:
            continue
        X, r = dep[sel].astype("float64"), resid[sel].astype("float64")
        w = np.linalg.lstsq(X, r, rcond=None)[0]
        for _ in range(iterations):
            sw = np.sqrt(1.0 / np.maximum(np.abs(r - X @ w), 1e-3))
            w = np.linalg.lstsq(X * sw[:, None], r * sw, rcond=None)[0]
        out[b] = w
    return out


def pixel_reliability(rows: dict[str, np.ndarray], weights: np.ndarray, n_pixels: int,
                      prior_samples: float) -> np.ndarray:
    """(N,) per-pixel scale of the S1 correction, from the pixel's own leave-out samples.

    The least-squares scale sum(c r) / sum(c c) of the S1 correction ``c`` against what is left
    of the residual ``r`` after the climatology term, shrunk towards 1 with the weight of
    ``prior_samples`` samples and clipped to [0, 2]; 1 for a pixel without samples.
    """
    w = weights[rows["bin"]]
    c = np.einsum("nk,nk->n", rows["dep"][:, :-1], w[:, :-1])
    r = rows["resid"] - w[:, -1] * rows["dep"][:, -1]
    px = rows["pixel"]
    scc = np.bincount(px, c * c, n_pixels)
    scr = np.bincount(px, c * r, n_pixels)
    n = np.bincount(px, None, n_pixels)
    with np.errstate(invalid="ignore", divide="ignore"):
        own = np.where(scc > 0, scr / scc, 1.0)
    prior = prior_samples / np.maximum(n, 1)
    return np.clip((own + prior) / (1.0 + prior), 0.0, 2.0)


def fused(obs: np.ndarray, anchor: np.ndarray, s1: np.ndarray, days: np.ndarray, weights: np.ndarray,
          alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fused estimate at every date from the anchors (clear views) of each pixel.

    Returns (T, N) estimate (NaN for a pixel without anchors), distance to the nearest anchor
    (days) and the two-sided flag. At an anchor's own date the estimate ignores that anchor.
    """
    prev, nxt = anchor_positions(anchor)
    seen = np.where(anchor, obs, np.nan)
    est = interpolate(seen, prev, nxt, days)
    dist, two = anchor_distance(prev, nxt, days)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(seen, axis=0) / anchor.sum(axis=0)
    est = est + correction(weights, departures(s1, prev, nxt, days), mean - est, gap_bin(dist, two), alpha)
    return est, dist, two


def abs_error_histogram(err: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """(n_bins, HIST_BINS) counts of |err| per bin (rows with bin -1 or NaN error are left out)."""
    ok = (bins >= 0) & np.isfinite(err)
    h = np.minimum((np.abs(err[ok]) / HIST_STEP).astype("int64"), HIST_BINS - 1)
    return np.bincount(bins[ok] * HIST_BINS + h, minlength=n_bins * HIST_BINS).reshape(n_bins, HIST_BINS)


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
