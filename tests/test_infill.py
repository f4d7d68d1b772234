"""Infilling (docs/method.md part B) on the local engine: each step against an independent computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import ndimage

from optsar_nb.errors import NotEnoughPairs
from optsar_nb.local import _kernels, _postprocess, _regression, steps
from optsar_nb.local import infill as inf
from optsar_nb.local.stack import datetime_to_ms
from optsar_nb.params import InfillParams

MAD_NORMAL = 0.6744897501960817


# ---------------------------------------------------------------------------------------------
# an independent robust regression: one pixel at a time, numpy's SVD least squares
def reference_irls(X, y, *, c, rcond, max_iter):
    K = X.shape[1]
    if len(y) < K:
        return np.full(K, np.nan)

    def solve(w):
        A = X[w]
        d = np.linalg.norm(A, axis=0)
        d[d == 0] = 1
        b, *_ = np.linalg.lstsq(A / d, y[w], rcond=rcond)
        return b / d

    w = np.ones(len(y), bool)
    beta = solve(w)
    for _ in range(max_iter):
        r = y - X @ beta
        s = np.median(np.abs(r)) / MAD_NORMAL
        w_new = np.abs(r) <= c * s
        if (w_new == w).all() or s <= 1e-9 or w_new.sum() < K:
            break
        w = w_new
        beta = solve(w)
    return beta


def synthetic_design(rng, P, T, *, collinear=False):
    X = np.empty((P, T, 9))
    X[..., 0] = 1.0
    spread = np.array([3, 3, 2, 2, 1, 1, 0.5, 0.5])
    X[..., 1:] = rng.normal(size=(P, T, 8)) * spread + np.array([-10, -17, 0, 0, -10, -17, 0, 0])
    if collinear:
        # pixel = mean + diff = Nmean + Ndiff: Ndiff = mean + diff - Nmean, to rounding
        X[..., 7] = X[..., 1] + X[..., 3] - X[..., 5]
        X[..., 8] = X[..., 2] + X[..., 4] - X[..., 6]
    beta = rng.normal(size=(P, 9)) * 0.05
    y = np.einsum("ptk,pk->pt", X, beta) + rng.normal(scale=0.02, size=(P, T))
    outliers = rng.random((P, T)) < 0.1
    y[outliers] += rng.normal(scale=0.5, size=outliers.sum())
    return X, y


@pytest.mark.parametrize("collinear", [False, True])
def test_robust_regression_equals_per_pixel_reference(collinear):
    rng = np.random.default_rng(1)
    X, y = synthetic_design(rng, 60, 40, collinear=collinear)
    valid = rng.random((60, 40)) > 0.2
    valid[0, 8:] = False  # 8 samples < 9 coefficients: underdetermined
    p = InfillParams()
    coef, rank, iters = _regression.talwar_irls(X, y, valid, tuning=p.talwar_tuning, rcond=p.lstsq_rcond,
                                                max_iterations=p.irls_max_iterations)
    assert np.isnan(coef[0]).all() and rank[0] == 0
    assert np.isfinite(coef[1:]).all()
    if collinear:
        assert (rank[1:] == 7).all()  # two exact dependencies, no inf, no NaN
        # the design really is singular to machine precision
        assert np.linalg.cond(X[1][valid[1]]) > 1e13
    else:
        assert (rank[1:] == 9).all()
    for i in range(1, 60):
        ref = reference_irls(X[i][valid[i]], y[i][valid[i]], c=p.talwar_tuning, rcond=p.lstsq_rcond,
                             max_iter=p.irls_max_iterations)
        np.testing.assert_allclose(coef[i], ref, rtol=0, atol=1e-6)
        np.testing.assert_allclose(X[i] @ coef[i], X[i] @ ref, rtol=0, atol=1e-6)
    assert iters[1:].max() >= 1  # the outliers did get reweighted


def test_robust_regression_equals_statsmodels_rlm():
    sm = pytest.importorskip("statsmodels.api")
    from statsmodels.robust.norms import TrimmedMean

    rng = np.random.default_rng(7)
    X, y = synthetic_design(rng, 12, 60)
    p = InfillParams()
    coef, _, _ = _regression.talwar_irls(X, y, np.ones(y.shape, bool), tuning=p.talwar_tuning, rcond=p.lstsq_rcond,
                                         max_iterations=p.irls_max_iterations)
    for i in range(12):
        res = sm.RLM(y[i], X[i], M=TrimmedMean(p.talwar_tuning)).fit(maxiter=p.irls_max_iterations, tol=1e-12)
        np.testing.assert_allclose(coef[i], res.params, rtol=0, atol=1e-6)


def test_design_holds_each_pixels_usable_samples_in_time_order_then_zero_rows():
    """The regression's design of a batch of a block's pixels, against a per-pixel loop: the
    constant and covariates of the usable samples (training, finite response and covariates)
    of the dates given, in time order, then zero rows up to the largest count."""
    rng = np.random.default_rng(5)
    K, T, N = 3, 17, 23
    covs = rng.normal(size=(K, T, N)).astype("float32")
    covs[1, 4, 2] = np.nan
    obs = rng.normal(size=(T, N)).astype("float32")
    obs[7, 5] = np.nan
    train = rng.random((T, N)) < 0.6
    train[:, 9] = False  # a pixel without samples
    dates = np.array([0, 2, 3, 4, 7, 8, 11, 12, 16])
    X, y, valid, count = _regression.usable_design(covs, obs, train, dates, slice(2, 12))
    rows = []
    for n in range(2, 12):
        use = [t for t in dates if train[t, n] and np.isfinite(obs[t, n]) and np.isfinite(covs[:, t, n]).all()]
        rows.append(use)
    R = max(len(u) for u in rows)
    assert X.shape == (10, R, K + 1) and list(count) == [len(u) for u in rows]
    for p, use in enumerate(rows):
        m = len(use)
        np.testing.assert_array_equal(X[p, :m], np.column_stack([np.ones(m), covs[:, use, p + 2].T]))
        np.testing.assert_array_equal(y[p, :m], obs[use, p + 2])
        assert valid[p, :m].all() and not valid[p, m:].any()
        assert not X[p, m:].any() and not y[p, m:].any()


def test_prediction_of_a_block_is_the_float64_sum_in_coefficient_order():
    """B.7 on a block (compiled) equals numpy's float64 sum constant + c1 x1 + ... + c8 x8, in
    that order, rounded to float32; NaN where a covariate or a coefficient is NaN."""
    rng = np.random.default_rng(2)
    covs = rng.normal(size=(8, 5, 6, 7)).astype("float32")
    coef = rng.normal(size=(11, 6, 7))
    covs[3, 2, 1, 1], coef[4, 0, 2] = np.nan, np.nan
    expected = coef[0] + coef[1] * covs[0].astype("float64")
    for k in range(1, 8):
        expected = expected + coef[k + 1] * covs[k].astype("float64")
    got = steps.predict_block(covs, coef)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected.astype("float32"))
    assert np.isnan(got[2, 1, 1]) and np.isnan(got[:, 0, 2]).all() and np.isfinite(got).sum() == got.size - 5 - 1


def test_residual_scale_median_equals_numpy_median_over_the_valid_samples():
    """The IRLS scale's median(|r|) by selection equals np.median of each row's valid |r|, ties,
    odd and even counts and rows of one or no sample included; a NaN residual sorts last (as
    in a numpy sort), and a row without valid samples gives NaN."""
    rng = np.random.default_rng(11)
    for trial in range(200):
        P, T = int(rng.integers(1, 30)), int(rng.integers(1, 60))
        r = rng.normal(size=(P, T))
        if trial % 2:
            r = np.round(r, 1)  # ties
        valid = rng.random((P, T)) < rng.random()
        got = _regression._abs_median(r, valid)
        for i in range(P):
            expected = np.median(np.abs(r[i][valid[i]])) if valid[i].any() else np.nan
            np.testing.assert_equal(got[i], expected)
    r = np.array([[1.0, -2.0, np.nan, 0.5], [3.0, np.nan, -1.0, 2.0]])
    # row 0: |r| sorted 0.5, 1, 2, NaN -> (1 + 2) / 2; row 1 (three valid): 1, 3, NaN -> 3
    got = _regression._abs_median(r, np.array([[True, True, True, True], [True, True, True, False]]))
    np.testing.assert_equal(got, [1.5, 3.0])


def test_regression_never_silently_produces_inf_or_nan():
    # all-constant covariates: the design has rank 1; a zero column; a perfect fit
    T = 30
    X = np.zeros((3, T, 9))
    X[..., 0] = 1
    X[0, :, 1:] = 5.0
    X[1, :, 1] = np.arange(T)
    X[2, :, 1:] = np.random.default_rng(0).normal(size=(T, 8))
    y = np.stack([np.full(T, 0.4), 0.1 + 0.01 * np.arange(T), X[2] @ np.linspace(0.1, 0.9, 9)])
    coef, rank, _ = _regression.talwar_irls(X, y, np.ones((3, T), bool), tuning=2.795, rcond=1e-6, max_iterations=50)
    assert np.isfinite(coef).all()
    assert list(rank) == [1, 2, 9]
    np.testing.assert_allclose(np.einsum("ptk,pk->pt", X, coef), y, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# neighbourhoods and windows
def test_circle_kernel_matches_earth_engine_shapes():
    assert len(_kernels.circle_offsets(3)) == 29  # ee.Kernel.circle(3) has 29 cells
    assert _kernels.circle_footprint(1.5).all() and _kernels.circle_footprint(1.5).shape == (3, 3)


def test_focal_median_matches_hand_and_scipy():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 9, 11)).astype("float32")
    # interior with no NaN: scipy's median filter
    got = _kernels.focal_median(a, 1.5)
    ref = ndimage.median_filter(a, size=(1, 3, 3))
    np.testing.assert_allclose(got[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1])
    # corner: only the 4 in-image cells, even count -> mean of the two middle values
    corner = np.sort(a[0, :2, :2].ravel())
    assert got[0, 0, 0] == pytest.approx((corner[1] + corner[2]) / 2)
    # a NaN neighbour is skipped, a NaN centre stays NaN
    b = a.copy()
    b[0, 4, 5] = np.nan
    got = _kernels.focal_median(b, 1.5)
    assert np.isnan(got[0, 4, 5])
    neigh = np.delete(b[0, 3:6, 4:7].ravel(), 4)  # the 8 cells around (4, 5), centre is NaN
    assert np.isnan(neigh).sum() == 0
    around = b[0, 4:7, 5:8].ravel()  # pixel (5, 6): its window holds the NaN at (4, 5)
    assert got[0, 5, 6] == pytest.approx(np.nanmedian(around))


def test_box_mean_matches_hand_loop():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(1, 13, 15))
    a[0, 2, 3] = np.nan
    got = _kernels.box_mean(a, 2)
    halo = np.pad(a, ((0, 0), (2, 2), (2, 2)), constant_values=np.nan)
    np.testing.assert_allclose(_kernels.box_mean(halo, 2, inset=2), got)  # a block with a NaN halo
    for y, x in [(0, 0), (6, 7), (12, 14), (3, 4), (2, 3)]:
        win = a[0, max(0, y - 2) : y + 3, max(0, x - 2) : x + 3]
        expected = np.nan if np.isnan(a[0, y, x]) else np.nanmean(win)
        np.testing.assert_allclose(got[0, y, x], expected, rtol=1e-12)


def test_s1_window_mean_matches_hand_loop():
    rng = np.random.default_rng(5)
    s1_times = pd.date_range("2021-01-01", periods=12, freq="6D")
    opt_times = pd.DatetimeIndex(["2021-01-03", "2021-02-10", "2021-03-20"])
    s1 = rng.normal(-12, 3, size=(12, 4, 5))
    s1[2, 0, 0] = -45.0  # below -40 dB: masked
    s1[3, 1, 1] = np.nan
    s1[6, 2, 2] = 31.0  # above +30 dB: masked
    s1[7, 3, 3] = np.inf
    w = _kernels.window_weights(opt_times, s1_times, 12)
    got = _kernels.window_mean(s1, w, -40.0, 30.0)
    for i, t in enumerate(opt_times):
        sel = [j for j, s in enumerate(s1_times) if t - pd.Timedelta(days=12) <= s < t + pd.Timedelta(days=12)]
        for y in range(4):
            for x in range(5):
                vals = [s1[j, y, x] for j in sel if np.isfinite(s1[j, y, x]) and -40 <= s1[j, y, x] <= 30]
                expected = np.mean(vals) if vals else np.nan
                np.testing.assert_allclose(got[i, y, x], expected, rtol=1e-12)
    # S1_COUNT: S1 on days 0, 6, ..., 66; windows [-10, 14), [28, 52), [66, 90) hold 3, 4 and 1 images
    assert list(w.sum(axis=1)) == [3, 4, 1]


# ---------------------------------------------------------------------------------------------
# post-processing
def test_pca_smoothing_equals_numpy_svd():
    rng = np.random.default_rng(6)
    T, H, W = 20, 16, 12
    base = np.sin(np.linspace(0, 3, T))[:, None, None] * rng.normal(1, 0.2, size=(1, H, W))
    pred = (base + rng.normal(scale=0.05, size=(T, H, W))).astype("float32")
    pred[:, 0, 0] = np.nan  # an incomplete pixel: left unchanged, not in the covariance
    p = InfillParams(pca_fraction=0.1)
    got = inf.pca_smooth(xr.DataArray(pred, dims=("time", "y", "x")).chunk({"y": 5, "x": 7}), p).values
    ok = np.isfinite(pred).all(axis=0)
    Z = pred[:, ok].astype("float64").T  # pixels x bands
    mean = Z.mean(axis=0)
    _, _, vt = np.linalg.svd(Z - mean, full_matrices=False)
    k = 2  # floor(0.1 x 20)
    recon = (Z - mean) @ vt[:k].T @ vt[:k] + mean
    np.testing.assert_allclose(got[:, ok].T, recon, atol=1e-5)
    assert np.isnan(got[:, 0, 0]).all()


def test_blockwise_pca_of_the_job_equals_numpy_svd():
    """The job's B.8 over blocks (partial sums in the fused stage, uncentred; component scores
    staged per block; the smoothed prediction rebuilt from them for any region) equals the SVD
    reconstruction; pixels with an incomplete series keep their prediction."""
    from optsar_nb.local import _fused

    rng = np.random.default_rng(7)
    T, H, W, k = 30, 21, 17, 3
    base = np.cos(np.linspace(0, 4, T))[:, None, None] * rng.normal(0.6, 0.2, size=(1, H, W))
    pred = (0.3 + base + rng.normal(scale=0.05, size=(T, H, W))).astype("float32")
    pred[:, 0, 0] = np.nan  # no prediction
    pred[5, 3, 4] = np.nan  # an incomplete series
    blocks = [(slice(r, min(r + 8, H)), slice(c, min(c + 8, W))) for r in range(0, H, 8) for c in range(0, W, 8)]
    means, basis = _fused.pca_basis(sum(_fused.pca_sums(pred[:, r, c]) for r, c in blocks), T, k)
    scores = np.full((k, H, W), np.nan)
    for r, c in blocks:
        scores[:, r, c] = _fused.pca_scores(pred[:, r, c], means, basis)
    ok = np.isfinite(pred).all(axis=0)
    rest = np.where(ok, np.nan, pred).astype("float32")
    got = _fused.smooth_block(scores, rest, means, basis, slice(2, 19), slice(0, 13))  # any region
    Z = pred[:, ok].astype("float64").T
    mean = Z.mean(axis=0)
    _, _, vt = np.linalg.svd(Z - mean, full_matrices=False)
    want = np.full((T, H, W), np.nan)
    want[:, ok] = ((Z - mean) @ vt[:k].T @ vt[:k] + mean).T
    want[:, ~ok] = pred[:, ~ok]
    np.testing.assert_allclose(got, want[:, 2:19, 0:13], rtol=0, atol=1e-12)
    assert np.isnan(got[5, 1, 4]) and got[4, 1, 4] == pred[4, 3, 4]  # left as it is


def test_block_array_reads_like_the_array_it_stands_for():
    """A BlockArray computes only the region asked for and is sliced like numpy."""
    import dask.array as da

    from optsar_nb.local._blocks import BlockArray

    values = np.arange(2 * 3 * 7 * 5, dtype="float32").reshape(2, 3, 7, 5)
    asked = []

    def fn(rows, cols):
        asked.append((rows, cols))
        return values[..., rows, cols]

    a = BlockArray(fn, values.shape, values.dtype)
    for key in [(slice(None), slice(None), slice(2, 6), slice(1, 4)), (1,), (0, 2, 3, 4), (slice(None), 1, -1),
                (slice(None), slice(0, 2), slice(5, 99), slice(None)), (1, 2, slice(3, 3), 0)]:
        np.testing.assert_array_equal(a[key], values[key], err_msg=str(key))
    assert asked[0] == (slice(2, 6), slice(1, 4)) and asked[2] == (slice(3, 4), slice(4, 5))
    assert da.from_array(a, chunks=(2, 3, 4, 4), name="t").compute().tolist() == values.tolist()
    with pytest.raises(IndexError):
        a[0, 0, :, ::2]
    # with an edge, a region is computed by the grid's blocks it overlaps, one after the other
    asked.clear()
    b = BlockArray(fn, values.shape, values.dtype, edge=3)
    np.testing.assert_array_equal(b[:, :, 2:7, 1:4], values[:, :, 2:7, 1:4])
    assert asked == [(slice(2, 3), slice(1, 3)), (slice(2, 3), slice(3, 4)), (slice(3, 6), slice(1, 3)),
                     (slice(3, 6), slice(3, 4)), (slice(6, 7), slice(1, 3)), (slice(6, 7), slice(3, 4))]
    asked.clear()
    np.testing.assert_array_equal(b[1, 2, 3:5, 4], values[1, 2, 3:5, 4])  # within one block: one call
    assert asked == [(slice(3, 5), slice(4, 5))]


def test_standardization_matches_hand_values():
    obs = np.arange(1, 21, dtype="float64") / 20  # 0.05 .. 1.0
    pred = np.arange(1, 21, dtype="float64") / 40 + 0.2  # 0.225 .. 0.7
    lower, upper = (0.05, 0.15), (0.85, 0.95)
    s_obs = _postprocess.interval_stats(obs, lower, upper)
    # quantiles of 20 values: positions q x 19; 5 % -> 0.95, 15 % -> 2.85: values at ranks 1..2 (0-based)
    assert s_obs[0] == pytest.approx(0.525)
    assert s_obs[1] == pytest.approx(np.mean([0.10, 0.15]))  # values in [0.0975, 0.1925]
    assert s_obs[2] == pytest.approx(np.mean([0.90, 0.95]))  # values in [0.8575, 0.9525]
    s_pred = _postprocess.interval_stats(pred, lower, upper)
    out = _postprocess.standardize_image(pred, s_obs, s_pred)
    up = (0.925 - 0.525) / (s_pred[2] - s_pred[0])
    lo = (0.125 - 0.525) / (s_pred[1] - s_pred[0])
    expected = np.where(pred >= s_pred[0], 0.525 + (pred - s_pred[0]) * up, 0.525 + (pred - s_pred[0]) * lo)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # zero prediction range: ratio falls back to 1, a pure shift onto the observation mean
    flat = _postprocess.standardize_image(np.full(4, 0.3), s_obs, np.array([0.3, 0.3, 0.3]))
    np.testing.assert_allclose(flat, 0.525)


def test_standardize_one_skips_cloudy_images():
    p = InfillParams()
    pred = np.array([[0.2, 0.4], [0.6, 0.8]], "float32")
    obs = np.array([[0.3, 0.5], [0.7, 0.9]], "float32")
    clear = np.ones((2, 2), bool)
    np.testing.assert_array_equal(inf.standardize_one(pred, obs, clear, 0.5, p), pred)  # not < 50 %
    np.testing.assert_allclose(inf.standardize_one(pred, obs, clear, 0.1, p), obs, atol=1e-6)


def test_fill_and_mae_hand_values():
    obs = np.array([[0.5, np.nan], [0.3, 0.2]])
    pred = np.array([[0.4, 0.6], [0.1, np.nan]])
    clear = np.array([[True, False], [True, False]])
    np.testing.assert_allclose(_postprocess.fill_image(obs, pred, clear), [[0.5, 0.6], [0.3, np.nan]])
    assert _postprocess.mae(obs, pred, clear) == pytest.approx((0.1 + 0.2) / 2)
    assert _postprocess.mae(obs, pred, np.zeros_like(clear)) == -1.0


def test_interpolation_baseline_hand_values():
    seen = np.array([np.nan, 0.2, np.nan, np.nan, 0.8, np.nan]).reshape(6, 1, 1)
    days = np.array([0, 10, 20, 30, 40, 50])
    got = _postprocess.interpolation_baseline(seen, days)[:, 0, 0]
    np.testing.assert_allclose(got, [0.2, 0.2, 0.4, 0.6, 0.8, 0.8], atol=1e-7)
    assert _postprocess.pixel_mean_baseline(seen)[0, 0] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# pairing and split
def _table(n, clouds=None):
    times = pd.date_range("2021-01-01", periods=n, freq="5D")
    return pd.DataFrame({"ID": [f"img{i}" for i in range(n)], "CollectionTime": datetime_to_ms(times),
                         "CLOUD_PERCENTAGE_AOI": clouds if clouds is not None else np.linspace(0, 100, n),
                         "PIXEL_COUNT_AOI": 1000})


def test_not_enough_pairs_names_the_dates_and_the_fix():
    p = InfillParams(start="2021-01-01", end="2022-01-01")
    counts = np.array([1] * 5 + [0] * 7)
    with pytest.raises(NotEnoughPairs, match=r"only 5 of 12 .*2021-01-26, .*Widen s1_window_days"):
        inf.pair_images(_table(12), counts, p)


def test_split_is_reproducible_and_follows_the_rule():
    p = InfillParams()
    t1, d1 = inf.split_pairs(_table(40), p)
    t2, d2 = inf.split_pairs(_table(40), p)
    pd.testing.assert_frame_equal(t1, t2)
    assert d1 == d2
    rand = np.random.default_rng(p.seed).random(40)
    np.testing.assert_array_equal(t1["Random"], rand)
    expected = np.where(rand < 0.2, "validation", np.where(rand < 0.6, "train", "test"))
    np.testing.assert_array_equal(t1["SplitLabel"], expected)
    assert 50 <= t1["CLOUD_PERCENTAGE_AOI"][d1] <= 55
    by_time, _ = inf.split_pairs(_table(40), p.replace(random_split=False))
    assert set(by_time["SplitLabel"][:24]) <= {"train", "validation"} and set(by_time["SplitLabel"][24:]) == {"test"}


# ---------------------------------------------------------------------------------------------
# the whole job on a small synthetic scene
def synthetic_scene(H=40, W=36, T=48, S=60, seed=0):
    rng = np.random.default_rng(seed)
    times = pd.date_range("2021-01-03", periods=T, freq="7D")
    s1_times = pd.date_range("2021-01-01", periods=S, freq="6D")
    y = 5_000_000 - (np.arange(H) + 0.5) * 10
    x = 500_000 + (np.arange(W) + 0.5) * 10
    attrs = {"crs": "EPSG:32631", "transform": (10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)}
    field = rng.normal(size=(H, W))
    season = lambda t: 0.45 + 0.3 * np.sin(2 * np.pi * t.day_of_year.to_numpy() / 365.0)  # noqa: E731
    truth = season(times)[:, None, None] * (1 + 0.2 * field) + rng.normal(scale=0.01, size=(T, H, W))
    truth = np.clip(truth, -1, 1)  # a possible NDVI (values outside [-1, 1] are read as missing)
    vv = -12 + 4 * season(s1_times)[:, None, None] * (1 + 0.2 * field) + rng.normal(scale=0.3, size=(S, H, W))
    vh = vv - 6 + rng.normal(scale=0.3, size=(S, H, W))
    # clouds: each image has its own cover (0-60 %), so every pixel keeps enough training samples
    cloudy = rng.random((T, H, W)) < rng.random((T, 1, 1)) * 0.6
    state = np.where(cloudy, 0, 1).astype("int8")
    obs = np.where(cloudy, 0.1, truth)

    def da(a, t, name):
        return xr.DataArray(a.astype("float32" if a.dtype.kind == "f" else a.dtype), dims=("time", "y", "x"),
                            coords={"time": t, "id": ("time", [f"{name}{i}" for i in range(len(t))]), "y": y, "x": x},
                            attrs=dict(attrs), name=name)

    return da(obs, times, "n"), da(state, times, "n"), da(vv, s1_times, "s"), da(vh, s1_times, "s"), truth


def _params():
    # one sample per coefficient: the small synthetic scene's ~17 clear training samples per
    # pixel keep a model (the default guard rail is tested on it in test_guard_rail_*)
    return InfillParams(start="2021-01-01", end="2022-01-01", neighbourhood_radius_px=3, min_samples_per_coefficient=1)


def test_infill_does_not_depend_on_chunking(tmp_path, monkeypatch):
    from optsar_nb.local import _pipeline

    ndvi, state, vv, vh, _ = synthetic_scene()
    runs = []
    for edge in (13, 512):
        monkeypatch.setattr(_pipeline, "_edge", lambda n, e=edge: e)
        chunked = ndvi.chunk({"y": 7, "x": 11})
        runs.append(inf.infill(chunked, state, vv, vh, _params(), tmp_path / str(edge), report=False))
    for name in ("NDVI_gapfree", "NDVI_Pred", "NDVI_Model"):
        import rasterio

        a, b = (rasterio.open(r.paths[name]).read() for r in runs)
        # equal up to float32 rounding: block edges change only the order of float64 sums
        # (box sums, AOI means, PCA covariance), which can flip the last bit of a float32
        # covariate; the nearly singular regression turns that into ~1e-6 NDVI
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert (np.isnan(a) == np.isnan(b)).all()
    pd.testing.assert_frame_equal(runs[0].metadata, runs[1].metadata)


def _read_outputs(run) -> dict[str, np.ndarray]:
    import rasterio

    out = {}
    for name in ("NDVI_gapfree", "NDVI_gapfree_SE", "NDVI_Mask", "NDVI_Pred", "NDVI_Obs", "NDVI_Model"):
        with rasterio.open(run.paths[name]) as src:
            out[name] = src.read()
    return out


def test_worker_processes_give_the_same_outputs_as_one_process(tmp_path, monkeypatch):
    """The fused stage's blocks run in worker processes or here: the files are identical."""
    from optsar_nb.local import _pipeline

    monkeypatch.setattr(_pipeline, "_edge", lambda n: 13)  # 12 blocks
    ndvi, state, vv, vh, _ = synthetic_scene()
    runs = [inf.infill(ndvi, state, vv, vh, _params(), tmp_path / str(n), report=False, workers=n) for n in (1, 2)]
    one, two = (_read_outputs(r) for r in runs)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)
    pd.testing.assert_frame_equal(runs[0].metrics, runs[1].metrics)
    assert np.isfinite(one["NDVI_gapfree_SE"]).all() and (one["NDVI_gapfree_SE"][one["NDVI_Mask"] == 1] == 0).all()


