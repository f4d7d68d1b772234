"""Compiled per-pixel loops of the fusion (``fusion.py``): one pass over each pixel's time series.

Arrays are pixel-major here, (N, T) and (K, N, T), so that a pixel's series is contiguous.

Both are sequential in time per pixel (the nearest clear views before and after each date), which
numpy can only express with several full-size gathers per quantity; compiled, a block costs about
one read of its stacks. ``cache=True``: worker processes load the compiled code from disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# days to the nearest clear view: the reported gap bins (docs/method.md part C) and the finer
# standard-error bins nested in them; module globals, which the compiler folds into the code
from ..fusion_fit import GAP_EDGES, SE_EDGES_ONE_SIDED, SE_EDGES_TWO_SIDED


@njit(cache=True, nogil=True)
def transpose_into(src, dst):
    """``dst[n, t] = src[t, n]`` (cast to dst's type) for (T, N) ``src``: eight pixels' series at
    a time, each date's eight values one contiguous read (numpy's copy of a transposed view reads
    one value per cache line: about five times slower)."""
    T, N = src.shape
    for n0 in range(0, N, 8):
        for t in range(T):
            row = src[t]
            for n in range(n0, min(n0 + 8, N)):
                dst[n, t] = row[n]


@njit(cache=True, error_model="numpy", inline="always")
def _bins(distance, two_sided):
    """(gap bin, SE bin) of a distance: see ``fusion_fit.gap_bin`` and ``fusion_fit.se_bin``."""
    if two_sided:
        b = 0
        for e in GAP_EDGES:
            b += distance > e
        sb = 0
        for e in SE_EDGES_TWO_SIDED:
            sb += distance > e
        return b, sb
    sb = len(SE_EDGES_TWO_SIDED) + 1
    for e in SE_EDGES_ONE_SIDED:
        sb += distance > e
    return len(GAP_EDGES) + 1, sb


@njit(cache=True, error_model="numpy", nogil=True)
def fused(obs, anchor, s1, days, weights, alpha, where, out, bins):
    """out[0] estimate, out[1] interpolation (NaN outside ``where``), out[2] distance; bins[0] gap bin,
    bins[1] SE bin (-1 without anchors)."""
    N, T = obs.shape
    K = s1.shape[0]
    idx = np.empty(T, np.int64)
    for n in range(N):
        m = 0
        total = 0.0
        for t in range(T):
            if anchor[n, t]:
                idx[m] = t
                total += obs[n, t]
                m += 1
        mean = total / m if m > 0 else np.nan
        j = 0  # idx[j] is the first anchor after t (or j == m)
        for t in range(T):
            while j < m and idx[j] <= t:
                j += 1
            p = idx[j - 1] if j > 0 and idx[j - 1] < t else (idx[j - 2] if j > 1 else -1)
            q = idx[j] if j < m else -1
            out[0, n, t] = np.nan
            out[1, n, t] = np.nan
            if p < 0 and q < 0:
                out[2, n, t] = np.nan
                bins[0, n, t] = -1
                bins[1, n, t] = -1
                continue
            both = p >= 0 and q >= 0
            if both:
                dist = min(days[t] - days[p], days[q] - days[t])
            elif p >= 0:
                dist = days[t] - days[p]
            else:
                dist = days[q] - days[t]
            out[2, n, t] = dist
            b, sb = _bins(dist, both)
            bins[0, n, t] = b
            bins[1, n, t] = sb
            if not where[n, t]:
                continue
            frac = (days[t] - days[p]) / (days[q] - days[p]) if both else 0.0
            if both:
                interp = obs[n, p] + frac * (obs[n, q] - obs[n, p])
            elif p >= 0:
                interp = obs[n, p]
            else:
                interp = obs[n, q]
            s1_term = 0.0
            for k in range(K):
                if both:
                    line = s1[k, n, p] + frac * (s1[k, n, q] - s1[k, n, p])
                elif p >= 0:
                    line = s1[k, n, p]
                else:
                    line = s1[k, n, q]
                d = s1[k, n, t] - line
                if not np.isfinite(d):
                    s1_term = 0.0
                    break
                s1_term += weights[b, k] * d
            out[0, n, t] = interp + alpha[n] * s1_term + weights[b, K] * (mean - interp)
            out[1, n, t] = interp
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def _pixel_rows(n, obs, train, s1, days, skips, idx, csum, resid, bins, dep):
    """The leave-out rows of pixel ``n`` (see ``fusion.leave_out_rows``) into the buffers; returns their count."""
    T = obs.shape[1]
    K = s1.shape[0]
    m = 0
    csum[0] = 0.0
    for t in range(T):
        if train[n, t]:
            idx[m] = t
            csum[m + 1] = csum[m] + obs[n, t]
            m += 1
    r = 0
    for skip in skips:
        for j in range(m):
            has_p, has_q = j - skip >= 0, j + skip < m
            if not (has_p or has_q):
                continue
            lo = j - skip + 1 if has_p else 0
            hi = j + skip if has_q else m
            left_in = m - (hi - lo)
            if left_in <= 0:
                continue
            t = idx[j]
            p = idx[j - skip] if has_p else -1
            q = idx[j + skip] if has_q else -1
            frac = (days[t] - days[p]) / (days[q] - days[p]) if has_p and has_q else 0.0
            if has_p and has_q:
                est = obs[n, p] + frac * (obs[n, q] - obs[n, p])
                d = min(days[t] - days[p], days[q] - days[t])
            elif has_p:
                est, d = obs[n, p], days[t] - days[p]
            else:
                est, d = obs[n, q], days[q] - days[t]
            ok = np.isfinite(est)
            for k in range(K):
                if has_p and has_q:
                    line = s1[k, n, p] + frac * (s1[k, n, q] - s1[k, n, p])
                elif has_p:
                    line = s1[k, n, p]
                else:
                    line = s1[k, n, q]
                dep[r, k] = s1[k, n, t] - line
                ok = ok and np.isfinite(dep[r, k])
            if not ok:
                continue
            dep[r, K] = (csum[m] - (csum[hi] - csum[lo])) / left_in - est
            resid[r] = obs[n, t] - est
            bins[0, r], bins[1, r] = _bins(d, has_p and has_q)
            r += 1
    return r


@njit(cache=True, error_model="numpy", nogil=True)
def leave_out_rows(obs, train, s1, days, skips, pixel, resid, bins, dep):
    """Fill the leave-out rows of every pixel (see ``fusion.leave_out_rows``); returns how many were written."""
    N, T = obs.shape
    K = s1.shape[0]
    idx, csum = np.empty(T, np.int64), np.empty(T + 1)
    b_resid, b_bins, b_dep = np.empty(T * len(skips)), np.empty((2, T * len(skips)), np.int64), \
        np.empty((T * len(skips), K + 1))
    r = 0
    for n in range(N):
        c = _pixel_rows(n, obs, train, s1, days, skips, idx, csum, b_resid, b_bins, b_dep)
        for i in range(c):
            pixel[r], resid[r] = n, b_resid[i]
            bins[0, r], bins[1, r] = b_bins[0, i], b_bins[1, i]
            dep[r] = b_dep[i]
            r += 1
    return r


@njit(cache=True, error_model="numpy", nogil=True)
def reliability(obs, train, s1, days, skips, weights, prior_samples, hist_step, alpha, hist):
    """Per pixel, from its own leave-out rows: ``alpha`` (see ``fusion.pixel_reliability``), and the
    histogram (SE bin x |error| in ``hist_step``) of the fused estimate's leave-out errors."""
    N, T = obs.shape
    K = s1.shape[0]
    n_hist = hist.shape[1]
    idx, csum = np.empty(T, np.int64), np.empty(T + 1)
    resid, bins, dep = np.empty(T * len(skips)), np.empty((2, T * len(skips)), np.int64), \
        np.empty((T * len(skips), K + 1))
    for n in range(N):
        c = _pixel_rows(n, obs, train, s1, days, skips, idx, csum, resid, bins, dep)
        scc = scr = 0.0
        for i in range(c):
            b = bins[0, i]
            s = 0.0
            for k in range(K):
                s += weights[b, k] * dep[i, k]
            scc += s * s
            scr += s * (resid[i] - weights[b, K] * dep[i, K])
        own = scr / scc if scc > 0 else 1.0
        prior = prior_samples / max(c, 1)
        a = min(max((own + prior) / (1.0 + prior), 0.0), 2.0)
        alpha[n] = a
        for i in range(c):
            b = bins[0, i]
            e = resid[i] - weights[b, K] * dep[i, K]
            for k in range(K):
                e -= a * weights[b, k] * dep[i, k]
            h = min(int(abs(e) / hist_step), n_hist - 1)
            hist[bins[1, i], h] += 1


