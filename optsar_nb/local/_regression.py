"""Pixelwise robust multiple linear regression, vectorised over pixels (docs/method.md B.6).

The estimator is iteratively reweighted least squares with the Talwar cost, as Earth Engine's
``ee.Reducer.robustLinearRegression`` describes itself and as statsmodels'
``RLM(norm=TrimmedMean(c), scale_est="mad")`` computes it:

1. start from ordinary least squares on the pixel's valid samples;
2. scale ``s = median(|r|) / 0.6745`` over the valid samples' residuals (MAD about zero,
   consistent for normal errors);
3. Talwar weights: 1 where ``|r| <= c * s``, else 0 (the sample is an outlier);
4. weighted least squares with those weights; repeat 2-4 until the weight set no longer
   changes (then the solution is a fixed point), at most ``max_iterations`` times.
A pixel whose residual scale is below ``PERFECT_FIT_SCALE`` stops (a perfect fit has no
outliers; statsmodels stops on a zero scale the same way). A reweighting that would leave
fewer samples than coefficients is not taken (Earth Engine returns null for underdetermined
systems): the previous solution stands.

Each least-squares solve is rank revealing. The design's columns are scaled to unit norm (so
neither the cutoff nor the minimum norm depends on covariate units), the Gram matrix of the
scaled design is diagonalised, and directions whose singular value is at most
``rcond x`` the largest are dropped: the minimum-norm least-squares solution of the scaled
design, i.e. ``numpy.linalg.lstsq(X / d, y, rcond)`` divided by ``d``. The eight S1
covariates are nearly collinear by construction (pixel = mean + diff = Nmean + Ndiff before
smoothing), so exact singularity is the normal case, not an error: it yields finite
coefficients and a reported rank below 9, never inf or NaN. Pixels with fewer valid samples
than coefficients get NaN coefficients (masked, as Earth Engine's null), counted by the caller.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAD_NORMAL = 0.6744897501960817  # Phi^-1(3/4): MAD of a standard normal (statsmodels' mad default)
PERFECT_FIT_SCALE = 1e-9  # residual scale (NDVI units) below which a fit is exact: no reweighting
BATCH_BYTES = 64 * 2**20  # size of one (pixels, time, 9) float64 temporary: bounds a batch's memory


def _solve(Xw: np.ndarray, y: np.ndarray, rcond: float) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-norm weighted least squares of many pixels at once.

    Xw (P, T, K) the design with the rows of zero weight zeroed (weights are 0/1, so
    ``Xw^T Xw = X^T W X`` and ``Xw^T y = X^T W y``), y (P, T) -> coefficients (P, K), rank (P,).
    """
    gram = np.matmul(Xw.transpose(0, 2, 1), Xw)
    rhs = np.einsum("ptk,pt->pk", Xw, y)
    d = np.sqrt(np.maximum(np.einsum("pkk->pk", gram), 0.0))
    d = np.where(d > 0, d, 1.0)
    gram_s = gram / (d[:, :, None] * d[:, None, :])
    lam, vec = np.linalg.eigh(gram_s)  # ascending; lam = squared singular values of X w / d
    keep = lam > (rcond**2) * lam[:, -1:]
    inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    proj = np.einsum("pkj,pk->pj", vec, rhs / d)
    beta_s = np.einsum("pkj,pj->pk", vec, inv * proj)
    return beta_s / d, keep.sum(axis=1)


