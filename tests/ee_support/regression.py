"""``ee.Reducer.robustLinearRegression`` modelled with numpy, one pixel at a time.

Earth Engine documents the reducer as iteratively reweighted least squares with the Talwar cost
and ``beta`` the outlier margin; the rest of its numerics are not documented. This model:
ordinary least squares first; residual scale = median(|r|) / 0.6745 (the normal-consistent
MAD); weights 1 where |r| <= beta x scale, else 0; repeat until the weights stop changing, the
scale vanishes, fewer samples than unknowns would remain, or MAX_ITERATIONS. Each solve is
``numpy.linalg.lstsq`` on the weighted design with unit-norm columns (rank revealing, minimum
norm; singular values below RCOND x the largest are dropped), so a singular design gives finite
coefficients. Fewer valid samples than unknowns give a masked (null) result, as on the server.
It is written independently of optsar_nb.local (per pixel, SVD based) so that parity tests
compare two implementations.
"""

from __future__ import annotations

import numpy as np

MAD_NORMAL = 0.6744897501960817  # Phi^-1(3/4)
TALWAR_DEFAULT = 2.795  # Talwar tuning constant (Holland & Welsch 1977), used when beta is null
RCOND = 1e-6  # the package default (InfillParams.lstsq_rcond)
MAX_ITERATIONS = 50  # the package default (InfillParams.irls_max_iterations)
ZERO_SCALE = 1e-9  # a residual scale below this is a perfect fit: nothing to reweight


def _solve(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    Xw, yw = X * w[:, None], y * w
    d = np.linalg.norm(Xw, axis=0)
    d = np.where(d > 0, d, 1.0)
    beta, *_ = np.linalg.lstsq(Xw / d, yw, rcond=RCOND)
    return beta / d


def fit_pixel(X: np.ndarray, y: np.ndarray, beta: float) -> np.ndarray | None:
    n, k = X.shape
    if n < k:
        return None
    w = np.ones(n)
    coef = _solve(X, y, w)
    for _ in range(MAX_ITERATIONS):
        r = y - X @ coef
        scale = np.median(np.abs(r)) / MAD_NORMAL
        w_new = (np.abs(r) <= beta * scale).astype("float64")
        if scale <= ZERO_SCALE or np.array_equal(w_new, w) or w_new.sum() < k:
            break
        w = w_new
        coef = _solve(X, y, w)
    return coef


def robust_linear_regression(x: np.ndarray, y: np.ndarray, valid: np.ndarray, *, beta=None):
    """x (N, P, numX), y (N, P, numY), valid (N, P) -> coefficients (P, numX, numY), residuals, ok."""
    beta = TALWAR_DEFAULT if beta is None else float(beta)
    n, p, kx = x.shape
    ky = y.shape[-1]
    coef = np.full((p, kx, ky), np.nan)
    resid = np.full((p, ky), np.nan)
    ok = np.zeros(p, bool)
    valid = valid & np.isfinite(x).all(-1) & np.isfinite(y).all(-1)
    for j in np.flatnonzero(valid.sum(axis=0) >= kx):
        rows = valid[:, j]
        for m in range(ky):
            c = fit_pixel(x[rows, j], y[rows, j, m], beta)
            coef[j, :, m] = c
            resid[j, m] = np.sqrt(np.mean((y[rows, j, m] - x[rows, j] @ c) ** 2))
        ok[j] = True
    return coef, resid, ok