@njit(cache=True, error_model="numpy", nogil=True)
def score_points(obs, pred, fused, interp, pixel_mean, score, gap_bin, se_bin, split, hist_step, sums, hist):
    """Error sums and |error| histograms of the four estimates at the scored points.

    Estimates, in order: the S1 model (``pred``, the fusion where it is NaN), the fusion, the
    pixel mean, the interpolation. ``sums`` (4, T, gap bins, 6): n, e, |e|, e^2, y, y^2 per date
    and gap bin; ``hist`` (2, splits, SE bins, bins): |error| of the model and the fusion per
    ``split`` of the date (-1: not scored).
    """
    T, N = obs.shape
    n_hist = hist.shape[-1]
    for n in range(N):
        for t in range(T):
            if not score[t, n] or gap_bin[t, n] < 0:
                continue
            y = obs[t, n]
            if not np.isfinite(y):
                continue
            b, sb, sp = gap_bin[t, n], se_bin[t, n], split[t]
            model = pred[t, n] if np.isfinite(pred[t, n]) else fused[t, n]
            for k in range(4):
                v = model if k == 0 else (fused[t, n] if k == 1 else (pixel_mean[n] if k == 2 else interp[t, n]))
                e = v - y
                if not np.isfinite(e):
                    continue
                acc = sums[k, t, b]
                acc[0] += 1.0
                acc[1] += e
                acc[2] += abs(e)
                acc[3] += e * e
                acc[4] += y
                acc[5] += y * y
                if k < 2 and sp >= 0:
                    hist[k, sp, sb, min(int(abs(e) / hist_step), n_hist - 1)] += 1
