"""Scoring of the infilling job and the gap-free product's blocks (docs/method.md part C).

After the S1 predictions are calibrated (B.9), one pass over spatial blocks of the staged
stacks computes, per block: each pixel's reliability of the S1 correction (staged), the
leave-out errors that calibrate the standard error, the errors of every estimate (S1
model, fusion, per-pixel mean, linear interpolation) on the same validation and test pixels,
per bin of distance to the nearest clear training observation, and the calibrated prediction's
error on every clear pixel (B.10's per-image MAE). The sums are AOI-wide
reductions of what blocks return. The product's blocks (:func:`gapfree_block`,
:func:`gapfree_pair`) are computed from the same stacks when the outputs are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import dask
import numpy as np
import pandas as pd

from ..missions import CLEAR
from ..params import InfillParams
from . import _kernels, _postprocess, _standardize, _store, fusion, steps
from ._blocks import BlockArray
from ._fused import read_with_halo

ESTIMATES = ("model", "fusion", "pixel_mean", "interpolation")
SCORED_SPLITS = ("validation", "test")
WITH_SE = ("model", "fusion")  # estimates that carry a standard error


@dataclass
class Stage:
    """The stacks (staged Zarr arrays, see ``_store``, or recomputed per block: ``_blocks.BlockArray``)
    and the quantities every block needs."""

    obs: np.ndarray  # (T, H, W) clear observations, NaN elsewhere
    state: np.ndarray  # (T, H, W) CLEAR / CLOUDY / MISSING
    pred: np.ndarray  # (T, H, W) calibrated S1 predictions
    nmean: np.ndarray  # (2, T, H, W) the fusion's S1 covariates
    alpha: np.ndarray  # (H, W) per-pixel reliability of the S1 correction (written by the scoring pass)
    donor: np.ndarray  # (H, W) bool, the artificial clouds
    labels: np.ndarray  # (T,) split labels
    days: np.ndarray  # (T,) days since the start
    weights: np.ndarray  # (len(GAP_BINS), 3) fusion weights: VV, VH departures, climatology
    params: InfillParams
    sample_fraction: float = 1.0  # share of the scored pixels kept for the scatter figure


def score_block(stage: Stage, rows: slice, cols: slice) -> dict[str, np.ndarray]:
    """The scoring pass on one block; writes the block's reliability into ``stage.alpha``."""
    s3, donor = np.asarray(stage.state[:, rows, cols]), stage.donor[rows, cols]
    T = s3.shape[0]
    o = np.asarray(stage.obs[:, rows, cols], dtype="float64").reshape(T, -1)
    s = s3.reshape(T, -1)
    N = s.shape[1]
    nm = np.asarray(stage.nmean[:, :, rows, cols]).reshape(-1, T, N)
    train = steps.training_mask(s3, stage.labels, donor).reshape(T, N)
    test = (s == CLEAR) & (stage.labels[:, None] == "test")
    score = steps.validation_pixels(s3, stage.labels, donor).reshape(T, N) | test
    alpha, calibration, (fused, interp, _, gbin, sbin) = fusion.reliability_and_fused(
        o, train, nm, stage.days, stage.weights, stage.params.fusion_prior_samples, score)
    stage.alpha[rows, cols] = alpha.reshape(s3.shape[1:])
    score &= np.isfinite(interp)
    # every estimate at the scored points (validation and test), on the same points
    pm = _postprocess.pixel_mean_baseline(np.where(train, o, np.nan))
    pred = np.asarray(stage.pred[:, rows, cols]).reshape(T, -1)
    split = np.array([SCORED_SPLITS.index(lab) if lab in SCORED_SPLITS else -1 for lab in stage.labels])
    sums, hist = fusion.score_errors(o, pred, fused, interp, pm, score, gbin, sbin, split, len(SCORED_SPLITS))
    mae = _standardize.mae_sums(o, s, pred)
    in_aoi = np.isfinite(pred)
    out_of_range = np.array([(np.abs(pred[in_aoi]) > 1).sum(), in_aoi.sum()])
    # a seeded sample of the scored points for the scatter figure
    t, n = np.nonzero(score)
    pick = np.random.default_rng([stage.params.seed, rows.start, cols.start]).random(t.size) < stage.sample_fraction
    t, n = t[pick], n[pick]
    model = np.where(np.isfinite(pred[t, n]), pred[t, n], fused[t, n])
    samples = np.column_stack([stage.labels[t] == sp for sp in SCORED_SPLITS] +
                              [o[t, n], model, fused[t, n], pm[n], interp[t, n]])
    return {"sums": sums, "hist": hist, "calibration": calibration, "out_of_range": out_of_range, "mae": mae,
            "samples": samples}


