"""The infilling job's files and the report's raw material, from the staged stacks (``_pipeline``)."""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ..outputs import write_csv
from ..params import InfillParams
from ..products import INFILL_METADATA_FILE, file_name
from . import _accuracy, _postprocess, _store, steps
from ._blocks import BlockArray, _grid_attrs
from .geotiff_writer import TILE_PX, write_geotiff_groups

MODEL_FILE = "NDVI_Model"  # the coefficient image (bands = COEFFICIENT_BANDS)
REPORT_FILE = "Infill_Report"
METRICS_FILE = "Infill_Metrics"  # accuracy of every estimate by split and gap length
SERIES_PIXELS = 4  # pixels whose time series the report plots


def output_paths(out_dir: Path, params: InfillParams, *, report: bool) -> dict[str, Path]:
    paths = {name: out_dir / file_name(name, params.suffix, ".tif")
             for name in ("NDVI_gapfree", "NDVI_gapfree_SE", "NDVI_Mask", "NDVI_Pred", "NDVI_Obs", MODEL_FILE)}
    paths["metadata"] = out_dir / file_name(INFILL_METADATA_FILE, params.suffix, ".csv")
    paths["metrics"] = out_dir / file_name(METRICS_FILE, params.suffix, ".csv")
    if report:
        paths["report"] = out_dir / file_name(REPORT_FILE, params.suffix, ".md")
    return paths


def _stack_like(data, template: xr.DataArray, table: pd.DataFrame, name: str) -> xr.DataArray:
    coords = {"time": pd.to_datetime(table["CollectionTime"].to_numpy(), unit="ms"),
              "id": ("time", table["ID"].astype(str).to_numpy()), "y": template.y, "x": template.x}
    return xr.DataArray(data, dims=("time", "y", "x"), coords=coords, attrs=_grid_attrs(template), name=name)


def write_outputs(ndvi, table, stage: _accuracy.Stage, se, coef, inside, paths, overwrite, *, s1_done=None) -> None:
    """The stacks, the coefficient image and the metadata CSV.

    ``s1_done()`` is called once the last files that read S1 (the gap-free stack and its SE,
    written together, through the fusion's covariates) are written: the staged S1 can go before
    the other files take the disk.

    Each task computes a whole file tile, the staging's blocks within it one after the other:
    a block's temporaries stay near the CPU cache (whole tiles of a 400-image stack made each a
    pass through memory: a third slower on two cores), and the tile is compressed where it was
    computed (tasks of single blocks were spread over a cluster's workers, and each tile's
    blocks then moved to the one compressing it).
    """
    edge = stage.obs.chunks[-1]
    tiles = (-1, TILE_PX, TILE_PX)
    T, H, W = stage.obs.shape
    inside = np.asarray(inside.values) if inside is not None else None

    def by_blocks(fn, shape, dtype, name):  # named here: dask would otherwise hash what fn reads to name it
        return da.from_array(BlockArray(fn, shape, dtype, edge=edge), chunks=(-1,) * (len(shape) - 2) + tiles[1:],
                             name=f"{name}-{uuid.uuid4().hex}")

    pred_da = _stack_like(by_blocks(stage.pred.fn, (T, H, W), "float32", "NDVI_Pred"), ndvi, table, "NDVI_Pred")
    obs_da = _stack_like(_store.lazy(stage.obs, chunks=tiles), ndvi, table, "NDVI_Obs")
    st_da = _stack_like(da.from_zarr(stage.state, chunks=tiles), ndvi, table, "NDVI_Mask")
    # NDVI_gapfree and its SE from one pass over the blocks
    both = by_blocks(partial(_accuracy.gapfree_pair, stage, se, inside), (2, T, H, W), "float32", "NDVI_gapfree")
    coef = xr.DataArray(da.from_zarr(coef, chunks=tiles)[:9], dims=("coef", "y", "x"),
                        coords={"coef": list(steps.COEFFICIENT_BANDS), "y": ndvi.y, "x": ndvi.x},
                        attrs=_grid_attrs(ndvi))
    # in one stream of windows, the workers kept busy across the groups' ends: the files that
    # share a block function together (the gap-free stack and its SE; the mask, prediction and
    # observations), then the coefficients (band names: their labels)
    write_geotiff_groups([[(_stack_like(both[0], ndvi, table, "NDVI_gapfree"), paths["NDVI_gapfree"]),
                           (_stack_like(both[1], ndvi, table, "NDVI_gapfree_SE"), paths["NDVI_gapfree_SE"])],
                          [(st_da, paths["NDVI_Mask"]), (pred_da, paths["NDVI_Pred"]), (obs_da, paths["NDVI_Obs"])],
                          [(coef, paths[MODEL_FILE])]],
                         overwrite=overwrite, done=[s1_done, None, None])
    out_table = table.rename(columns={"CLOUD_PERCENTAGE_AOI": "Cloud_cover"})
    write_csv(out_table[["ID", "Cloud_cover", "CollectionTime", "Random", "MAE", "SplitLabel"]], paths["metadata"],
              overwrite=overwrite)


def split_samples(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Per scored split, (n, 1 + len(ESTIMATES)) sampled values: the observation, then each estimate."""
    n_splits = len(_accuracy.SCORED_SPLITS)
    return {split: samples[samples[:, i] == 1][:, n_splits:] for i, split in enumerate(_accuracy.SCORED_SPLITS)}


def series(stage: _accuracy.Stage, modelled: np.ndarray) -> dict[str, np.ndarray]:
    """Time series of a few pixels with a model (``modelled``, (H, W); seeded choice) for the report."""
    ok = np.flatnonzero(modelled.ravel())
    if ok.size == 0:
        return {}
    H, W = modelled.shape
    pick = np.sort(np.random.default_rng(stage.params.seed).choice(ok, min(SERIES_PIXELS, ok.size), replace=False))
    ys, xs = np.unravel_index(pick, (H, W))
    one = [(slice(y, y + 1), slice(x, x + 1)) for y, x in zip(ys, xs)]

    def at(stack):  # (T, n) the points' series
        return np.stack([stack[:, r, c][:, 0, 0] for r, c in one], axis=1)

    gapfree = np.stack([_accuracy.gapfree_block(stage, None, r, c)[:, 0, 0] for r, c in one], axis=1)
    series_obs = at(stage.obs).astype("float64")
    series_st = at(stage.state)
    donor = np.array([stage.donor[y, x] for y, x in zip(ys, xs)])
    train = steps.training_mask(series_st[:, None, :], stage.labels, donor[None, :])[:, 0, :]  # (T, 1 row, n)
    interp = _postprocess.interpolation_baseline(np.where(train, series_obs, np.nan), stage.days)
    return {"days": np.asarray(stage.days), "y": ys, "x": xs, "obs": series_obs, "state": series_st,
            "pred": at(stage.pred).astype("float64"), "gapfree": gapfree, "interpolation": interp,
            "labels": stage.labels, "artificial": donor, "start": stage.params.start}
