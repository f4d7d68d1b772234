"""B.3's S1 inputs in the infilling job (``_pipeline``): which images a period reads, and their
staging with the AOI means of their window means, computed by the tasks that read them."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import NoImages
from ..params import InfillParams
from . import _kernels, _store
from ._blocks import whole_blocks


def s1_near(s1: xr.DataArray, params: InfillParams) -> np.ndarray:
    """Positions of the S1 images of the period and of a window beyond it on each side, so that
    dates near its ends get full windows."""
    t = pd.DatetimeIndex(s1.time.values)
    pad = pd.Timedelta(days=params.s1_window_days)
    return np.flatnonzero((t >= pd.Timestamp(params.start) - pad) & (t < pd.Timestamp(params.end) + pad))


def stage_s1(vv, vh, weights, params, store, edge, inside) -> tuple[dict, np.ndarray, np.ndarray]:
    """B.3: the aligned S1 stacks staged as ``s1_vv``/``s1_vh`` (their own precision, at least
    float32; the file's int16 when it stored them so); returns them, and the AOI means
    (``inside``; None: the whole grid) of the pairs' window means (``weights``), a global
    reduction over means computed block by block from the values being staged, and dropped (the
    fused stage recomputes them with its halo: ``_kernels.window_mean`` gives a pixel the same
    value in any block). Raises NoImages when S1 has no valid value in the AOI.
    """
    T = weights.shape[0]
    bounds = (params.s1_min_db, params.s1_max_db)
    names, items, partials = ("s1_vv", "s1_vh"), [], []
    # stored in chunks of half a block (when that is a whole number of at least 16 px): a block's
    # read with its halo decodes about half as much; the windows, whole blocks, are then whole chunks
    half = edge // 2 if edge % 2 == 0 and edge >= 32 else edge
    for name, band in zip(names, (vv, vh)):
        s1 = whole_blocks(band, edge)  # windows of whole blocks: each window's task sums its blocks
        s1 = s1.astype(np.result_type(s1.dtype, np.float32))
        items.append((name, s1, band.attrs.get("packing")))
        blocks = tuple(tuple(-(-c // edge) for c in axis) for axis in s1.chunks[1:])
        args = [s1] if inside is None else [s1, da.from_zarr(store.open("inside"), chunks=s1.chunks[1:])]
        partials.append(da.map_blocks(_block_sums, *args, weights=weights, bounds=bounds, edge=edge, new_axis=0,
                                      chunks=((2,), (T,), *blocks), meta=np.empty((0, 0, 0, 0))))
    # both staged, and the blocks' sums computed, in one pass over the inputs (by the tasks that
    # read each window: nothing of a window moves between the workers of a cluster)
    staged, partials = store.stage(items, (vv.sizes["time"], half, half),
                                   codecs=dict.fromkeys(names, _store.FAST_LZ4), along=tuple(partials))
    staged = dict(zip(names, staged, strict=True))
    (s_vv, n_vv), (s_vh, n_vh) = (_aoi_sums(p) for p in partials)
    if n_vv.sum() == 0 or n_vh.sum() == 0:
        raise NoImages(
            f"Sentinel-1 has no valid {'VV' if n_vv.sum() == 0 else 'VH'} value over the optical grid within "
            f"{params.s1_window_days} days of any optical image (values below s1_min_db={params.s1_min_db} dB or "
            f"above s1_max_db={params.s1_max_db} dB, and no-data, count as missing): check that the S1 files cover "
            "the area and period, and are in dB (not linear power or amplitude)")
    with np.errstate(invalid="ignore", divide="ignore"):
        return staged, s_vv / n_vv, s_vh / n_vh


def _block_sums(s1: np.ndarray, inside: np.ndarray | None = None, *, weights, bounds, edge: int) -> np.ndarray:
    """(2, T, blocks down, blocks across): for each ``edge`` px block of a window of whole blocks,
    the sum (NaN skipped) and the count of its pixels' window means (``weights``) in each of the
    T windows, within ``inside`` when given (the window's part of the AOI mask)."""
    _, h, w = s1.shape
    out = np.empty((2, weights.shape[0], -(-h // edge), -(-w // edge)))
    for i, r in enumerate(range(0, h, edge)):
        for j, c in enumerate(range(0, w, edge)):
            win = _kernels.window_mean(np.ascontiguousarray(s1[:, r:r + edge, c:c + edge]), weights, *bounds)
            if inside is not None:
                win = np.where(inside[r:r + edge, c:c + edge], win, np.nan)
            out[0, :, i, j] = np.nansum(win, axis=(1, 2))
            out[1, :, i, j] = np.isfinite(win).sum(axis=(1, 2))
    return out


def _aoi_sums(partials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,) sums and counts over the AOI from :func:`_block_sums`' (2, T, blocks, blocks): the
    blocks' sums added in dask's tree of a block-chunked array's reduction, the order in which
    every AOI-wide sum of the job adds its blocks (the means feed every block's covariates: one
    order, whatever the windows the inputs were read in)."""
    sums = da.from_array(partials[0], chunks=(partials.shape[1], 1, 1)).sum(axis=(1, 2))
    return sums.compute(scheduler="sync"), partials[1].sum(axis=(1, 2)).astype(np.int64)
