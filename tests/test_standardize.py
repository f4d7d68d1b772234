"""B.9 computed over blocks (``_standardize``) equals B.9 on whole images (``standardize_one``).

The reference is the whole-image computation with numpy's sort-based quantiles
(``_postprocess.interval_stats``); the blockwise one never holds an image and finds the order
statistics by histogram and selection, so the quantiles must agree exactly, and the means up to
the order of summation.
"""

from __future__ import annotations

import numpy as np
import pytest

from optsar_nb.local import _postprocess, _standardize, steps_post
from optsar_nb.missions import CLEAR, CLOUDY, MISSING
from optsar_nb.params import InfillParams


def test_quantile_positions_and_lerp_reproduce_numpy_exactly():
    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(1, 300))
        v = rng.normal(size=n)
        if trial % 2:
            v = np.round(v, 1)  # ties at the quantiles
        q = float(rng.random()) if trial % 5 else float(rng.choice([0.0, 0.05, 0.15, 0.85, 0.95, 1.0]))
        below, above, weight = _standardize.quantile_positions(n, q)
        s = np.sort(v)
        assert _standardize.lerp(s[below], s[above], weight) == np.quantile(v, q)


def _scene(rng, T, H, W):
    state = rng.choice([CLEAR, CLOUDY, MISSING], p=[0.6, 0.3, 0.1], size=(T, H, W)).astype("int8")
    obs = np.where(state == CLEAR, np.round(rng.uniform(-0.2, 0.9, size=(T, H, W)), 2), np.nan).astype("float32")
    smooth = rng.normal(0.4, 0.2, size=(T, H, W))
    smooth[:, :2, :2] = np.nan  # no prediction there
    smooth[3] = np.round(smooth[3], 1)  # ties
    state[4] = CLOUDY  # nothing clear: left as it is
    state[5] = MISSING
    state[5, 0, 0] = CLEAR  # one clear pixel
    obs[5, 0, 0], smooth[5, 0, 0] = 0.5, 0.3
    state[6, :, : W // 2] = CLEAR  # mostly cloudy elsewhere: over half cloudy, not standardized
    state[6, :, W // 2 :] = CLOUDY
    state[6, 0, : W // 2] = CLOUDY
    state[7, 0, :3] = CLEAR  # values beyond NDVI's range fall in the end bins: still exact
    obs[7, 0, :3] = (1.5, -3.0, 2.0)
    donor = rng.random((H, W)) < 0.4
    labels = np.array(["train", "validation", "test"] * (T // 3 + 1))[:T]
    return state, obs, smooth, donor, labels


@pytest.mark.parametrize("edge", [5, 16, 64])
def test_blockwise_standardization_equals_whole_images(edge):
    rng = np.random.default_rng(edge)
    T, H, W = 12, 37, 29
    state, obs, smooth, donor, labels = _scene(rng, T, H, W)
    params = InfillParams(start="2021-01-01", end="2022-01-01")
    blocks = [(slice(r, min(r + edge, H)), slice(c, min(c + edge, W))) for r in range(0, H, edge)
              for c in range(0, W, edge)]
    cloud = np.array([1.0 - (s == CLEAR).sum() / max((s != MISSING).sum(), 1) for s in state])
    b = _standardize.Blocks(smooth, obs, state, donor, labels, cloud, params)
    stats = _standardize.statistics(b, blocks, workers=2)
    out = np.concatenate([np.concatenate([_standardize.calibrated_block(b, stats, rows, cols)
                                          for cols in (slice(0, 10), slice(10, W))], axis=2)
                          for rows in (slice(0, 20), slice(20, H))], axis=1)  # any blocks
    whole = []  # B.9 on each whole image
    for t in range(T):
        clear = state[t] == CLEAR
        used = clear & ~donor if labels[t] == "validation" else clear
        ok = used & np.isfinite(obs[t]) & np.isfinite(smooth[t])
        assert stats["n"][t] == ok.sum()
        if ok.any():
            for series, values in ((_standardize.OBS, obs[t][ok]), (_standardize.PRED, smooth[t][ok])):
                expected = _postprocess.interval_stats(values, params.standardize_lower, params.standardize_upper)
                np.testing.assert_allclose(stats["stats"][series, t], expected, rtol=1e-13, atol=1e-15)
        whole.append(steps_post.standardize_one(smooth[t], obs[t], used, cloud[t], params))
        np.testing.assert_allclose(out[t], whole[t], rtol=2e-7, atol=0)  # float32 of nearly equal float64
    # B.10's per-image MAE, summed over blocks
    mae = _standardize.mae(sum(_standardize.mae_sums(obs[:, rows, cols], state[:, rows, cols], out[:, rows, cols])
                               for rows, cols in blocks))
    for t in range(T):
        assert mae[t] == pytest.approx(_postprocess.mae(obs[t], whole[t], state[t] == CLEAR), rel=1e-6)
    assert not stats["apply"][4] and not stats["apply"][6] and stats["apply"][5]
    assert mae[4] == -1.0


def test_interval_means_with_ties_at_the_interval_ends():
    """Values on a coarse grid put ties at every quantile and values equal to the intervals' ends
    in the bins they end in (whose values are tested one by one; the bins between them enter as
    sums): the means still equal numpy's on the whole images."""
    params = InfillParams(start="2021-01-01", end="2022-01-01")
    for seed in range(30):
        rng = np.random.default_rng(100 + seed)
        T, H, W = 9, 13, 11
        state, obs, smooth, donor, labels = _scene(rng, T, H, W)
        step = float(rng.choice([0.5, 0.1, 0.02]))
        smooth = np.round(smooth / step) * step
        obs = (np.round(obs / step) * step).astype("float32")
        edge = int(rng.integers(3, 14))
        blocks = [(slice(r, min(r + edge, H)), slice(c, min(c + edge, W))) for r in range(0, H, edge)
                  for c in range(0, W, edge)]
        b = _standardize.Blocks(smooth, obs, state, donor, labels, np.zeros(T), params)
        stats = _standardize.statistics(b, blocks, workers=1)
        for t in range(T):
            used = (state[t] == CLEAR) & ~(donor & (labels[t] == "validation"))
            ok = used & np.isfinite(obs[t]) & np.isfinite(smooth[t])
            for series, values in ((_standardize.OBS, obs[t][ok]), (_standardize.PRED, smooth[t][ok])):
                if values.size:
                    expected = _postprocess.interval_stats(values, params.standardize_lower, params.standardize_upper)
                    np.testing.assert_allclose(stats["stats"][series, t], expected, rtol=1e-13, atol=1e-15)
