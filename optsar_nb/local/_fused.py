"""The fused B.3-B.7 stage of the infilling job: covariates, fit, prediction and baselines, block by block.

Each block task reads the staged S1 with its halo, averages it over the pairs' windows, and
writes its coefficients, predictions and the fusion's S1 covariates into the staged stacks
(whole chunks: see ``_store``). Its own module so that worker processes import it (and through
it the steps) without the job's other machinery.
"""

from __future__ import annotations

import numpy as np

from . import _kernels, fusion, steps


def read_with_halo(stack, rows: slice, cols: slice, depth: int, dtype="float32") -> np.ndarray:
    """(T, h + 2 depth, w + 2 depth) ``dtype`` copy of a block of a (T, H, W) ``stack`` (numpy
    or Zarr) and its halo; NaN beyond the image."""
    T, H, W = stack.shape
    r0, r1, c0, c1 = rows.start - depth, rows.stop + depth, cols.start - depth, cols.stop + depth
    out = np.full((T, r1 - r0, c1 - c0), np.nan, dtype=dtype)
    out[:, max(r0, 0) - r0 : min(r1, H) - r0, max(c0, 0) - c0 : min(c1, W) - c0] = \
        stack[:, max(r0, 0) : min(r1, H), max(c0, 0) : min(c1, W)]
    return out


def fit_predict_block(stage: dict, rows: slice, cols: slice) -> dict[str, np.ndarray]:
    """B.3-B.7 on one block of the staged stacks: covariates, fit and prediction, written in place.

    ``stage``: the staged arrays ("obs", "state", "s1_vv", "s1_vh", "donor", "inside" read;
    "coef", "pred", "nmean" written) and the shared inputs ("weights": the pairs' S1 windows,
    "vv_mean", "vh_mean", "labels", "days", "params", "row_fraction"). Also stages the smoothed
    neighbourhood means (``VV_Nmean``, ``VH_Nmean``) the fusion reads, and returns the leave-out
    rows of a seeded sample (``row_fraction``) of the block's pixels for fitting the fusion
    weights (:func:`~optsar_nb.local.fusion.leave_out_rows`).
    """
    g = stage
    params, labels = g["params"], g["labels"]
    depth = steps.covariate_halo(params)
    bounds = (params.s1_min_db, params.s1_max_db)
    win_vv, win_vh = (_kernels.window_mean(read_with_halo(g[name], rows, cols, depth, g[name].dtype), g["weights"],
                                           *bounds)
                      for name in ("s1_vv", "s1_vh"))
    # the halo is removed, and so is everything outside the AOI
    covs = steps.covariate_block(win_vv, win_vh, g["vv_mean"], g["vh_mean"], params, g["inside"][rows, cols])
    del win_vv, win_vh
    o, s, donor = g["obs"][:, rows, cols], g["state"][:, rows, cols], g["donor"][rows, cols]
    train = steps.training_mask(s, labels, donor)
    fit = steps.fit_block(covs, np.where(train, o, np.nan), train, params)
    g["pred"][:, rows, cols] = steps.predict_block(covs, fit)
    g["coef"][:, rows, cols] = fit
    nmean = covs[list(steps.FUSION_COVARIATE_INDEX)]
    del covs
    g["nmean"][:, :, rows, cols] = nmean
    # the leave-out rows of a seeded sample of the block's pixels (all of them on small scenes)
    T = o.shape[0]
    px = np.random.default_rng([params.seed, rows.start, cols.start]).random(o[0].size) < g["row_fraction"]
    sample = fusion.leave_out_rows(o.reshape(T, -1)[:, px], train.reshape(T, -1)[:, px],
                                   nmean.reshape(nmean.shape[0], T, -1)[:, :, px], g["days"])
    return {k: sample[k] for k in ("bin", "resid", "dep")}


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