def test_paper_gapfree_equals_the_b10_step(tmp_path):
    """With method="paper", the gap-free stack the job writes equals the B.10 step function applied
    to its own outputs wherever the focal median saw predictions only (elsewhere the fusion fills)."""
    from scipy.ndimage import minimum_filter

    ndvi, state, vv, vh, _ = synthetic_scene()
    p = _params().replace(method="paper")
    out = _read_outputs(inf.infill(ndvi, state, vv, vh, p, tmp_path, report=False))
    clear = out["NDVI_Mask"] == 1
    like = lambda a: ndvi.copy(data=a)  # noqa: E731
    expected = inf.gap_fill(like(out["NDVI_Obs"]), like(out["NDVI_Pred"]), like(clear), p).values
    inner = minimum_filter(np.isfinite(out["NDVI_Pred"]).astype(np.uint8), size=(1, 3, 3), mode="constant", cval=1)
    assert inner.mean() > 0.7
    np.testing.assert_array_equal(out["NDVI_gapfree"][inner == 1], expected[inner == 1])
    assert np.isfinite(out["NDVI_gapfree"]).all()  # pixels without a model are filled too


def test_dropped_images_leave_the_others_in_order(tmp_path):
    """An image without valid pixels and one without S1 in its window are left out; every other
    image keeps its own observations, mask and ID (the staged stacks are compacted in place)."""
    ndvi, state, vv, vh, _ = synthetic_scene()
    st = state.values.copy()
    st[5] = -1  # no valid pixel: dropped as sparse (B.2)
    state = state.copy(data=st)
    t20 = pd.Timestamp(ndvi.time.values[20])
    far = np.abs(pd.DatetimeIndex(vv.time.values) - t20) > pd.Timedelta(days=12)
    vv, vh = vv.isel(time=np.flatnonzero(far)), vh.isel(time=np.flatnonzero(far))  # image 20 has no pair (B.5)
    run = inf.infill(ndvi, state, vv, vh, _params(), tmp_path, report=False)
    kept = [i for i in range(ndvi.sizes["time"]) if i not in (5, 20)]
    assert list(run.metadata["ID"]) == [f"n{i}" for i in kept]
    out = _read_outputs(run)
    np.testing.assert_array_equal(out["NDVI_Mask"], st[kept])
    expected_obs = np.where(st[kept] == 1, ndvi.values[kept], np.nan)
    np.testing.assert_array_equal(out["NDVI_Obs"], expected_obs)


