"""B.3's S1 inputs in the infilling job (``_pipeline``): which images a period reads, and their
staging with the AOI means of their window means, computed by the tasks that read them."""

from __future__ import annotations

from functools import partial

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
    bounds = (params.s1_min_db, params.s1_max_db)
    names, items = ("s1_vv", "s1_vh"), []
    # stored in chunks of half a block (when that is a whole number of at least 16 px): a block's
    # read with its halo decodes about half as much; the windows, whole blocks, are then whole chunks
    half = edge // 2 if edge % 2 == 0 and edge >= 32 else edge
    for name, band in zip(names, (vv, vh)):
        s1 = whole_blocks(band, edge)  # windows of whole blocks: each window's task sums its blocks
        items.append((name, s1.astype(np.result_type(s1.dtype, np.float32)), band.attrs.get("packing")))
    if items[0][1].chunks != items[1][1].chunks:  # files of their own tiling: read block by block
        items = [(name, s1.rechunk((-1, edge, edge)), packing) for name, s1, packing in items]
    inputs = () if inside is None else (da.from_zarr(store.open("inside")),)
    # both staged, and their blocks' sums computed, by the task that reads each window
    staged, sums = store.stage(items, (vv.sizes["time"], half, half), codecs=dict.fromkeys(names, _store.FAST_LZ4),
                               summary=partial(_block_sums, weights=weights, bounds=bounds, edge=edge), inputs=inputs)
    staged = dict(zip(names, staged, strict=True))
    # (band, 2, T, blocks down, blocks across): the windows' blocks in place
    partials = np.concatenate([np.concatenate(list(row), axis=-1) for row in sums[0]], axis=-2)
    (s_vv, n_vv), (s_vh, n_vh) = (_aoi_sums(p) for p in partials)
    if n_vv.sum() == 0 or n_vh.sum() == 0:
        raise NoImages(
            f"Sentinel-1 has no valid {'VV' if n_vv.sum() == 0 else 'VH'} value over the optical grid within "
            f"{params.s1_window_days} days of any optical image (values below s1_min_db={params.s1_min_db} dB or "
            f"above s1_max_db={params.s1_max_db} dB, and no-data, count as missing): check that the S1 files cover "
            "the area and period, and are in dB (not linear power or amplitude)")
    with np.errstate(invalid="ignore", divide="ignore"):
        return staged, s_vv / n_vv, s_vh / n_vh


def _block_sums(vv: np.ndarray, vh: np.ndarray, inside: np.ndarray | None = None, *, weights, bounds,
                edge: int) -> np.ndarray:
    """(band, 2, T, blocks down, blocks across): for each ``edge`` px block of a window of whole
    blocks of VV and VH, the sum (NaN skipped) and the count of its pixels' window means
    (``weights``) in each of the T windows, within ``inside`` when given (the window's part of the
    AOI mask)."""
    _, h, w = vv.shape
    out = np.empty((2, 2, weights.shape[0], -(-h // edge), -(-w // edge)))
    for b, s1 in enumerate((vv, vh)):
        for i, r in enumerate(range(0, h, edge)):
            for j, c in enumerate(range(0, w, edge)):
                win = _kernels.window_mean(np.ascontiguousarray(s1[:, r:r + edge, c:c + edge]), weights, *bounds)
                if inside is not None:
                    win = np.where(inside[r:r + edge, c:c + edge], win, np.nan)
                out[b, 0, :, i, j] = np.nansum(win, axis=(1, 2))
                out[b, 1, :, i, j] = np.isfinite(win).sum(axis=(1, 2))
    return out


def _aoi_sums(partials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,) sums and counts over the AOI from :func:`_block_sums`' (2, T, blocks, blocks): the
    blocks' sums added in dask's tree of a block-chunked array's reduction, the order in which
    every AOI-wide sum of the job adds its blocks (the means feed every block's covariates: one
    order, whatever the windows the inputs were read in)."""
    sums = da.from_array(partials[0], chunks=(partials.shape[1], 1, 1)).sum(axis=(1, 2))
    return sums.compute(scheduler="sync"), partials[1].sum(axis=(1, 2)).astype(np.int64)