def _abs_median(r: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """median(|r|) along the last axis over ``valid`` entries (np.median's even-count rule; NaN
    for none): (P, T) -> (P,)."""
    out = np.empty(r.shape[0])
    _abs_median_kernel(np.ascontiguousarray(r, dtype="float64"), np.ascontiguousarray(valid, dtype=bool), out)
    return out


@njit(cache=True, nogil=True)
def _abs_median_kernel(r, valid, out):
    """Per row, the two middle order statistics of the valid |r| by selection (a sort of the row
    when one is NaN: NaN sorts last, as in numpy), their mean the median."""
    P, T = r.shape
    values = np.empty(T)
    for p in range(P):
        n = nan = 0
        for t in range(T):  # gathered without a branch: valid samples are scattered in time
            v = abs(r[p, t])
            values[n] = v
            n += valid[p, t]
            nan += valid[p, t] and np.isnan(v)
        if n == 0:
            out[p] = np.nan
            continue
        k = (n - 1) // 2
        if nan:
            ordered = np.sort(values[:n])
            out[p] = (ordered[k] + ordered[n // 2]) / 2
            continue
        low = _select(values, n, k)
        high = low
        if n % 2 == 0:  # the next order statistic: the least of the values above position k
            high = values[k + 1]
            for i in range(k + 2, n):
                high = min(high, values[i])
        out[p] = (low + high) / 2


@njit(cache=True, nogil=True, inline="always")
def _select(a, n, k):
    """The k-th smallest of ``a[:n]`` (no NaN), left at ``a[k]`` with no greater value before it
    and no smaller after it (Hoare's selection, median-of-three pivots; in place)."""
    lo, hi = 0, n - 1
    while lo < hi:
        x, y, z = a[lo], a[(lo + hi) >> 1], a[hi]
        pivot = max(min(x, y), min(max(x, y), z))
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


def usable_design(covs: np.ndarray, obs: np.ndarray, train: np.ndarray, dates: np.ndarray,
                  pixels: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The regression's inputs for ``pixels`` of a block: each pixel's usable samples (training,
    with a finite response and finite covariates) among ``dates``, in time order, then rows of
    zeros up to the largest count (at least one row).

    ``covs`` (K, T, N) covariates, ``obs`` (T, N) response, ``train`` (T, N) bool. Returns the
    design X (P, R, K + 1) float64 with the constant first, y (P, R) float64, valid (P, R) bool
    (the usable rows) and each pixel's count (P,).
    """
    start, stop, _ = pixels.indices(obs.shape[1])
    dates = np.asarray(dates, np.intp)
    count = np.zeros(stop - start, np.int64)
    _count_usable(covs, obs, train, dates, start, count)
    R = max(int(count.max(initial=0)), 1)
    P = count.size
    X, y, valid = np.zeros((P, R, covs.shape[0] + 1)), np.zeros((P, R)), np.zeros((P, R), bool)
    _fill_design(covs, obs, train, dates, start, X, y, valid)
    return X, y, valid, count


@njit(cache=True, nogil=True, inline="always")
def _usable(covs, obs, train, t, n) -> bool:
    if not train[t, n] or not np.isfinite(obs[t, n]):
        return False
    for k in range(covs.shape[0]):
        if not np.isfinite(covs[k, t, n]):
            return False
    return True


@njit(cache=True, nogil=True)
def _count_usable(covs, obs, train, dates, start, count):
    for t in dates:  # date by date: each read runs along the block's pixels
        for p in range(count.size):
            count[p] += _usable(covs, obs, train, t, start + p)


@njit(cache=True, nogil=True)
def _fill_design(covs, obs, train, dates, start, X, y, valid):
    row = np.zeros(X.shape[0], np.int64)
    for t in dates:
        for p in range(X.shape[0]):
            n = start + p
            if _usable(covs, obs, train, t, n):
                j = row[p]
                X[p, j, 0] = 1.0
                for k in range(covs.shape[0]):
                    X[p, j, k + 1] = covs[k, t, n]
                y[p, j] = obs[t, n]
                valid[p, j] = True
                row[p] = j + 1


def talwar_irls(
    X: np.ndarray,
    y: np.ndarray,
    valid: np.ndarray,
    *,
    tuning: float,
    rcond: float,
    max_iterations: int,
    overwrite_X: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust regression of every pixel: see the module docstring for the exact algorithm.

    Inputs: X (P, T, K) float64 design (column 0 the constant), y (P, T) response, valid (P, T)
    bool (samples that may be used; NaN elsewhere is ignored). With ``overwrite_X`` the rows of
    unusable samples are zeroed in X itself instead of in a copy. Outputs: coefficients (P, K)
    float64 (NaN where fewer than K valid samples), rank (P,) int of the final solve,
    iterations (P,).
    """
    P, T, K = X.shape
    coef = np.full((P, K), np.nan)
    rank = np.zeros(P, dtype=np.int16)
    iters = np.zeros(P, dtype=np.int16)
    batch = max(64, BATCH_BYTES // max(1, T * K * 8))
    for start in range(0, P, batch):
        sl = slice(start, start + batch)
        c, r, it = _irls_batch(X[sl], y[sl], valid[sl], tuning, rcond, max_iterations, overwrite_X)
        coef[sl], rank[sl], iters[sl] = c, r, it
    return coef, rank, iters


def _irls_batch(X, y, valid, tuning, rcond, max_iterations, overwrite_X):
    P, T, K = X.shape
    valid = valid & np.isfinite(y) & np.isfinite(X).all(axis=-1)
    if overwrite_X and X.dtype == np.float64:
        X[~valid] = 0.0
    else:
        X = np.where(valid[..., None], X, 0.0).astype("float64", copy=False)
    y = np.where(valid, y, 0.0).astype("float64", copy=False)
    coef = np.full((P, K), np.nan)
    rank = np.zeros(P, dtype=np.int16)
    iters = np.zeros(P, dtype=np.int16)
    ok = np.flatnonzero(valid.sum(axis=1) >= K)
    if ok.size == 0:
        return coef, rank, iters
    Xo, yo, vo = (X, y, valid) if ok.size == P else (X[ok], y[ok], valid[ok])
    w = vo.astype("float64")
    beta, rk = _solve(Xo, yo, rcond)  # X is already zero where the weight (validity) is 0
    scratch = None  # the weighted design of full-size solves, allocated once
    active = np.arange(ok.size)  # pixels still iterating (indices into ok)
    n_iter = np.zeros(ok.size, dtype=np.int16)
    for _ in range(max_iterations):
        if active.size == 0:
            break
        # all pixels still active (the first passes, the costly ones): no gathered copies
        everyone = active.size == ok.size
        Xa, ya, va = (Xo, yo, vo) if everyone else (Xo[active], yo[active], vo[active])
        resid = ya - np.einsum("ptk,pk->pt", Xa, beta[active])
        scale = _abs_median(resid, va) / MAD_NORMAL
        w_new = (va & (np.abs(resid) <= tuning * scale[:, None])).astype("float64")
        changed = (w_new != w[active]).any(axis=1)
        go = changed & (scale > PERFECT_FIT_SCALE) & (w_new.sum(axis=1) >= K)
        moving = active[go]
        if moving.size == 0:
            break
        w[moving] = w_new[go]
        if moving.size == ok.size:
            scratch = np.multiply(Xo, w[..., None], out=scratch)
            beta, rk = _solve(scratch, yo, rcond)
        else:
            Xm = Xo[moving]  # a gathered copy: weighted in place
            Xm *= w[moving][..., None]
            beta[moving], rk[moving] = _solve(Xm, yo[moving], rcond)
        n_iter[moving] += 1
        active = moving
    coef[ok], rank[ok], iters[ok] = beta, rk, n_iter
    return coef, rank, iters


def predict(X: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Fitted values: X (P, T, K), coef (P, K) -> (P, T); NaN where a covariate or coefficient is NaN."""
    return np.einsum("ptk,pk->pt", X, coef)


@njit(cache=True, nogil=True)
def predict_images(covs, coef, out):
    """Fitted values of covariate images: ``covs`` (K, T, h, w), ``coef`` (>= K + 1, h, w) with the
    constant first -> ``out`` (T, h, w): the float64 sum constant + coef_1 cov_1 + ... + coef_K
    cov_K in that order (as :func:`predict` on the design), stored in out's type; NaN where a
    covariate or coefficient is NaN."""
    K, T, h, w = covs.shape
    for t in range(T):
        for y in range(h):
            for x in range(w):
                s = coef[0, y, x] + coef[1, y, x] * np.float64(covs[0, t, y, x])
                for k in range(1, K):
                    s += coef[k + 1, y, x] * np.float64(covs[k, t, y, x])
                out[t, y, x] = s