def test_unguarded_script_gets_a_clear_error(tmp_path):
    """Worker processes import the main script again: a script without the __main__ guard is told so."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_infill import _params, synthetic_scene
        from optsar_nb.local import _pipeline, infill as inf
        _pipeline._edge = lambda n: 13
        ndvi, state, vv, vh, _ = synthetic_scene(H=26, W=26, T=30)
        inf.infill(ndvi, state, vv, vh, _params(), {str(tmp_path / "out")!r}, report=False, workers=2)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "WorkerFailed" in done.stderr and 'if __name__ == "__main__":' in done.stderr


def test_infill_outputs_and_model_reload(tmp_path):
    import rasterio

    ndvi, state, vv, vh, truth = synthetic_scene()
    p = _params()
    run = inf.infill(ndvi, state, vv, vh, p, tmp_path)
    meta = pd.read_csv(run.paths["metadata"])
    assert list(meta.columns) == ["ID", "Cloud_cover", "CollectionTime", "Random", "MAE", "SplitLabel"]
    with rasterio.open(run.paths["NDVI_gapfree"]) as src:
        assert list(src.descriptions) == list(meta["ID"])
        gapfree = src.read()
    with rasterio.open(run.paths["NDVI_Model"]) as src:
        assert list(src.descriptions) == list(inf.COEFFICIENT_BANDS)
        coef_file = src.read()
    st = state.values
    # observation where clear (up to the final focal median), a prediction close to the truth elsewhere
    cloudy = st == 0
    no_model = np.isnan(coef_file[0])  # fewer than p.min_train_samples training samples: no model there
    assert no_model.sum() == run.underdetermined_pixels + run.guarded_pixels < 0.05 * no_model.size
    assert run.model_pixels == (~no_model).sum()
    assert np.isfinite(gapfree).all() and (np.abs(gapfree) <= 1).all()
    under = cloudy & ~no_model
    climatology = np.broadcast_to(np.nanmean(np.where(st == 1, ndvi.values, np.nan), axis=0), st.shape)
    err_model = np.abs(gapfree[under] - truth[under]).mean()
    assert err_model < 0.5 * np.abs(climatology[under] - truth[under]).mean()
    # the fused pipeline's coefficients equal the step functions' on the same training samples
    written = pd.read_csv(run.paths["metadata"]).rename(columns={"Cloud_cover": "CLOUD_PERCENTAGE_AOI"})
    table, donor = inf.split_pairs(written.drop(columns=["Random", "SplitLabel"]), p)
    donor_cloudy = st[donor] == 0
    train = inf.training_mask(st, table["SplitLabel"].to_numpy(), donor_cloudy)
    wins = [inf.s1_window_mean(b, ndvi.time.values, p)[0] for b in (vv, vh)]
    covs = inf.covariates(wins[0], wins[1], inf.aoi_mean(wins[0]), inf.aoi_mean(wins[1]), p)
    obs_train = ndvi.where(train)
    coef = inf.robust_regression(obs_train, covs, p).compute()
    np.testing.assert_allclose(coef_file, coef.values[:9], rtol=0, atol=1e-9)
    # reload the model and predict without retraining: equals predicting with the fitted coefficients
    again = inf.predict_from_model(run.paths["NDVI_Model"], vv, vh, ndvi.time.values, p).values
    direct = inf.predict(coef, covs).values
    np.testing.assert_allclose(again, direct, rtol=0, atol=1e-5)
    report = run.paths["report"]
    assert report.exists() and report.with_name(report.stem + "_scatter.png").exists()
    with pytest.raises(Exception, match="exists"):
        inf.infill(ndvi, state, vv, vh, p, tmp_path)


def test_edge_pixels_of_an_aoi_see_the_sentinel1_around_it(tmp_path):
    """B.3-B.4 on an AOI smaller than the inputs: the covariates of the AOI's edge pixels read
    the S1 values around the AOI (their kernels reach beyond it), and only the AOI means are
    AOI-wide. Independent path: covariates from the window means of the whole grid (nothing
    masked), AOI means by hand over the AOI's pixels, the robust fit on the AOI's training
    samples; the pipeline's model equals it. With S1 cut at the AOI's edge, the edge pixels'
    models differ (so the test can tell)."""
    from pyproj import Transformer

    from optsar_nb.aoi import load_aoi
    from optsar_nb.local.gaps import aoi_mask
    from optsar_nb.local.stack import read_geotiff

    ndvi, state, vv, vh, _ = synthetic_scene()
    p = _params()
    to_lonlat = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    ring = [(500_060, 4_999_930), (500_300, 4_999_930), (500_300, 4_999_680), (500_060, 4_999_680)]
    aoi = load_aoi({"type": "Polygon", "coordinates": [[to_lonlat.transform(*xy) for xy in ring + ring[:1]]]})
    inside = aoi_mask(ndvi, aoi)
    assert 0.2 < inside.values.mean() < 0.6  # the AOI leaves S1 on every side within the kernels' reach
    run = inf.infill(ndvi, state, vv, vh, p, tmp_path, aoi=aoi, report=False)
    model = read_geotiff(run.paths["NDVI_Model"]).values[:9]

    written = pd.read_csv(run.paths["metadata"]).rename(columns={"Cloud_cover": "CLOUD_PERCENTAGE_AOI"})
    table, donor = inf.split_pairs(written.drop(columns=["Random", "SplitLabel"]), p)
    pairs = ndvi.time.isin(pd.to_datetime(table["CollectionTime"], unit="ms").to_numpy())
    st, obs = state.isel(time=pairs).values, ndvi.isel(time=pairs)
    train = inf.training_mask(st, table["SplitLabel"].to_numpy(), st[donor] == 0) & inside.values

    def fit(s1_vv, s1_vh):
        wins = [inf.s1_window_mean(b, obs.time.values, p)[0] for b in (s1_vv, s1_vh)]
        means = [np.array([np.nanmean(w.values[t][inside.values]) for t in range(w.sizes["time"])]) for w in wins]
        covs = inf.covariates(wins[0], wins[1], means[0], means[1], p)
        return inf.robust_regression(obs.where(train), covs, p).compute().values[:9]

    expected = fit(vv, vh)
    ok = inside.values & np.isfinite(expected[0])
    assert ok.sum() > 0.9 * inside.values.sum()
    np.testing.assert_array_equal(np.isnan(model[:, ok]), False)
    np.testing.assert_allclose(model[:, ok], expected[:, ok], rtol=0, atol=1e-9)
    cut = fit(vv.where(inside), vh.where(inside))
    edge = inside.values & ~(_eroded(inside.values, inf.covariate_halo(p)))
    assert np.nanmax(np.abs(cut[:, edge] - expected[:, edge])) > 1e-3


def _eroded(mask: np.ndarray, depth: int) -> np.ndarray:
    """The pixels of ``mask`` whose whole (2 depth + 1) square lies in it."""
    return ndimage.minimum_filter(mask.astype("uint8"), size=2 * depth + 1, mode="constant", cval=0).astype(bool)


def test_standardization_applies_by_the_images_own_cloud_cover(tmp_path, monkeypatch):
    """B.9 "for images with cloud cover < 50 %": the image's own cover (its Cloud_cover in the
    metadata), also on validation pairs, whose artificial clouds make them look cloudier; their
    statistics use only the pixels those clouds leave visible."""
    from optsar_nb.local import _standardize

    ndvi, state, vv, vh, _ = synthetic_scene()
    p = _params()
    seen = []
    original = _standardize.statistics

    def recording(blocks, *args):
        seen.append((blocks.cloud, original(blocks, *args)))
        return seen[-1][1]

    monkeypatch.setattr(_standardize, "statistics", recording)
    run = inf.infill(ndvi, state, vv, vh, p, tmp_path, report=False)
    meta = pd.read_csv(run.paths["metadata"])
    ((cloud, stats),) = seen
    donor = state.values[int(np.flatnonzero(ndvi.id.values == run.donor_id)[0])] == 0
    assert len(cloud) == len(meta)
    out = _read_outputs(run)
    for i, row in meta.iterrows():
        t = int(np.flatnonzero(ndvi.id.values == row["ID"])[0])
        clear = state.values[t] == 1
        # the image's own cover, from its states (no artificial cloud), as its Cloud_cover says
        np.testing.assert_allclose(cloud[i], 1 - clear.sum() / (state.values[t] != -1).sum(), rtol=1e-12)
        np.testing.assert_allclose(100 * cloud[i], row["Cloud_cover"], rtol=1e-9)
        assert stats["apply"][i] == (row["Cloud_cover"] < 50)
        # the pixels its statistics use (observed and predicted): on a validation pair the clear
        # ones its artificial clouds leave visible
        used = clear & ~donor if row["SplitLabel"] == "validation" else clear
        assert stats["n"][i] == (used & np.isfinite(out["NDVI_Obs"][i]) & np.isfinite(out["NDVI_Pred"][i])).sum()
        if row["SplitLabel"] == "validation" and row["ID"] != run.donor_id:
            assert used.sum() < clear.sum()
    validation = meta[meta["SplitLabel"] == "validation"]
    assert (validation["Cloud_cover"] < 50).any()  # standardized although the donor's clouds add 50-55 %


def test_demo_scene_mae_under_clouds(sample_dir, tmp_path):
    """On the simulated demo scene the gap-free NDVI is scored against the cloud-free truth.

    Bound: 0.05 NDVI. The scene's independent per-pixel noise has SD 0.015 (MAE ~0.012) and
    the climatology baseline (per-pixel mean) scores ~0.17 there; 0.05 demands that the S1
    regression recovers most of the seasonal signal under cloud, with room for the
    smoothing of field edges by the two focal medians.
    """
    from optsar_nb.aoi import load_aoi
    from optsar_nb.local.stack import read_stack

    suffix = "_S2_2021-01-01_2022-01-01"
    if not (sample_dir / f"NDVI_Input{suffix}.tif").exists():
        pytest.skip("demo scene not generated")
    p = InfillParams(start="2021-01-01", end="2022-01-01")
    ndvi, state, vv, vh = inf.load_seed_inputs(sample_dir, p)
    run = inf.infill(ndvi, state, vv, vh, p, tmp_path, aoi=load_aoi(sample_dir / "aoi.geojson"), report=False)
    gapfree = read_stack(run.paths["NDVI_gapfree"], run.paths["metadata"]).compute()
    mask = read_stack(run.paths["NDVI_Mask"], run.paths["metadata"]).compute()
    truth = read_stack(sample_dir / f"NDVI_Truth{suffix}.tif").compute().sel(time=gapfree.time)
    cloudy = mask.values == 0
    err = np.abs(gapfree.values - truth.values)[cloudy]
    assert np.isfinite(err).all()
    assert err.mean() < 0.05
    m = run.metrics.set_index(["split", "method"])["MAE"]
    assert m["validation", "model"] < m["validation", "pixel_mean"]


def test_guard_rail_too_few_samples_means_no_model_and_a_filled_valid_product(tmp_path):
    """The synthetic scene has ~17 clear training samples per pixel, fewer than the default 27
    (3 per coefficient): those pixels get no model, are counted, and the fusion fills them;
    nothing written leaves [-1, 1], and the report says so."""
    import rasterio

    ndvi, state, vv, vh, _ = synthetic_scene()
    p = _params().replace(min_samples_per_coefficient=3.0, method="paper")
    assert p.min_train_samples == 27
    run = inf.infill(ndvi, state, vv, vh, p, tmp_path)
    with rasterio.open(run.paths["NDVI_Model"]) as m:
        coef = m.read()
    with rasterio.open(run.paths["NDVI_gapfree"]) as g:
        gapfree = g.read()
    # an independent count of each pixel's clear training samples
    meta = run.metadata
    st = state.values
    donor = st[int(np.flatnonzero(meta["ID"] == run.donor_id)[0])] == 0
    n = inf.training_mask(st, meta["SplitLabel"].to_numpy(), donor).sum(axis=0)
    np.testing.assert_array_equal(np.isnan(coef[0]), n < 27)
    assert run.guarded_pixels == ((n >= 9) & (n < 27)).sum() > 0
    assert run.underdetermined_pixels == (n < 9).sum()
    assert np.isfinite(gapfree).all() and np.nanmax(np.abs(gapfree)) <= 1
    text = " ".join(run.paths["report"].read_text().split())
    assert f"{run.guarded_pixels:,} pixels had fewer than 27 clear training samples" in text
    assert "Calibrated S1 predictions outside the physical NDVI range [-1, 1]:" in text


def test_an_ndvi_that_cannot_be_is_missing_not_clear():
    """Clear pixels whose NDVI is outside [-1, 1], infinite or NaN are treated as missing."""
    from optsar_nb.missions import CLEAR, MISSING

    ndvi = xr.DataArray(np.array([[[0.5, 7.5, np.inf, -np.inf, np.nan, -1.0, 1.0, -1.01]]]), dims=("time", "y", "x"))
    state = xr.full_like(ndvi, CLEAR, dtype="int8")
    np.testing.assert_array_equal(inf.observed_state(state, ndvi, None).values.ravel(),
                                  [CLEAR, MISSING, MISSING, MISSING, MISSING, CLEAR, CLEAR, MISSING])


def test_a_scaled_ndvi_stops_with_the_reason(sample_dir, tmp_path):
    """NDVI stored as integers x 10000: no value is a possible NDVI, so nothing can be computed;
    the error names the reason and the fix, and nothing is written."""
    from optsar_nb.errors import NoImages

    p = inf.InfillParams(mission="S2", start="2021-01-01", end="2022-01-01")
    ndvi, state, vv, vh = inf.load_seed_inputs(sample_dir, p)
    with pytest.raises(NoImages, match="not in \\[-1, 1\\].*divided by their scale"):
        inf.infill((ndvi * 10000).assign_attrs(ndvi.attrs), state, vv, vh, p, tmp_path, report=False, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_sentinel1_without_a_valid_value_stops_with_the_reason(sample_dir, tmp_path):
    """All-no-data S1 (every value below s1_min_db would do the same): the regression has nothing
    to learn from; the error says so, and nothing is written."""
    from optsar_nb.errors import NoImages

    p = inf.InfillParams(mission="S2", start="2021-01-01", end="2022-01-01")
    ndvi, state, vv, vh = inf.load_seed_inputs(sample_dir, p)
    empty = (vv * np.nan).assign_attrs(vv.attrs)
    with pytest.raises(NoImages, match="Sentinel-1 has no valid VV value"):
        inf.infill(ndvi, state, empty, vh, p, tmp_path, report=False, workers=1)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Sentinel-1 above the plausible dB range
IMPLAUSIBLE_DB = (30.5, 45.0, 1.2e4, np.inf)  # a glitch, amplitudes read as dB, linear power x 10000, +inf


def with_implausible_values(s1: xr.DataArray, seed: int = 0) -> xr.DataArray:
    """A copy of a real S1 stack with about one value in ten replaced by one above +30 dB or by
    +inf, +inf in every image at pixel (0, 0), and +30 dB itself (the bound, kept) every 7th image
    at the last pixel."""
    rng = np.random.default_rng(seed)
    values = np.array(s1.values, dtype="float32")
    hit = rng.random(values.shape) < 0.1
    values[hit] = rng.choice(np.array(IMPLAUSIBLE_DB, "float32"), size=int(hit.sum()))
    values[:, 0, 0] = np.inf
    values[::7, -1, -1] = 30.0
    return s1.copy(data=values)


def reference_window_mean(s1, s1_times, optical_times, days: float, low: float, high: float) -> np.ndarray:
    """Per optical date t, numpy's per-pixel mean of the finite S1 values within [low, high] dB of
    the images in [t - days, t + days); NaN where there is none."""
    s1_times = pd.DatetimeIndex(s1_times)
    kept = np.where(np.isfinite(s1) & (s1 >= low) & (s1 <= high), np.asarray(s1, "float64"), np.nan)
    out = np.full((len(optical_times), *kept.shape[1:]), np.nan)
    for i, t in enumerate(pd.DatetimeIndex(optical_times)):
        window = kept[(s1_times >= t - pd.Timedelta(days=days)) & (s1_times < t + pd.Timedelta(days=days))]
        n = np.isfinite(window).sum(axis=0)
        out[i] = np.where(n > 0, np.nansum(window, axis=0) / np.maximum(n, 1), np.nan)
    return out


def test_sentinel1_above_the_db_range_or_infinite_is_missing(flanders):
    """In the real Flanders S1 cube, values above s1_max_db (+30 dB) and +inf are left out of the
    window means as values below s1_min_db are; +30 dB itself is kept."""
    p = InfillParams(mission="S2", start="2017-08-01", end="2018-12-01")
    ndvi, _, vv, _ = inf.load_flanders(flanders, p)
    s1 = with_implausible_values(vv.isel(y=slice(8, 20), x=slice(8, 20)))
    values, times = s1.values, ndvi.time.values
    assert (p.s1_min_db, p.s1_max_db) == (-40.0, 30.0)
    got, _ = inf.s1_window_mean(s1, times, p)
    expected = reference_window_mean(values, s1.time.values, times, 12, -40.0, 30.0)
    np.testing.assert_allclose(got.values, expected, rtol=1e-6, atol=0)
    assert np.isnan(got.values[:, 0, 0]).all() and np.isfinite(got.values[:, 1:, 1:]).all()
    # the masked values lie within the windows: kept, the finite ones alone would move 46 % of
    # the means by more than 1 dB
    with_them = reference_window_mean(values, s1.time.values, times, 12, -40.0, np.inf)
    assert (np.abs(with_them - expected) > 1).mean() > 0.4
    # +30 dB is within the range: the means at that pixel include it
    assert np.nanmax(expected[:, -1, -1]) > np.nanmax(reference_window_mean(
        np.where(values == 30.0, np.nan, values), s1.time.values, times, 12, -40.0, 30.0)[:, -1, -1])


def test_sentinel1_above_the_db_range_stops_with_the_reason(flanders, tmp_path):
    """The real VV cube as linear power x 10000 (as some exports store it): every value is above
    +30 dB, so none is usable; the error names the bound and the fix, and nothing is written."""
    from optsar_nb.errors import NoImages

    p = InfillParams(mission="S2", start="2017-08-01", end="2018-12-01")
    ndvi, state, vv, vh = inf.load_flanders(flanders, p)
    power = (10 ** (vv / 10) * 1e4).assign_attrs(vv.attrs)
    assert float(power.min()) > p.s1_max_db  # 85 in this cube
    with pytest.raises(NoImages, match=r"no valid VV value .* above s1_max_db=30.0 dB.* in dB \(not linear power"):
        inf.infill(ndvi, state, power, vh, p, tmp_path, report=False, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_staged_stacks_at_an_fsspec_url(tmp_path):
    """``work_dir`` may be an fsspec URL (here fsspec's in-memory filesystem stands for a bucket):
    the stacks go there through Zarr's fsspec store, the files equal a run staged in a local
    folder, and the run's folder is removed afterwards."""
    import fsspec

    ndvi, state, vv, vh, _ = synthetic_scene(H=24, W=20, T=30)
    p = _params()
    here = inf.infill(ndvi, state, vv, vh, p, tmp_path / "here", report=False, workers=1)
    there = inf.infill(ndvi, state, vv, vh, p, tmp_path / "there", report=False, workers=1,
                       work_dir="memory://scratch/optsar")
    memory = fsspec.filesystem("memory")
    assert memory.ls("/scratch/optsar") == []
    a, b = _read_outputs(here), _read_outputs(there)
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)


