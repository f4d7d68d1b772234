"""The steps of the gap infilling on the local engine (docs/method.md part B).

Steps, named as in docs/method.md and in the Earth Engine engine; each is a pure function of
labelled arrays (time, y, x) and ``InfillParams``:

B.1 :func:`ndvi`  B.2 :func:`cloud_mask`, :func:`image_cloud_stats`, :func:`drop_sparse_images`
B.3 :func:`align_s1`, :func:`s1_window_mean`, :func:`aoi_mean`, :func:`covariates`
B.4 :func:`focal_median`  B.5 :func:`pair_images`  B.6 :func:`split_pairs`,
:func:`training_mask`, :func:`robust_regression`  B.7 :func:`predict`
B.8 :func:`pca_smooth`  B.9 :func:`standardize`  B.10 :func:`gap_fill`, :func:`image_mae`.

B.8-B.10 and the focal median are in :mod:`optsar_nb.local.steps_post`.

The job that runs them all at scale (``_pipeline``), its inputs (``_infill_inputs``) and the
public entry (:mod:`optsar_nb.local.infill`) import this module; it imports none of them.

Lazy inputs stay lazy: neighbourhood steps run per spatial block with an explicit halo (NaN
beyond the image, so that only in-image, unmasked neighbours count, as in Earth Engine),
pixelwise steps per block with the full time axis, and AOI-wide quantities are explicit global
reductions.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import NoImages
from ..method import (  # noqa: F401 (the engine-neutral steps, part of this module's API)
    COEFFICIENT_BANDS,
    COVARIATES,
    FUSION_COVARIATES,
    SPLIT_LABELS,
    covariate_halo,
    pair_images,
    pca_components,
    split_pairs,
)
from ..missions import CLEAR, MISSING
from ..params import InfillParams
from . import _kernels, _regression
from ._blocks import _dask, _grid_attrs, lazy_array, with_halo
from ._cloud_states import cloud_state
from .gaps import aoi_cloud_stats, clip_to_aoi
from .grid import align_to
from .stack import metadata_of

FUSION_COVARIATE_INDEX = tuple(COVARIATES.index(c) for c in FUSION_COVARIATES)


# ---------------------------------------------------------------------------------------------
# B.1-B.2
def ndvi(red: xr.DataArray, nir: xr.DataArray) -> xr.DataArray:
    """NDVI = (NIR - red) / (NIR + red) of reflectance stacks (any scale; dimensionless, -1..1).

    NaN where either band is NaN or their sum is 0.
    """
    red32, nir32 = red.astype("float32"), nir.astype("float32")
    total = nir32 + red32
    out = xr.where(total != 0, (nir32 - red32) / total, np.nan).astype("float32")
    out.attrs = _grid_attrs(red)
    out.name = "NDVI"
    return out


def cloud_mask(qa: xr.DataArray, params: InfillParams, *, valid: xr.DataArray | None = None) -> xr.DataArray:
    """B.2: CLEAR (1) / CLOUDY (0) / MISSING (-1) per pixel and image, by the params' mask rule.

    The same classification as part A (:func:`optsar_nb.local.gaps.cloud_state`).
    """
    return cloud_state(qa, params.mask_rule_name, valid=valid, threshold=params.cloudscore_threshold)


def observed_state(state: xr.DataArray, ndvi_stack: xr.DataArray, inside: xr.DataArray | None) -> xr.DataArray:
    """The state used for infilling: outside the AOI, and clear pixels whose NDVI is NaN or not a
    possible NDVI (outside [-1, 1], infinite), become MISSING."""
    state = clip_to_aoi(state, inside)
    out = xr.where((state == CLEAR) & ~(np.abs(ndvi_stack) <= 1), MISSING, state).astype(state.dtype)
    if "id" in ndvi_stack.coords:
        out = out.assign_coords(id=ndvi_stack["id"])
    return out.assign_attrs(state.attrs)


def image_cloud_stats(state: xr.DataArray, counts: tuple | None = None) -> pd.DataFrame:
    """B.2 per image: ID, CollectionTime (ms UTC), CLOUD_PERCENTAGE_AOI, PIXEL_COUNT_AOI.

    ``state`` must already be MISSING outside the AOI (see :func:`observed_state`); ``counts``:
    its ``gaps.aoi_cloud_counts`` when already computed.
    """
    table = metadata_of(state)[["ID", "CollectionTime"]]
    return pd.concat([table, aoi_cloud_stats(state, counts)], axis=1)


def drop_sparse_images(table: pd.DataFrame, params: InfillParams) -> np.ndarray:
    """Indices of the images kept by B.2: more than ``min_valid_pixels`` valid AOI pixels.

    Raises NoImages when no image has a single clear pixel with a valid NDVI (nothing to learn
    from, nothing to anchor a gap on).
    """
    clear = table["PIXEL_COUNT_AOI"].to_numpy() * (100.0 - table["CLOUD_PERCENTAGE_AOI"].fillna(100).to_numpy())
    if not (clear > 0).any():
        raise NoImages(
            f"no clear optical pixel with a valid NDVI inside the AOI in any of the {len(table)} images from "
            f"{params.start} to {params.end}: the quality stack says cloudy or missing everywhere, or the NDVI is "
            "not in [-1, 1] (NDVI stored as scaled integers must be divided by their scale; values outside "
            "[-1, 1] count as missing)")
    return np.flatnonzero(table["PIXEL_COUNT_AOI"].to_numpy() > params.min_valid_pixels)


# ---------------------------------------------------------------------------------------------
# B.3-B.4
def align_s1(s1: xr.DataArray, template: xr.DataArray) -> xr.DataArray:
    """S1 (time, y, x) in dB resampled (nearest neighbour) onto the optical grid of ``template``."""
    name = f" {s1.name}" if s1.name else ""
    return align_to(s1, template, what=f"the Sentinel-1{name} stack")


def s1_window_mean(s1: xr.DataArray, optical_times, params: InfillParams) -> tuple[xr.DataArray, np.ndarray]:
    """B.3: per optical date, the per-pixel mean of S1 images within ``+-s1_window_days``.

    ``s1``: (time, y, x) backscatter in dB on the optical grid; values below ``s1_min_db`` or
    above ``s1_max_db`` are masked. Returns the (time = optical dates, y, x) float64 mean (NaN
    where the window holds no valid value) and ``S1_COUNT``, the number of S1 images in each window.
    The mean stays in float64, as Earth Engine's mean reducer returns it: the covariates are
    computed from it in float64 and rounded to float32 once (:func:`covariate_block`).
    """
    weights = _kernels.window_weights(optical_times, s1.time.values, params.s1_window_days)
    data = _dask(s1, (-1, *(_dask(s1, "auto").chunks[1:])))
    bounds = (params.s1_min_db, params.s1_max_db)
    out = data.map_blocks(lambda b: _kernels.window_mean(b, weights, *bounds),
                          chunks=((len(weights),), *data.chunks[1:]), dtype="float64")
    coords = {"time": pd.DatetimeIndex(optical_times), "y": s1.y, "x": s1.x}
    result = xr.DataArray(out, dims=("time", "y", "x"), coords=coords, attrs=_grid_attrs(s1), name=s1.name)
    return result, weights.sum(axis=1).astype("int64")


def aoi_mean(stack: xr.DataArray) -> np.ndarray:
    """(time,) spatial mean of each image over its finite pixels (NaN outside the AOI): a global reduction."""
    data = _dask(stack, _dask(stack, "auto").chunks)
    sums = da.nansum(data.astype("float64"), axis=(1, 2))
    counts = da.isfinite(data).sum(axis=(1, 2))
    sums, counts = da.compute(sums, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


COVARIATE_SLAB_PIXELS = 1 << 19  # pixels (with halo) of the images one slab of covariate_block holds


def covariate_block(vv_win: np.ndarray, vh_win: np.ndarray, vv_mean: np.ndarray, vh_mean: np.ndarray,
                    params: InfillParams, inside: np.ndarray | None = None, *, fusion_only: bool = False) -> np.ndarray:
    """B.3 + B.4 on one block: (T, y, x) S1 window means -> (8, T, y', x') smoothed covariates
    (``fusion_only``: only the fusion's, (2, T, y', x') in FUSION_COVARIATES order).

    The input carries a halo of ``covariate_halo(params)`` pixels on each side (NaN beyond the
    image) and the output is the block without it, exact at the block's edges. Order:
    COVARIATES. Every covariate is NaN where the pixel's own window mean is NaN, and outside
    ``inside`` (the block's AOI pixels, without halo) when it is given. The spatially
    constant AOI means are unchanged by a median; the median of ``pixel - mean`` is computed
    as ``median(pixel) - mean`` (a median commutes with a constant shift).

    Precision: as the Earth Engine graph (``optsar_nb.ee.infill.covariates``: double window
    means, AOI means and neighbourhood means, then ``toFloat``), every covariate is computed
    in float64 from the float64 window means and AOI means and rounded to float32 once, at the
    end. Computing in float32 instead moves covariates by an ulp or two, which is enough to
    flip a Talwar weight whose residual lies near the threshold (docs/earth_engine.md).
    """
    depth = covariate_halo(params)
    T, h, w = vv_win.shape[0], vv_win.shape[-2] - 2 * depth, vv_win.shape[-1] - 2 * depth
    out = np.empty((len(FUSION_COVARIATES) if fusion_only else len(COVARIATES), T, h, w), dtype="float32")
    if len(_kernels.circle_offsets(params.focal_median_radius_px)) == 9:  # the method's 3 x 3 median: compiled
        _kernels.covariates_3x3(*(np.ascontiguousarray(a, dtype="float64") for a in (vv_win, vh_win, vv_mean, vh_mean)),
                                int(params.neighbourhood_radius_px), int(np.ceil(params.focal_median_radius_px)),
                                fusion_only, out)
    else:
        _covariates_composed(vv_win, vh_win, vv_mean, vh_mean, params, out, fusion_only)
    if inside is not None:
        out[:, :, ~np.asarray(inside, dtype=bool)] = np.nan
    return out


def _covariates_composed(vv_win, vh_win, vv_mean, vh_mean, params: InfillParams, out: np.ndarray,
                         fusion_only: bool) -> None:
    """:func:`covariate_block` (without the AOI) composed of the numpy-level kernels
    (:func:`_kernels.box_mean`, :func:`_kernels.focal_median`), for any focal median: slabs of
    a few images keep their temporaries small (cache-sized, and recycled by the allocator
    instead of mapped afresh)."""
    step = max(1, COVARIATE_SLAB_PIXELS // (vv_win.shape[-2] * vv_win.shape[-1]))
    vv_mean, vh_mean = (np.asarray(m, dtype="float64").reshape(-1, 1, 1) for m in (vv_mean, vh_mean))
    for t in range(0, vv_win.shape[0], step):
        sl = slice(t, t + step)
        _covariate_slab(vv_win[sl], vh_win[sl], vv_mean[sl], vh_mean[sl], params, out[:, sl], fusion_only)


def _covariate_slab(vv_win, vh_win, vv_mean, vh_mean, params: InfillParams, out: np.ndarray,
                    fusion_only: bool) -> None:
    r_n, r_m = params.neighbourhood_radius_px, params.focal_median_radius_px
    depth, m = covariate_halo(params), int(np.ceil(r_m))
    h, w = out.shape[-2:]
    ring = (slice(None), slice(depth - m, depth + h + m), slice(depth - m, depth + w + m))  # core + median halo
    core = (slice(None), slice(m, m + h), slice(m, m + w))
    for k, (win, mean) in enumerate(((vv_win, vv_mean), (vh_win, vh_mean))):
        win = np.asarray(win, dtype="float64")  # float64 throughout; ``out`` (float32) rounds once
        # the box mean over the core + median halo: the input's outer r_n pixels are its halo
        nmean = _kernels.box_mean(win, r_n, inset=r_n)
        if fusion_only:  # VV_Nmean, VH_Nmean
            out[k] = _kernels.focal_median(nmean, r_m, inset=m)
            continue
        pix = win[ring]
        out[0 + k] = np.where(np.isfinite(pix[core]), mean, np.nan)
        # the medians read the median halo ``m`` and cover only the core
        out[2 + k] = _kernels.focal_median(pix, r_m, inset=m) - mean
        out[4 + k] = _kernels.focal_median(nmean, r_m, inset=m)
        out[6 + k] = _kernels.focal_median(pix - nmean, r_m, inset=m)


def covariate_support(inside: np.ndarray, params: InfillParams) -> np.ndarray:
    """(y, x) bool: the pixels whose S1 values the covariates of the AOI (``inside``) read, the
    AOI grown by :func:`covariate_halo` pixels (a square dilation, as on Earth Engine)."""
    from scipy import ndimage

    size = 2 * covariate_halo(params) + 1
    return ndimage.maximum_filter(np.asarray(inside, dtype="uint8"), size=size, mode="constant", cval=0).astype(bool)


def covariates(vv_win: xr.DataArray, vh_win: xr.DataArray, vv_mean: np.ndarray, vh_mean: np.ndarray,
               params: InfillParams, inside: xr.DataArray | None = None) -> xr.DataArray:
    """B.3 + B.4: the eight smoothed covariates, lazily, as (covariate, time, y, x) float32.

    ``*_win``: S1 window means (float64, see :func:`s1_window_mean`), valid at least on
    :func:`covariate_support` of the AOI; ``*_mean``: their AOI means per date; ``inside``:
    the AOI (default: the whole grid), outside of which the covariates are NaN.
    """
    depth = covariate_halo(params)
    chunks = _dask(vv_win, (-1, "auto", "auto")).chunks
    a = with_halo(_dask(vv_win, chunks), depth, np.nan)
    b = with_halo(_dask(vh_win, chunks), depth, np.nan)
    out = da.blockwise(lambda x, y: covariate_block(x, y, vv_mean, vh_mean, params), "ktyx", a, "tyx", b, "tyx",
                       new_axes={"k": 8}, adjust_chunks={"y": lambda c: c - 2 * depth, "x": lambda c: c - 2 * depth},
                       concatenate=True, dtype="float32")
    result = xr.DataArray(out, dims=("covariate", "time", "y", "x"),
                          coords={"covariate": list(COVARIATES), "time": vv_win.time, "y": vv_win.y, "x": vv_win.x},
                          attrs=_grid_attrs(vv_win), name="covariates")
    return result if inside is None else result.where(inside).astype("float32")


# ---------------------------------------------------------------------------------------------
# B.5-B.6
def training_mask(state: np.ndarray, labels: np.ndarray, donor_cloudy: np.ndarray) -> np.ndarray:
    """(T, y, x) bool: samples the regression may learn from.

    Clear pixels of training and validation pairs, minus, on validation pairs, the donor's
    cloudy pixels (the artificial clouds of B.6).
    """
    lab = np.asarray(labels).reshape(-1, 1, 1)
    usable = (state == CLEAR) & ((lab == "train") | (lab == "validation"))
    return usable & ~((lab == "validation") & donor_cloudy[None])


def validation_pixels(state: np.ndarray, labels: np.ndarray, donor_cloudy: np.ndarray) -> np.ndarray:
    """(T, y, x) bool: the artificially clouded pixels (truly clear) of validation pairs."""
    lab = np.asarray(labels).reshape(-1, 1, 1)
    return (state == CLEAR) & (lab == "validation") & donor_cloudy[None]


# ---------------------------------------------------------------------------------------------
# B.6-B.7 regression and prediction
def design(cov_block: np.ndarray) -> np.ndarray:
    """(8, T, y, x) covariates -> (P = y*x, T, 9) float64 design with the constant first."""
    n_cov, T = cov_block.shape[:2]
    return _with_constant(cov_block.reshape(n_cov, T, -1).transpose(2, 1, 0))


def _with_constant(covs: np.ndarray) -> np.ndarray:
    """(P, T, 8) covariates -> (P, T, 9) float64 design, the constant first."""
    X = np.empty((*covs.shape[:2], covs.shape[2] + 1))
    X[..., 0] = 1.0
    X[..., 1:] = covs
    return X


def fit_block(cov_block: np.ndarray, obs: np.ndarray, train: np.ndarray, params: InfillParams) -> np.ndarray:
    """Robust regression of one block: returns (11, y, x): 9 coefficients, rank, training count.

    Coefficients are NaN where a pixel has fewer than ``params.min_train_samples`` usable samples.

    The (pixels, T, 9) float64 design is built one regression batch of pixels at a time, so a
    block's memory is its covariates, not 2.25 times their size: blocks can be large and
    their halo cheap. Each pixel's design holds only its usable samples, in time order.
    """
    T, h, w = obs.shape
    used = np.flatnonzero(train.reshape(T, -1).any(axis=1))  # test pairs etc. cannot influence the fit
    covs = cov_block.reshape(cov_block.shape[0], T, h * w)
    y = obs.reshape(T, -1)
    valid = train.reshape(T, -1)
    out = np.empty((11, h * w))
    batch = max(64, _regression.BATCH_BYTES // max(1, len(used) * (cov_block.shape[0] + 1) * 8))
    for start in range(0, h * w, batch):
        px = slice(start, start + batch)
        # each pixel's usable samples first, in time order, and the rest (about half: clouds)
        # dropped: the regression sees only rows that can count
        X, y_b, usable, n_train = _regression.usable_design(covs, y, valid, used, px)
        coef, rank, _ = _regression.talwar_irls(X, y_b, usable, tuning=params.talwar_tuning, rcond=params.lstsq_rcond,
                                                max_iterations=params.irls_max_iterations, overwrite_X=True)
        coef[n_train < params.min_train_samples] = np.nan  # guard rail: too few samples, no model
        out[:9, px] = coef.T
        out[9, px] = rank
        out[10, px] = n_train
    return out.reshape(11, h, w)


def predict_block(cov_block: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """B.7 on one block: (8, T, y, x) covariates, (>= 9, y, x) coefficients -> (T, y, x) float32.

    The same float64 sum as :func:`_regression.predict` on the design, without building the
    (pixels, T, 9) design: compiled, element by element (:func:`_regression.predict_images`).
    NaN where a covariate or coefficient is NaN.
    """
    pred = np.empty(cov_block.shape[1:], "float32")
    _regression.predict_images(np.asarray(cov_block), np.asarray(coef[: cov_block.shape[0] + 1], dtype="float64"), pred)
    return pred


def robust_regression(obs_train: xr.DataArray, covs: xr.DataArray, params: InfillParams) -> xr.DataArray:
    """B.6: per-pixel robust regression of NDVI on [constant + 8 covariates] (lazy).

    ``obs_train``: (time, y, x) NDVI, NaN except at training samples (see :func:`training_mask`);
    ``covs``: (covariate, time, y, x). Returns (coef, y, x) float64 with bands COEFFICIENT_BANDS
    plus ``rank`` (of the final solve) and ``n_train`` (samples available): NaN coefficients
    where fewer than 9 samples exist.
    """
    c = covs.data if isinstance(covs.data, da.Array) else lazy_array(covs.values, -1)
    c = c.rechunk((8, -1, *c.chunks[2:]))
    o = _dask(obs_train, c.chunks[1:])
    out = da.blockwise(lambda cb, ob: fit_block(cb, ob, np.isfinite(ob), params), "cyx", c, "ktyx", o, "tyx",
                       new_axes={"c": 11}, concatenate=True, dtype="float64")
    return xr.DataArray(out, dims=("coef", "y", "x"),
                        coords={"coef": [*COEFFICIENT_BANDS, "rank", "n_train"], "y": covs.y, "x": covs.x},
                        attrs=_grid_attrs(covs), name="coefficients")


def predict(coefficients: xr.DataArray, covs: xr.DataArray) -> xr.DataArray:
    """B.7: NDVI predicted from covariates (covariate, time, y, x) and a coefficient image (lazy)."""
    c = covs.data if isinstance(covs.data, da.Array) else lazy_array(covs.values, -1)
    c = c.rechunk((8, -1, *c.chunks[2:]))
    k = _dask(coefficients.sel(coef=list(COEFFICIENT_BANDS)), (9, *c.chunks[2:]))
    out = da.blockwise(predict_block, "tyx", c, "ktyx", k, "jyx", concatenate=True, dtype="float32")
    return xr.DataArray(out, dims=("time", "y", "x"), coords={"time": covs.time, "y": covs.y, "x": covs.x},
                        attrs=_grid_attrs(covs), name="NDVI_Pred")
