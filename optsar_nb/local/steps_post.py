"""The post-processing steps of the gap infilling on the local engine (docs/method.md B.8-B.10).

B.8 :func:`pca_smooth`  B.9 :func:`standardize_one`, :func:`standardize`  B.10 :func:`gap_fill`
(with :func:`focal_median`), :func:`image_mae`. They are part of :mod:`optsar_nb.local.steps`'
API too (re-exported there); the numpy kernels they run per block are in ``_postprocess``.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from ..method import pca_components
from ..params import InfillParams
from . import _kernels, _postprocess
from ._blocks import _dask, _grid_attrs, trim_halo, with_halo


def focal_median(stack: xr.DataArray, radius_px: float) -> xr.DataArray:
    """B.4 / B.10: NaN-aware circular focal median of every image (``ee.Kernel.circle(radius)``)."""
    depth = int(np.ceil(radius_px))
    chunks = _dask(stack, (-1, "auto", "auto")).chunks
    arr = with_halo(_dask(stack, chunks).astype("float32"), depth, np.nan)
    out = trim_halo(arr.map_blocks(_kernels.focal_median, radius_px, dtype="float32"), depth, chunks)
    return stack.copy(data=out)


def pca_smooth(pred: xr.DataArray, params: InfillParams, dtype="float32") -> xr.DataArray:
    """B.8: temporal PCA smoothing of a (time, y, x) prediction stack.

    Band means and the band-to-band covariance are global reductions over the pixels whose
    whole series is finite; those pixels are reconstructed from the leading
    floor(pca_fraction x T) components; other pixels keep their prediction. Returns a lazy
    array of ``dtype`` (the two reductions are computed here). The job asks for float64, the
    precision of the Earth Engine graph's reconstruction, which B.9 reads before the calibrated
    prediction is stored as float32: the interval means of B.9 include the values between two
    quantiles, so a tie that float32 rounding creates at a quantile would move them.
    """
    k = pca_components(pred.sizes["time"], params)
    if k < 1 or k >= pred.sizes["time"]:
        return pred
    data = _dask(pred, (-1, "auto", "auto"))
    T = data.shape[0]
    per_block = ((1,) * data.numblocks[1], (1,) * data.numblocks[2])
    sums = data.map_blocks(lambda b: _postprocess.pca_mean_sums(b)[:, None, None], chunks=((T + 1,), *per_block),
                           dtype="float64").sum(axis=(1, 2)).compute()
    means = sums[:T] / max(sums[T], 1)
    cross = data.map_blocks(lambda b: _postprocess.pca_cross_sums(b, means)[:, :, None, None], new_axis=1,
                            chunks=((T,), (T,), *per_block), dtype="float64").sum(axis=(2, 3)).compute()
    basis = _postprocess.pca_basis(cross, int(sums[T]), k)
    out = data.map_blocks(_postprocess.pca_reconstruct, means, basis, dtype, dtype=dtype)
    return pred.copy(data=out)


def standardize_one(pred: np.ndarray, obs: np.ndarray, clear: np.ndarray, cloud_fraction: float,
                    params: InfillParams) -> np.ndarray:
    """B.9 for one image: standardized prediction if cloud cover < standardize_max_cloud, else as is."""
    if not (cloud_fraction < params.standardize_max_cloud) or not clear.any():
        return pred.astype("float32")
    ok = clear & np.isfinite(obs) & np.isfinite(pred)
    if not ok.any():
        return pred.astype("float32")
    s_obs = _postprocess.interval_stats(obs[ok], params.standardize_lower, params.standardize_upper)
    s_pred = _postprocess.interval_stats(pred[ok], params.standardize_lower, params.standardize_upper)
    return _postprocess.standardize_image(pred, s_obs, s_pred)


def standardize(pred: xr.DataArray, obs: xr.DataArray, clear: xr.DataArray, cloud_fraction,
                params: InfillParams) -> xr.DataArray:
    """B.9 on a stack, image by image (each image is loaded once; use time-chunked inputs).

    ``clear``: (time, y, x) bool, the pixels whose observation may be used; ``cloud_fraction``:
    per image, 0-1. Statistics of observation and prediction are taken over the same pixels.
    """
    out = [standardize_one(np.asarray(pred[t].values), np.asarray(obs[t].values), np.asarray(clear[t].values),
                           float(cloud_fraction[t]), params) for t in range(pred.sizes["time"])]
    return pred.copy(data=np.stack(out) if out else pred.values)


def gap_fill(obs: xr.DataArray, pred: xr.DataArray, clear: xr.DataArray, params: InfillParams,
             inside: xr.DataArray | None = None) -> xr.DataArray:
    """B.10: observation where clear, prediction elsewhere, then the circular focal median, within
    [-1, 1] (lazy). The paper's fill; the job's default is the fusion (``fusion.py``)."""
    filled = xr.where(clear, obs, pred).astype("float32")
    if inside is not None:
        filled = filled.where(inside)
    filled.attrs = _grid_attrs(obs)
    return focal_median(filled, params.focal_median_radius_px).clip(-1.0, 1.0).rename("NDVI_gapfree")


def image_mae(obs: xr.DataArray, pred: xr.DataArray, clear: xr.DataArray) -> np.ndarray:
    """B.10: per image mean |obs - pred| over clear pixels; -1 where an image has none."""
    ok = clear & obs.notnull() & pred.notnull()
    err = abs(obs - pred).where(ok)
    n, s = da.compute(ok.sum(("y", "x")).data, err.sum(("y", "x")).data)
    n, s = np.asarray(n), np.asarray(s)
    return np.where(n > 0, s / np.maximum(n, 1), -1.0)