def test_only_inputs_coefficients_and_scores_are_staged(tmp_path, monkeypatch):
    """The staged stacks are the inputs (observations, states, S1), the coefficients, B.8's
    component scores and the fusion's reliability, not the prediction stacks (which are
    recomputed): what is in the run folder just before it is removed."""
    import zarr

    from optsar_nb.local import _store

    seen = {}
    destroy = _store.Store.destroy

    def record(store):
        for folder in Path(store.location).iterdir():
            seen[folder.name.removesuffix("_all")] = zarr.open_array(store=str(folder), mode="r")
        destroy(store)

    monkeypatch.setattr(_store.Store, "destroy", record)
    ndvi, state, vv, vh, _ = synthetic_scene(H=24, W=20, T=30)
    run = inf.infill(ndvi, state, vv, vh, _params(), tmp_path, report=False, workers=1)
    T = len(run.metadata)
    # (the S1 stacks are removed once the gap-free file, the last to read them, is written)
    assert set(seen) == {"obs", "state", "donor", "inside", "coef", "scores", "rest", "alpha"}
    assert seen["scores"].shape == (int(0.1 * T), 24, 20) and seen["coef"].shape == (11, 24, 20)
    # the predictions B.8 leaves as they are: here every modelled pixel's series is complete
    assert seen["rest"].nchunks_initialized == 0


