"""The fusion on Earth Engine (optsar_nb.ee.fusion): band arithmetic evaluated offline equals the
local engine's per-pixel loops (optsar_nb.local.fusion) on the same series, row for row."""

from __future__ import annotations

import ee
import numpy as np
import pytest
from ee_support.cubes import band_array
from ee_support.evaluator import Evaluator
from ee_support.values import Band, Collection, Grid, Image

from optsar_nb import fusion_fit
from optsar_nb.ee import collections as col
from optsar_nb.ee import fusion as ee_fusion
from optsar_nb.local import fusion as local_fusion

H, W, T = 9, 11, 40


@pytest.fixture(scope="module")
def series():
    """Random series with the gaps clouds make: runs of missing dates, pixels with 0, 1 or 2 views,
    missing S1 on some dates."""
    rng = np.random.default_rng(7)
    days = np.cumsum(rng.integers(2, 13, T)).astype(float)
    n = H * W
    obs = np.clip(0.5 + 0.3 * np.sin(days[:, None] / 40 + rng.uniform(0, 6, n)) + rng.normal(0, 0.05, (T, n)), -1, 1)
    clear = rng.random((T, n)) < 0.45
    clear[:, 0] = False  # no clear view at all
    clear[:, 1] = False
    clear[17, 1] = True  # one
    clear[:, 2] = False
    clear[[3, 30], 2] = True  # two
    clear[5:25, 3:10] = False  # a long gap
    train = clear & (rng.random((T, n)) < 0.8)
    s1 = np.stack([obs * 3 - 12 + rng.normal(0, 0.4, (T, n)), obs * 4 - 19 + rng.normal(0, 0.4, (T, n))])
    s1[:, rng.random((T, n)) < 0.05] = np.nan
    return {"days": days, "obs": np.where(clear, obs, np.nan), "clear": clear, "train": train, "s1": s1}


@pytest.fixture(scope="module")
def evaluator(ee_offline, series):
    grid = Grid(crs="EPSG:32631", transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 5650000.0), height=H, width=W)
    ev = Evaluator(grid)
    ids = [f"d{t}" for t in range(T)]

    def register(name, stack):  # (T, H*W) -> one image per date, masked where NaN
        images = []
        for t, i in enumerate(ids):
            a = stack[t].reshape(H, W)
            images.append(Image({"b": Band(np.nan_to_num(a), np.isfinite(a))}, {"system:index": i}))
        ev.register(name, Collection(images))

    register("obs", series["obs"])
    register("train", series["train"].astype(float))
    register("vv", series["s1"][0])
    register("vh", series["s1"][1])
    return ev, ids


def _image(name, ids):
    return ee.ImageCollection(name).toBands().rename(ids)


def _anchors(ids, series, anchor):
    s1 = (_image("vv", ids), _image("vh", ids))
    return ee_fusion.Anchors.of(ids, list(series["days"]), _image("obs", ids), anchor, s1)


def test_leave_out_rows_equal_local(evaluator, series):
    ev, ids = evaluator
    train = _anchors(ids, series, _image("train", ids))
    rows = ev.evaluate(ee_fusion.leave_out_rows(train, list(range(T))))
    names = [f"{i}_{k}" for i in range(T) for k in fusion_fit.LEAVE_OUT_SKIPS]
    values = {n: band_array(rows, n).ravel().tolist() for n in rows.names}
    got = ee_fusion.rows_table(values, names)
    want = local_fusion.leave_out_rows(series["obs"], series["train"], series["s1"], series["days"])
    key = lambda r: np.lexsort((r["resid"], r["pixel"]))  # noqa: E731
    g, w = key(got), key(want)
    assert got["pixel"].size == want["pixel"].size > 1000
    np.testing.assert_array_equal(got["pixel"][g], want["pixel"][w])
    np.testing.assert_array_equal(got["bin"][g], want["bin"][w])
    np.testing.assert_array_equal(got["se_bin"][g], want["se_bin"][w])
    np.testing.assert_allclose(got["resid"][g], want["resid"][w], atol=1e-12)
    np.testing.assert_allclose(got["dep"][g], want["dep"][w], atol=1e-9)


WEIGHTS = np.array([[0.02, -0.03, 0.05], [0.04, -0.05, 0.1], [0.06, -0.07, 0.2], [0.08, -0.09, 0.4],
                    [0.01, 0.02, 0.6]])
