"""The fused B.3-B.7 stage of the infilling job, and the recomputation of its outputs, block by block.

Each block task reads the staged S1 with its halo, averages it over the pairs' windows, computes
the covariates, fits and predicts. Only the coefficients are staged (11 per pixel); a block's
prediction is not: the stage returns what the PCA needs of it (band sums and cross products,
:func:`fit_predict_block`), and the predictions are recomputed from the S1 and the coefficients
where they are needed again (:func:`project_block`, exact: the same covariates and the same sum).
That keeps the temporary disk of a large scene to its observations, states and S1 (compressed),
coefficients and component scores.
Its own module so that worker processes import it (and through it the steps) without the job's
other machinery.
"""

from __future__ import annotations

import numpy as np

from . import _kernels, _postprocess, _standardize, fusion, steps


def read_with_halo(stack, rows: slice, cols: slice, depth: int, dtype="float32") -> np.ndarray:
    """(T, h + 2 depth, w + 2 depth) ``dtype`` copy of a block of a (T, H, W) ``stack`` (numpy,
    Zarr, or anything sliced like them) and its halo; NaN beyond the image."""
    T, H, W = stack.shape
    r0, r1, c0, c1 = rows.start - depth, rows.stop + depth, cols.start - depth, cols.stop + depth
    out = np.full((T, r1 - r0, c1 - c0), np.nan, dtype=dtype)
    out[:, max(r0, 0) - r0 : min(r1, H) - r0, max(c0, 0) - c0 : min(c1, W) - c0] = \
        stack[:, max(r0, 0) : min(r1, H), max(c0, 0) : min(c1, W)]
    return out


def s1_covariates(g: dict, rows: slice, cols: slice, *, fusion_only: bool = False) -> np.ndarray:
    """(8, T, h, w) covariates of a block (``fusion_only``: the fusion's two) from the staged S1
    ("s1_vv", "s1_vh") read with their halo and averaged over the pairs' windows ("weights");
    NaN outside the AOI ("inside")."""
    params = g["params"]
    depth = steps.covariate_halo(params)
    win_vv, win_vh = (_kernels.window_mean(read_with_halo(g[name], rows, cols, depth, g[name].dtype), g["weights"],
                                           params.s1_min_db, params.s1_max_db)
                      for name in ("s1_vv", "s1_vh"))
    return steps.covariate_block(win_vv, win_vh, g["vv_mean"], g["vh_mean"], params, g["inside"][rows, cols],
                                 fusion_only=fusion_only)


def fit_predict_block(stage: dict, rows: slice, cols: slice) -> dict[str, np.ndarray]:
    """B.3-B.7 on one block of the staged stacks: covariates, fit and prediction.

    ``stage``: the staged arrays ("obs", "state", "s1_vv", "s1_vh", "donor", "inside" read;
    "coef", "rest" written) and the shared inputs ("weights": the pairs' S1 windows, "vv_mean",
    "vh_mean", "labels", "days", "params", "pca": whether B.8 smooths, "row_fraction").
    Writes the coefficients, and into "rest" the predictions B.8 leaves as they are (pixels
    whose series is not complete, or all when B.8 does not smooth; only blocks that have some).
    Returns the leave-out rows of a seeded sample (``row_fraction``) of the block's pixels for
    fitting the fusion weights (:func:`~optsar_nb.local.fusion.leave_out_rows`) and the PCA's
    partial sums over the block's complete pixels ("pca": (T + 1 + T * T,) band sums, count,
    uncentred cross products).
    """
    g = stage
    params, labels = g["params"], g["labels"]
    covs = s1_covariates(g, rows, cols)
    o, s, donor = g["obs"][:, rows, cols], g["state"][:, rows, cols], g["donor"][rows, cols]
    train = steps.training_mask(s, labels, donor)
    fit = steps.fit_block(covs, np.where(train, o, np.nan), train, params)
    g["coef"][:, rows, cols] = fit
    pred = steps.predict_block(covs, fit)
    nmean = covs[list(steps.FUSION_COVARIATE_INDEX)]
    del covs
    T = o.shape[0]
    complete = _postprocess.complete_pixels(pred) if g["pca"] else np.zeros(pred.shape[1:], bool)
    if (np.isfinite(pred).any(axis=0) & ~complete).any():
        g["rest"][:, rows, cols] = np.where(complete, np.float32(np.nan), pred)
    # the leave-out rows of a seeded sample of the block's pixels (all of them on small scenes)
    px = np.random.default_rng([params.seed, rows.start, cols.start]).random(o[0].size) < g["row_fraction"]
    sample = fusion.leave_out_rows(o.reshape(T, -1)[:, px], train.reshape(T, -1)[:, px],
                                   nmean.reshape(nmean.shape[0], T, -1)[:, :, px], g["days"])
    return {"bin": sample["bin"], "resid": sample["resid"], "dep": sample["dep"],
            "pca": pca_sums(pred) if g["pca"] else np.zeros(0)}