def test_stacks_stored_as_int16_are_staged_so_and_read_back_identical(tmp_path):
    """A stack its file stored as int16 x scale (as read: int16 -> float32 x scale) is staged as
    those int16 and reads back bit for bit; one value that is not of that form (or NaN where
    the int16 no-data would go) makes the whole stack staged as floats, still identical."""
    import dask.array as da

    from optsar_nb.local import _store

    rng = np.random.default_rng(3)
    q = rng.integers(-10000, 10000, size=(7, 20, 24)).astype("int16")
    values = q.astype("float32") * np.float32(1e-4)
    values[2, 3:9, 4:7] = np.nan  # cloudy
    store = _store.Store.create_in(str(tmp_path), "s-")
    moved = values.copy()
    moved[6, 19, 23] += np.float32(3e-5)  # not k x 1e-4: the stack stays float32
    states = (q % 3).astype("int8")
    # staged together, in one pass: packed, packed that falls back to floats, and unpacked
    # (a task's block spans several stored chunks, as a reader's window does)
    (packed, plain, plain_int8), _ = store.stage([("a", da.from_array(values, chunks=(7, 16, 16)), (1e-4, 0.0)),
                                             ("b", da.from_array(moved, chunks=(7, 16, 16)), (1e-4, 0.0)),
                                             ("s", da.from_array(states, chunks=(7, 16, 16)), None)], (7, 8, 8))
    assert isinstance(packed, _store.Packed) and packed.z.dtype == np.int16
    np.testing.assert_array_equal(packed[:, 2:17, 5:], values[:, 2:17, 5:])
    np.testing.assert_array_equal(_store.lazy(packed, chunks=(7, 5, 5)).compute(), values)
    assert not isinstance(plain, _store.Packed) and plain.dtype == np.float32
    np.testing.assert_array_equal(plain[...], moved)
    assert plain_int8.dtype == np.int8 and plain_int8.chunks == (7, 8, 8)
    np.testing.assert_array_equal(plain_int8[...], states)
    kept = store.copy("c", packed, np.array([0, 2, 5]), (3, 8, 8))  # images kept: still packed
    np.testing.assert_array_equal(kept[...], values[[0, 2, 5]])
    # every int16 with a scale and an offset, as a reader unpacks them (numpy, float32): the compiled
    # packing finds each value exact by the same arithmetic, and stages it so
    every = np.arange(-32767, 32768, dtype="int16").reshape(1, 255, 257)
    decode = _store.Packed(packed.z, 0.01, -5.3).decode
    unpacked = decode(every)
    (offset,), _ = store.stage([("o", da.from_array(unpacked, chunks=(1, 128, 128)), (0.01, -5.3))], (1, 64, 64))
    assert isinstance(offset, _store.Packed)
    np.testing.assert_array_equal(offset.z[...], every)
    np.testing.assert_array_equal(offset[...], unpacked)
    # a task's block that cuts a stored chunk would share it with the next task's: refused
    with pytest.raises(ValueError, match="cut chunks of 8"):
        store.stage([("d", da.from_array(values, chunks=(7, 12, 12)), None)], (7, 8, 8))
    store.destroy()


