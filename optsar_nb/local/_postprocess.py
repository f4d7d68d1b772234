"""Numpy kernels of the post-processing (docs/method.md B.8-B.10) and of the accuracy baselines.

PCA smoothing works per spatial block on the full time axis, in two global passes (band means,
then band-to-band covariance) followed by a blockwise reconstruction. Standardization, gap
filling and the MAE work per image. All functions are pure.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# ---------------------------------------------------------------------------------------------
# B.8 temporal PCA smoothing


def complete_pixels(block: np.ndarray) -> np.ndarray:
    """(y, x) bool: pixels whose whole time series (axis 0) is finite; only they enter the PCA."""
    return np.isfinite(block).all(axis=0)


def pca_mean_sums(block: np.ndarray) -> np.ndarray:
    """Partial sums for the band means: returns (T + 1,) = [sum over complete pixels per band, count]."""
    ok = complete_pixels(block)
    vals = block[:, ok].astype("float64")
    return np.concatenate([vals.sum(axis=1), [ok.sum()]])


def pca_cross_sums(block: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Partial centred cross products (T, T) over the block's complete pixels."""
    ok = complete_pixels(block)
    c = block[:, ok].astype("float64") - means[:, None]
    return c @ c.T


def pca_basis(cross: np.ndarray, count: int, n_keep: int) -> np.ndarray:
    """(T, k) leading eigenvectors of the band-to-band covariance ``cross / (count - 1)``."""
    cov = cross / max(count - 1, 1)
    lam, vec = np.linalg.eigh(cov)  # ascending
    return vec[:, ::-1][:, :n_keep]


def pca_reconstruct(block: np.ndarray, means: np.ndarray, basis: np.ndarray, dtype="float32") -> np.ndarray:
    """means + V V^T (x - means) for complete pixels; other pixels keep their series unchanged.

    Computed in float64 and returned as ``dtype``."""
    ok = complete_pixels(block)
    out = block.astype(dtype, copy=True)
    c = block[:, ok].astype("float64") - means[:, None]
    out[:, ok] = means[:, None] + basis @ (basis.T @ c)
    return out


# ---------------------------------------------------------------------------------------------
# B.9 spatial standardization


def interval_stats(values: np.ndarray, lower: tuple[float, float], upper: tuple[float, float]) -> np.ndarray:
    """[mean, lower-interval mean, upper-interval mean] of a 1-D sample.

    An interval mean is the mean of the values v with q_a <= v <= q_b, the quantiles computed
    with linear interpolation between order statistics (numpy's default). When no value falls
    inside (tiny samples), it is the midpoint (q_a + q_b) / 2. NaN for an empty sample.
    """
    v = np.asarray(values, dtype="float64")
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.full(3, np.nan)
    qs = np.quantile(v, [lower[0], lower[1], upper[0], upper[1]])
    out = [v.mean()]
    for a, b in ((qs[0], qs[1]), (qs[2], qs[3])):
        inside = v[(v >= a) & (v <= b)]
        out.append(inside.mean() if inside.size else (a + b) / 2)
    return np.asarray(out)