PRIOR = 30.0


def test_reliability_equals_local(evaluator, series):
    """Server-side sums over each pixel's rows = the local kernel = the client's numpy form."""
    ev, ids = evaluator
    train = _anchors(ids, series, _image("train", ids))
    alpha = band_array(ev.evaluate(ee_fusion.reliability(train, list(range(T)), WEIGHTS, PRIOR)), "alpha").ravel()
    want, _ = local_fusion.pixel_reliability(series["obs"], series["train"], series["s1"], series["days"], WEIGHTS,
                                             PRIOR)
    np.testing.assert_allclose(alpha, want, atol=1e-12)
    rows = local_fusion.leave_out_rows(series["obs"], series["train"], series["s1"], series["days"])
    client, _ = fusion_fit.reliability_from_rows(rows["pixel"], rows["bin"], rows["resid"], rows["dep"], WEIGHTS,
                                                 PRIOR, H * W)
    np.testing.assert_allclose(client, want, atol=1e-12)
    assert len(np.unique(alpha)) > H * W / 2  # pixels differ: not all at the prior or a bound


def test_fused_estimate_and_standard_error_equal_local(evaluator, series):
    """The product's estimate from every clear view, at every date it fills (those without a
    clear view), with a per-pixel alpha; the SE looked up by the local SE bins, at every date."""
    ev, ids = evaluator
    alpha_values = np.random.default_rng(3).uniform(0, 2, H * W)
    ev.register("alpha", Collection([Image({"alpha": Band(alpha_values.reshape(H, W), np.ones((H, W), bool))})]))
    alpha = ee.Image(ee.ImageCollection("alpha").first())
    views = _anchors(ids, series, _image("obs", ids).mask())
    se_table = np.linspace(0.05, 0.15, fusion_fit.N_SE_BINS)
    parts = [ee_fusion.fused(views, i, WEIGHTS, alpha, se_table) for i in range(T)]
    est = ev.evaluate(col.bands_by_id([p[0] for p in parts], ids))
    err = ev.evaluate(col.bands_by_id([p[1] for p in parts], ids))
    got = np.stack([band_array(est, i).ravel() for i in ids])
    got_se = np.stack([band_array(err, i).ravel() for i in ids])
    want, _, _, _, se_bin = local_fusion.fused(series["obs"], series["clear"], series["s1"], series["days"], WEIGHTS,
                                               alpha_values, where=~series["clear"])
    got = np.where(series["clear"], np.nan, got)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:, 0]).all()  # no clear view
    assert np.isfinite(np.delete(got[:, 1], 17)).all()  # one view, at date 17
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_array_equal(got_se, np.where(se_bin >= 0, se_table[se_bin], np.nan))


def test_a_sample_of_pixels_fits_the_weights_in_one_request(evaluator, series):
    """Up to ``sample_pixels``, every pixel's rows are fetched and the fit equals the local one;
    beyond, a seeded random share of the AOI's pixels (ee.Image.random) sends its rows."""
    from optsar_nb.params import InfillParams

    ev, ids = evaluator
    train = _anchors(ids, series, _image("train", ids))
    region = ee.Geometry.Polygon([[[2.9, 50.9], [3.1, 50.9], [3.1, 51.1], [2.9, 51.1]]], None, False)  # the grid
    calls = []

    def fetch(obj):
        calls.append(obj)
        return ev.evaluate(obj)

    params = InfillParams(mission="S2", start="2017-01-01", end="2018-01-01")
    full = ee_fusion.fetch_fit(train, list(range(T)), region, None, H * W, params, sample_pixels=H * W, fetch=fetch)
    half = ee_fusion.fetch_fit(train, list(range(T)), region, None, H * W, params, sample_pixels=H * W // 2,
                               fetch=fetch)
    assert len(calls) == 2
    rows = local_fusion.leave_out_rows(series["obs"], series["train"], series["s1"], series["days"])
    assert (full.n_pixels, full.n_rows) == (H * W, rows["resid"].size)
    np.testing.assert_allclose(full.weights, fusion_fit.fit_weights(rows["bin"], rows["resid"], rows["dep"]),
                               atol=1e-9)
    assert 0.3 * H * W < half.n_pixels < 0.7 * H * W
    assert 0.3 * full.n_rows < half.n_rows < 0.7 * full.n_rows
    assert np.isfinite(half.weights).all() and np.isfinite(half.se).all()