def pca_sums(pred: np.ndarray) -> np.ndarray:
    """B.8's partial sums over a block's complete pixels ((T, h, w) prediction): (T + 1 + T * T,)
    band sums, count, uncentred cross products (float64)."""
    x = pred[:, _postprocess.complete_pixels(pred)].astype("float64")
    return np.concatenate([x.sum(axis=1), [x.shape[1]], (x @ x.T).ravel()])


def combine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two blocks' results as one: leave-out rows concatenated, PCA sums added."""
    return {k: a[k] + b[k] if k == "pca" else np.concatenate([a[k], b[k]]) for k in a}


def pca_basis(pca: np.ndarray, T: int, n_keep: int) -> tuple[np.ndarray, np.ndarray]:
    """B.8's band means (T,) and (T, n_keep) leading components from the summed partial sums of
    :func:`fit_predict_block`: the centred cross products are the uncentred ones less
    n x means means^T (float64 sums of NDVI-like values: no precision lost that matters)."""
    sums, n, cross = pca[:T], int(pca[T]), pca[T + 1 :].reshape(T, T)
    means = sums / max(n, 1)
    return means, _postprocess.pca_basis(cross - n * np.outer(means, means), n, n_keep)


def project_block(stage: dict, rows: slice, cols: slice) -> np.ndarray:
    """B.8 on one block: the prediction recomputed (covariates and the staged coefficients) and
    the complete pixels' component scores basis^T (pred - means) written into "scores" (float64;
    NaN elsewhere). Returns the block's first pass of B.9's statistics
    (``_standardize.ranges_of``) on "b9", whose smoothed prediction reads the scores just
    written, as every later pass does. ``stage`` as for :func:`fit_predict_block`, plus
    "means", "basis" and "b9"."""
    g = stage
    pred = steps.predict_block(s1_covariates(g, rows, cols), g["coef"][:, rows, cols])
    g["scores"][:, rows, cols] = pca_scores(pred, g["means"], g["basis"])
    return _standardize.ranges_of(g["b9"], rows, cols)


def pca_scores(pred: np.ndarray, means: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(k, h, w) component scores basis^T (pred - means) of a block's complete pixels, NaN elsewhere."""
    complete = _postprocess.complete_pixels(pred)
    scores = np.full((basis.shape[1], *pred.shape[1:]), np.nan)
    scores[:, complete] = basis.T @ (pred[:, complete].astype("float64") - means[:, None])
    return scores


def smooth_block(scores, rest, means: np.ndarray, basis: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """(T, h, w) float64 B.8 output of a block: means + basis scores where a pixel's series is
    complete, else its prediction (``rest``, read only when the block has such pixels); the
    same sums as ``_postprocess.pca_reconstruct``."""
    if basis is None:
        return np.asarray(rest[:, rows, cols]).astype("float64")
    s = np.asarray(scores[:, rows, cols])
    k, h, w = s.shape
    ok = np.isfinite(s[0])
    if ok.all():
        return (means[:, None] + basis @ s.reshape(k, -1)).reshape(-1, h, w)
    out = np.asarray(rest[:, rows, cols]).astype("float64")
    out[:, ok] = means[:, None] + basis @ s[:, ok]
    return out