def test_stacks_staged_together_compute_what_they_share_once(tmp_path):
    import threading

    import dask.array as da

    from optsar_nb.local import _store

    calls, lock = [], threading.Lock()

    def counted(block):
        with lock:
            calls.append(block.shape)
        return block

    values = np.arange(4 * 20 * 24, dtype="float32").reshape(4, 20, 24)
    shared = da.from_array(values, chunks=(4, 8, 8)).map_blocks(counted, meta=np.array((), "float32"))
    store = _store.Store.create_in(str(tmp_path), "s-")
    (x, y), (total,) = store.stage([("x", shared, None), ("y", (shared * 2).astype("float64"), None)], (4, 8, 8),
                                   along=(shared.sum(),))
    assert len(calls) == 3 * 3  # one call per block, not one per staged stack or computed along
    assert total == values.sum()
    np.testing.assert_array_equal(x[...], values)
    np.testing.assert_array_equal(y[...], 2 * values.astype("float64"))
    store.destroy()


def test_whole_blocks_keep_a_readers_windows_that_are_whole_blocks(monkeypatch):
    """A reader's windows stay one chunk each (read and staged by one task) when they are whole
    multiples of the block edge on y and x; other chunks, and in-memory arrays, are cut into
    blocks; the time axis is always one chunk."""
    import dask.array as da
    import xarray as xr

    from optsar_nb.local import _blocks
    from optsar_nb.local._blocks import whole_blocks

    values = np.arange(6 * 500 * 414, dtype="int16").reshape(6, 500, 414)

    def chunks_of(chunks, edge, data=values):
        a = xr.DataArray(da.from_array(data, chunks=chunks) if chunks else data, dims=("time", "y", "x"))
        out = whole_blocks(a, edge)
        np.testing.assert_array_equal(out.compute(), data)
        return out.chunks

    assert chunks_of((3, 256, 256), 64) == ((6,), (256, 244), (256, 158))  # windows of 4 x 4 blocks each
    assert chunks_of((6, 256, 256), 512) == ((6,), (500,), (414,))  # a window smaller than a block
    assert chunks_of((6, 100, 100), 64) == ((6,), (64,) * 7 + (52,), (64,) * 6 + (30,))
    assert chunks_of(None, 128) == ((6,), (128, 128, 128, 116), (128, 128, 128, 30))  # in memory
    monkeypatch.setattr(_blocks, "WHOLE_CHUNK_BYTES", 6 * 256 * 256 * 2 - 1)  # a window over the budget: cut
    assert chunks_of((6, 256, 256), 128) == ((6,), (128, 128, 128, 116), (128, 128, 128, 30))