def score(stage: Stage, blocks, workers: int | None) -> dict[str, np.ndarray]:
    """The scoring pass: one task per block, on the active scheduler (threads on this machine:
    the work is in compiled loops that release the interpreter lock and in numpy); the blocks'
    results reduced."""
    parts = _store.compute([dask.delayed(score_block)(stage, rows, cols) for rows, cols in blocks],
                           processes=False, workers=workers)
    out = {k: sum(p[k] for p in parts) for k in ("sums", "hist", "calibration", "out_of_range", "mae")}
    out["samples"] = np.concatenate([p["samples"] for p in parts])
    return out


def standard_errors(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per estimate with a standard error, its SE per SE bin.

    The fusion's is calibrated on its leave-out errors of the training observations; the S1
    model's (no leave-out exists for it) on its validation errors, so that its validation
    coverage is 68 % by construction and its test coverage is the check.
    """
    return {"fusion": fusion.se_scale(scores["calibration"]),
            "model": fusion.se_scale(scores["hist"][WITH_SE.index("model"), SCORED_SPLITS.index("validation")])}


def metrics_tables(scores: dict[str, np.ndarray], se: dict[str, np.ndarray],
                   labels: np.ndarray) -> pd.DataFrame:
    """Rows (split, method, gap_bin) with n, MAE, RMSE, R2, bias and, for estimates with an SE,
    the share of errors within 1 SE; gap_bin "all" sums the bins."""
    se_to_gap = np.array([fusion.gap_bin(np.array([d]), np.array([two]))[0] for d, two in _se_bin_probes()])
    rows = []
    for split in SCORED_SPLITS:
        sel = labels == split
        for i, method in enumerate(ESTIMATES):
            per_bin = scores["sums"][i][sel].sum(axis=0)  # (bins, N_SUMS)
            for b, name in enumerate((*fusion.GAP_BINS, "all")):
                sums = per_bin.sum(axis=0) if name == "all" else per_bin[b]
                row = {"split": split, "method": method, "gap_bin": name, **_postprocess.metrics_from_sums(sums)}
                if method in WITH_SE:
                    h = scores["hist"][WITH_SE.index(method), SCORED_SPLITS.index(split)]
                    keep = np.ones(len(se_to_gap), bool) if name == "all" else se_to_gap == b
                    covered, total = fusion.coverage(np.where(keep[:, None], h, 0), se[method])
                    row["SE_coverage"] = covered / total if total else np.nan
                rows.append(row)
    return pd.DataFrame(rows)


def _se_bin_probes():
    """One (distance, two-sided) point inside each SE bin, in SE bin order."""
    two = (0.0, *fusion.SE_EDGES_TWO_SIDED)
    one = (0.0, *fusion.SE_EDGES_ONE_SIDED)
    return [(d + 0.5, True) for d in two] + [(d + 0.5, False) for d in one]


# ---------------------------------------------------------------------------------------------
# the product's blocks
def product(stage: Stage, rows: slice, cols: slice, *, with_bins: bool = False):
    """The product's fused estimate from every clear view of a block (T, h, w), where the pixel
    is not clear; ``with_bins``: and the SE bin of every date (int8, -1 without clear view)."""
    est, bins = _product(stage, rows, cols, *_clear_views(stage, rows, cols))
    return (est, bins) if with_bins else est


def _product(stage: Stage, rows: slice, cols: slice, o: np.ndarray, clear: np.ndarray,
             shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """:func:`product` (with its SE bins) from the block's :func:`_clear_views`."""
    T, h, w = shape
    nm = np.asarray(stage.nmean[:, :, rows, cols])
    est, _, _, _, bins = fusion.fused(o, clear, nm.reshape(nm.shape[0], T, -1), stage.days, stage.weights,
                                      np.asarray(stage.alpha[rows, cols]).ravel(), where=~clear)
    return est.reshape(T, h, w), bins.reshape(T, h, w)


def se_bins(stage: Stage, rows: slice, cols: slice) -> np.ndarray:
    """The SE bin (int8, -1 without clear view) of every date of a block: from the distances to the
    pixel's clear views only (no estimate is computed)."""
    o, clear, (T, h, w) = _clear_views(stage, rows, cols)
    bins = fusion.fused(o, clear, np.empty((0, T, o.shape[1]), "float32"), stage.days, stage.weights,
                        np.zeros(o.shape[1]), where=np.zeros_like(clear))[4]
    return bins.reshape(T, h, w)


def _clear_views(stage: Stage, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A block's (T, N) float64 observations and clear views, and its (T, h, w) shape."""
    o3 = np.asarray(stage.obs[:, rows, cols], dtype="float64")
    T = o3.shape[0]
    o = o3.reshape(T, -1)
    return o, (np.asarray(stage.state[:, rows, cols]).reshape(T, -1) == CLEAR) & np.isfinite(o), o3.shape


def gapfree_block(stage: Stage, inside: np.ndarray | None, rows: slice, cols: slice) -> np.ndarray:
    """NDVI_gapfree on one block: the clear observation where there is one, else the method's
    estimate ("fusion": the fused estimate; "paper": the calibrated S1 prediction, the fused
    estimate where a pixel has no model, then the B.10 focal median); NaN outside the AOI;
    never outside [-1, 1]."""
    return _gapfree(stage, inside, rows, cols)[0]


def gapfree_pair(stage: Stage, se: dict[str, np.ndarray], inside: np.ndarray | None,
                 rows: slice, cols: slice) -> np.ndarray:
    """(2, T, h, w) float32: NDVI_gapfree (:func:`gapfree_block`) and NDVI_gapfree_SE of one
    block. The SE is 0 where the clear observation is kept, else the standard error of the
    estimate by distance to the nearest clear observation (``se``: per SE bin); NaN outside the
    AOI. With the fusion, one pass of the fused estimate gives both (and the SE bins)."""
    fill, bins, clear = _gapfree(stage, inside, rows, cols)
    return np.stack([fill, _gapfree_se(stage, se, inside, rows, cols, bins, clear)])


def _gapfree(stage: Stage, inside, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray | None,
                                                                      np.ndarray | None]:
    """:func:`gapfree_block`, and when the fusion's estimate gave them (else None) the SE bins
    and the clear views (T, h, w)."""
    p, bins, clear = stage.params, None, None
    if p.method == "paper":  # the focal median reads a halo (NaN beyond the image)
        depth = int(np.ceil(p.focal_median_radius_px))
        fused = BlockArray(partial(product, stage), stage.obs.shape, "float64")
        o, state, fused, pred = (read_with_halo(a, rows, cols, depth) for a in (stage.obs, stage.state, fused,
                                                                                stage.pred))
        est = np.where(np.isfinite(pred), pred, fused)
        keep = read_with_halo(inside[None], rows, cols, depth)[0] == 1 if inside is not None else None
        fill = _postprocess.fill_image(o, est, (state == CLEAR) & np.isfinite(o), keep)
        fill = _kernels.focal_median(fill, p.focal_median_radius_px, inset=depth)
    else:  # the block's observations and states read once, for the estimate and the clear views kept
        o, clear, shape = _clear_views(stage, rows, cols)
        est, bins = _product(stage, rows, cols, o, clear, shape)
        clear = clear.reshape(shape)
        fill = np.where(clear, o.reshape(shape), est).astype("float32")
        if inside is not None:
            fill[:, inside[rows, cols] != 1] = np.nan
    return np.clip(fill, -1.0, 1.0, out=fill), bins, clear


def _gapfree_se(stage: Stage, se, inside, rows: slice, cols: slice, bins: np.ndarray | None,
                clear: np.ndarray | None = None) -> np.ndarray:
    """NDVI_gapfree_SE (see :func:`gapfree_pair`) from the block's SE bins (``bins``; None:
    computed here) and clear views (``clear``; None: read here)."""
    def lookup(table):  # SE bin -1 (no clear view) -> NaN
        return np.concatenate([[np.nan], table]).astype("float32")[sb + 1]

    sb = (se_bins(stage, rows, cols) if bins is None else bins).astype(np.intp)
    out = lookup(se["fusion"])
    if stage.params.method == "paper":  # the S1 regression's own SE where it predicts
        out = np.where(np.isfinite(stage.pred[:, rows, cols]), lookup(se["model"]), out)
    if clear is None:
        clear = (stage.state[:, rows, cols] == CLEAR) & np.isfinite(stage.obs[:, rows, cols])
    out[clear] = 0.0
    if inside is not None:
        out[:, inside[rows, cols] != 1] = np.nan
    return out