def standardize_image(pred: np.ndarray, obs_stats: np.ndarray, pred_stats: np.ndarray,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Map a prediction onto the observation's distribution (docs/method.md B.9), float32 (into
    ``out``, a C-contiguous float32 array of its shape, if given).

    ``*_stats`` = [mean, lower-interval mean, upper-interval mean] over the same clear pixels.
    Deviations above the prediction mean scale by (obs upper - obs mean) / (pred upper - pred
    mean), below by the lower-interval ratio; a zero prediction range falls back to the
    observation's, i.e. a ratio of 1 (a pure shift). Computed in float64.
    """
    m_o, lo_o, up_o = (float(v) for v in obs_stats)
    m_p, lo_p, up_p = (float(v) for v in pred_stats)

    def ratio(num, den):
        return num / den if den != 0 else 1.0

    pred = np.ascontiguousarray(pred)
    out = np.empty(pred.shape, "float32") if out is None else out
    _standardize_values(pred.reshape(-1), m_o, m_p, ratio(up_o - m_o, up_p - m_p), ratio(lo_o - m_o, lo_p - m_p),
                        out.reshape(-1))
    return out


@njit(cache=True, nogil=True)
def _standardize_values(pred, m_o, m_p, up, lo, out):
    for i in range(pred.size):
        dev = np.float64(pred[i]) - m_p
        out[i] = m_o + (dev * up if dev >= 0 else dev * lo)


# ---------------------------------------------------------------------------------------------
# B.10 gap filling and accuracy


def fill_image(obs: np.ndarray, pred: np.ndarray, clear: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
    """Observation where clear, prediction elsewhere (cloudy or no data); NaN outside the AOI.

    The focal median of B.10 is applied afterwards by the caller (it needs neighbours).
    """
    out = np.where(clear, obs, pred).astype("float32")
    if inside is not None:
        out = np.where(inside, out, np.nan).astype("float32")
    return out


def mae(obs: np.ndarray, pred: np.ndarray, clear: np.ndarray) -> float:
    """Mean |obs - pred| over clear pixels where both are finite; -1 when there is none."""
    ok = clear & np.isfinite(obs) & np.isfinite(pred)
    return float(np.abs(obs[ok].astype("float64") - pred[ok]).mean()) if ok.any() else -1.0


# error sums kept per image and split: n, sum e, sum |e|, sum e^2, sum y, sum y^2 (e = pred - obs)
N_SUMS = 6


def metrics_from_sums(s: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R^2 (1 - SS_res / SS_tot), bias (mean pred - obs) and n from the N_SUMS error sums."""
    n, se, sae, see, sy, syy = (float(v) for v in s)
    if n == 0:
        return {"n": 0, "MAE": np.nan, "RMSE": np.nan, "R2": np.nan, "bias": np.nan}
    ss_tot = syy - sy * sy / n
    return {
        "n": int(n),
        "MAE": sae / n,
        "RMSE": float(np.sqrt(see / n)),
        "R2": 1 - see / ss_tot if ss_tot > 0 else np.nan,
        "bias": se / n,
    }


# ---------------------------------------------------------------------------------------------
# baselines (same pixels, same training observations)


def pixel_mean_baseline(train_obs: np.ndarray) -> np.ndarray:
    """(y, x) per-pixel mean of the training observations (T, y, x), NaN where none."""
    valid = np.isfinite(train_obs)
    n = valid.sum(axis=0)
    s = np.where(valid, train_obs, 0.0).sum(axis=0, dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def interpolation_baseline(train_obs: np.ndarray, days: np.ndarray) -> np.ndarray:
    """(T, y, x) linear interpolation in time between each pixel's training observations.

    At a time with a training observation the value is that observation's neighbours' line
    (the observation itself is skipped, so that in-sample scores are leave-one-out honest is
    *not* attempted: it returns the observation). Before the first / after the last
    observation the nearest one is held; NaN for a pixel without any.
    """
    T = train_obs.shape[0]
    t = np.asarray(days, dtype="float64").reshape((T,) + (1,) * (train_obs.ndim - 1))
    valid = np.isfinite(train_obs)
    idx = np.where(valid, np.arange(T).reshape(t.shape), -1)
    prev_i = np.maximum.accumulate(idx, axis=0)
    idx_rev = np.where(valid, np.arange(T).reshape(t.shape), T)
    next_i = np.minimum.accumulate(idx_rev[::-1], axis=0)[::-1]
    has_prev, has_next = prev_i >= 0, next_i < T
    pi, ni = np.clip(prev_i, 0, T - 1), np.clip(next_i, 0, T - 1)
    v_prev = np.take_along_axis(train_obs, pi, 0)
    v_next = np.take_along_axis(train_obs, ni, 0)
    t_prev, t_next = np.take(t.ravel(), pi), np.take(t.ravel(), ni)  # the dates are every pixel's
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(t_next > t_prev, (t - t_prev) / (t_next - t_prev), 0.0)
        both = v_prev + frac * (v_next - v_prev)
    out = np.where(has_prev & has_next, both, np.where(has_prev, v_prev, np.where(has_next, v_next, np.nan)))
    return out.astype("float32")