def _slow_thread_id(i):
    import threading
    import time

    time.sleep(0.05)
    return {threading.get_ident()}


def test_reductions_over_blocks_use_every_worker():
    """A reduction's tree of tasks (one root) runs its leaves on all the workers asked for: the
    graph's width, not its single root, sets how many run at once."""
    import operator

    import dask

    from optsar_nb.local import _store

    leaves = [dask.delayed(_slow_thread_id)(i) for i in range(12)]
    assert len(_store.total(leaves, operator.or_, processes=False, workers=2)) == 2
    assert len(_store.total(leaves, operator.or_, processes=False, workers=1)) == 1


def test_report_series_interpolation_is_each_pixels_own(tmp_path):
    """The report's time-series figure draws, per pixel, the linear interpolation between that
    pixel's training observations (numpy's np.interp as the independent reference)."""
    ndvi, state, vv, vh, _ = synthetic_scene()
    run = inf.infill(ndvi, state, vv, vh, _params(), tmp_path, report=False)
    s = run.series
    assert s["interpolation"].shape == s["obs"].shape == (len(run.metadata), len(s["y"]))
    for i in range(len(s["y"])):
        train = (s["state"][:, i] == 1) & np.isin(s["labels"], ("train", "validation"))
        train &= ~((s["labels"] == "validation") & bool(s["artificial"][i]))
        expected = np.interp(s["days"], s["days"][train], s["obs"][train, i])
        np.testing.assert_allclose(s["interpolation"][:, i], expected, rtol=0, atol=1e-6)


def test_compiled_covariates_equal_the_composed_kernels():
    """The method's covariates with its 3 x 3 median (compiled, image by image) are bit for bit
    those composed of the box mean and focal median kernels (each checked against a hand loop
    and scipy above), NaN edges, holes and a NaN AOI mean included."""
    from optsar_nb.local import steps

    rng = np.random.default_rng(8)
    p = _params()
    d = steps.covariate_halo(p)
    vv, vh = rng.normal(-12, 2, (9, 30 + 2 * d, 27 + 2 * d)), rng.normal(-18, 2, (9, 30 + 2 * d, 27 + 2 * d))
    vv[:, :5] = np.nan  # the image's edge
    vh[:, :, -3:] = np.nan
    vv[3, 20:25, 20:27] = np.nan  # a hole
    vh[rng.random(vh.shape) < 0.02] = np.nan
    vv_mean, vh_mean = rng.normal(-12, 1, 9), rng.normal(-18, 1, 9)
    vv_mean[4] = np.nan
    for fusion_only in (False, True):
        got = steps.covariate_block(vv, vh, vv_mean, vh_mean, p, fusion_only=fusion_only)
        composed = np.empty_like(got)
        steps._covariates_composed(vv, vh, vv_mean, vh_mean, p, composed, fusion_only)
        assert np.isnan(got).any() and np.isfinite(got).any()
        np.testing.assert_array_equal(got, composed)
