"""Gap characterization on the local engine (docs/method.md part A).

Steps, named as in the Earth Engine engine:
``cloud_state`` (mask rule -> CLEAR/CLOUDY/MISSING per pixel and image),
``aoi_cloud_stats`` (per-image cloud percentage and valid pixel count over the AOI),
``composite_same_day``, ``day_counts`` and ``gap_statistics`` (the gap iteration and its
statistics). ``prepare_gaps`` runs them once for a period and AOI and holds what both uses need
(lazy statistics, daily states, the metadata table); ``write_gaps`` writes a prepared run and
``characterize_gaps`` does both. Outside the AOI every statistic is NaN, counts included, in
memory as in the written GeoTIFF.

All steps take and return lazy DataArrays chunked in space; the gap iteration needs the
whole time axis of a pixel, so it rechunks to full time and bounded spatial blocks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import NoImages
from ..missions import CLOUDY, MISSING
from ..params import GapParams
from ..products import GAP_STATISTIC_NAMES
from . import _gap_kernels
from ._blocks import lazy_array
from ._cloud_states import STATE_DTYPE, cloud_state  # noqa: F401 (cloud_state: part of this module's API)

# bytes of float32 per block in the gap iteration: keeps a block's temporaries ~10 x this
BLOCK_BYTES = 32 * 2**20
PANEL_MAX_PX = 1000  # longest side of a map in the PNG panel


# --------------------------------------------------------------------------------------------
# masks (the states themselves: ``_cloud_states``)
def aoi_mask(template: xr.DataArray, aoi) -> xr.DataArray:
    """Boolean (y, x) mask of the pixels whose centre lies in ``aoi`` (an AOI in EPSG:4326)."""
    from rasterio.features import geometry_mask
    from rasterio.transform import Affine
    from shapely.geometry import mapping

    from ..aoi import reproject
    from .grid import transform_from_coords

    crs = template.attrs.get("crs")
    geom = aoi.geometry
    if crs:
        geom = reproject(geom, "EPSG:4326", crs)
    transform = template.attrs.get("transform") or transform_from_coords(template.y.values, template.x.values)
    inside = ~geometry_mask(
        [mapping(geom)], out_shape=(template.sizes["y"], template.sizes["x"]), transform=Affine(*transform)
    )
    if not inside.any():
        raise NoImages(f"AOI {aoi.name!r} does not overlap the stack's extent: check the AOI or the input files")
    return xr.DataArray(inside, dims=("y", "x"), coords={"y": template.y, "x": template.x})


def clip_to_aoi(state: xr.DataArray, inside: xr.DataArray | None) -> xr.DataArray:
    """Pixels outside the AOI become MISSING."""
    if inside is None:
        return state
    return xr.where(inside, state, MISSING).transpose(*state.dims).astype(STATE_DTYPE).assign_attrs(state.attrs)


def aoi_cloud_counts(state: xr.DataArray) -> tuple:
    """Per image, the valid and the cloudy pixels (lazy when ``state`` is: two reductions)."""
    return (state != MISSING).sum(("y", "x")).data, (state == CLOUDY).sum(("y", "x")).data


def aoi_cloud_stats(state: xr.DataArray, counts: tuple | None = None) -> pd.DataFrame:
    """Per image: ``CLOUD_PERCENTAGE_AOI`` (cloudy / valid x 100) and ``PIXEL_COUNT_AOI`` (valid).

    Pixels outside the AOI must already be MISSING (see :func:`clip_to_aoi`). An image with no
    valid pixel has cloud percentage NaN. ``counts``: :func:`aoi_cloud_counts` of ``state``
    already computed (along with another pass over the stack).
    """
    import dask

    valid_n, cloudy_n = dask.compute(*(aoi_cloud_counts(state) if counts is None else counts))
    valid_n = np.asarray(valid_n, dtype="int64")
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(valid_n > 0, 100.0 * np.asarray(cloudy_n) / valid_n, np.nan)
    return pd.DataFrame({"CLOUD_PERCENTAGE_AOI": pct, "PIXEL_COUNT_AOI": valid_n})


# --------------------------------------------------------------------------------------------
# time
def select_period(stack: xr.DataArray, start: dt.date, end: dt.date) -> xr.DataArray:
    """Images with start <= time < end (end exclusive, as Earth Engine's filterDate)."""
    t = pd.DatetimeIndex(stack.time.values)
    keep = np.flatnonzero((t >= pd.Timestamp(start)) & (t < pd.Timestamp(end)))
    if keep.size and keep[-1] - keep[0] + 1 == keep.size:  # a run of images (sorted stacks): a view, not a copy
        return stack.isel(time=slice(keep[0], keep[-1] + 1))
    return stack.isel(time=keep)


def composite_same_day(state: xr.DataArray) -> xr.DataArray:
    """One image per UTC day: clear if clear in any image, missing only if missing in all.

    With MISSING < CLOUDY < CLEAR that is the maximum over the day's images.
    """
    days = pd.DatetimeIndex(state.time.values).normalize()
    if days.is_unique:
        return state.assign_coords(time=days)
    out = state.assign_coords(time=days).groupby("time").max()
    return out.astype(STATE_DTYPE).assign_attrs(state.attrs)


def day_counts(times, start: dt.date) -> np.ndarray:
    """Whole days from ``start`` to each time's UTC date."""
    days = pd.DatetimeIndex(times).normalize() - pd.Timestamp(start)
    return (days // pd.Timedelta(days=1)).to_numpy().astype("int64")


# --------------------------------------------------------------------------------------------
# the gap iteration
def _sorted_quantile(sorted_gaps: np.ndarray, count: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolation quantile along the last axis of the first ``count`` sorted gaps."""
    pos = q * (np.maximum(count, 1) - 1)
    lo = np.floor(pos).astype("int64")
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    a = np.take_along_axis(sorted_gaps, lo[:, None], 1)[:, 0]
    b = np.take_along_axis(sorted_gaps, hi[:, None], 1)[:, 0]
    return np.where(count > 0, a + (b - a) * (pos - lo), np.nan)


def gap_block(state: np.ndarray, days: np.ndarray, revisit_days: int, period_days: int) -> np.ndarray:
    """Gap statistics of one block: state (time >= 1, y, x) composited, days ascending and unique.

    Returns float32 (n_statistics, y, x) in the order of ``GAP_STATISTIC_NAMES``.
    The iteration of docs/method.md A.4: each clear day's gap is its distance to the previous
    clear day, the first one's to ``-revisit_days`` (one compiled pass: :mod:`._gap_kernels`);
    each pixel's gaps are then sorted for the minimum, maximum, median and 90th percentile.
    """
    n_time, ny, nx = state.shape
    gaps, count, valid_count, final_last, mean, var = _gap_kernels.gap_pass(
        np.ascontiguousarray(state.reshape(n_time, -1), dtype=STATE_DTYPE), np.asarray(days, dtype="int64"),
        int(revisit_days))
    has = count > 0
    gaps.sort(axis=1)
    top = np.maximum(count - 1, 0)[:, None]
    gmin, gmax = gaps[:, 0], np.take_along_axis(gaps, top, 1)[:, 0]
    median, p90 = _sorted_quantile(gaps, count, 0.5), _sorted_quantile(gaps, count, 0.9)
    mean, var, gmin, gmax = (np.where(has, v, np.nan) for v in (mean, var, gmin, gmax))
    with np.errstate(invalid="ignore", divide="ignore"):
        open_gap = np.where(valid_count > 0, period_days - final_last, np.nan)
        clear_fraction = np.where(valid_count > 0, count / np.maximum(valid_count, 1), np.nan)
    by_name = {"clear_count": count, "gap_count": count, "gap_mean": mean, "gap_median": median,
               "gap_std": np.sqrt(var), "gap_min": gmin, "gap_max": gmax, "gap_p90": p90, "open_gap": open_gap,
               "valid_count": valid_count, "clear_fraction": clear_fraction}
    out = np.stack([by_name[name] for name in GAP_STATISTIC_NAMES])
    return out.astype("float32").reshape(len(out), ny, nx)


def gap_statistics(state: xr.DataArray, params: GapParams) -> xr.DataArray:
    """Pixelwise gap statistics of a (time, y, x) state stack within the params' period.

    Selects the period, composites same-day images, runs the gap iteration per spatial block
    and returns a lazy float32 (stat, y, x) DataArray with the bands of ``GAP_STATISTIC_NAMES``.
    Undefined statistics (no clear day; no valid day for open_gap/clear_fraction) are NaN.
    """
    state = select_period(state, params.start, params.end)
    if not state.indexes["time"].is_monotonic_increasing:
        state = state.sortby("time")
    return daily_gap_statistics(composite_same_day(state), params)


def _no_image(params: GapParams) -> NoImages:
    return NoImages(
        f"no image between {params.start} and {params.end} (end exclusive): widen the dates or check the inputs"
    )


def daily_gap_statistics(state: xr.DataArray, params: GapParams) -> xr.DataArray:
    """:func:`gap_statistics` of a stack already within the period and composited (one image per
    day, in time order, as :func:`composite_same_day` returns it)."""
    if state.sizes["time"] == 0:
        raise _no_image(params)
    days = day_counts(state.time.values, params.start)
    n_time = len(days)
    edge = int(max(16, min(2048, np.sqrt(BLOCK_BYTES / (4 * n_time)))))
    data = state.data if isinstance(state.data, da.Array) else lazy_array(state.values, (-1, edge, edge))
    data = data.rechunk((-1, edge, edge))
    stats = da.map_blocks(
        gap_block,
        data,
        days,
        params.revisit_days,
        params.period_days,
        dtype="float32",
        chunks=((len(GAP_STATISTIC_NAMES),), data.chunks[1], data.chunks[2]),
    )
    return xr.DataArray(
        stats,
        dims=("stat", "y", "x"),
        coords={"stat": list(GAP_STATISTIC_NAMES), "y": state.y, "x": state.x},
        attrs={**{k: v for k, v in state.attrs.items() if k in ("crs", "transform")},
               "start": params.start.isoformat(), "end": params.end.isoformat(),
               "revisit_days": params.revisit_days, "mission": params.mission},
        name="gap_statistics",
    )


# --------------------------------------------------------------------------------------------
# the whole job
@dataclass
class GapPeriod:
    """Part A of a state stack prepared once for the params' period and an AOI: what writing the
    outputs and showing them in memory both use. Arrays are lazy (dask).

    ``images``: the period's (time, y, x) states, MISSING outside the AOI; ``daily_state``: their
    same-day composites, one per UTC day in time order; ``statistics``: the float32 (stat, y, x) gap
    statistics of ``daily_state``, named by ``stat``; ``inside``: the AOI's (y, x) mask, or None for
    the whole stack. Outside the AOI every statistic is NaN, ``clear_count``, ``gap_count`` and
    ``valid_count`` included: nothing is defined there (as Earth Engine's clip), and the written
    GeoTIFF holds exactly these values. ``source``: the state stack as given, whose fingerprint the
    manifest records.
    """

    params: GapParams
    source: xr.DataArray
    images: xr.DataArray
    inside: xr.DataArray | None
    daily_state: xr.DataArray
    statistics: xr.DataArray
    aoi: Any = None

    @cached_property
    def metadata(self) -> pd.DataFrame:
        """One row per image: ID, CollectionTime, CLOUD_PERCENTAGE_AOI, PIXEL_COUNT_AOI (computed on first
        use). Raises NoImages when no image has a valid quality value inside the AOI."""
        from .stack import metadata_of

        params = self.params
        table = pd.concat([metadata_of(self.images)[["ID", "CollectionTime"]], aoi_cloud_stats(self.images)], axis=1)
        if not (table["PIXEL_COUNT_AOI"] > 0).any():
            raise NoImages(
                f"no valid quality value inside the AOI in any of the {len(table)} images from {params.start} to "
                f"{params.end} (mask rule {params.mask_rule_name!r}): the quality stack is empty there, or holds "
                "values the rule does not define, which count as missing (SCL classes are 0-11; for a Landsat "
                "QA_PIXEL band give mission L8 or L9)")
        return table


def prepare_gaps(state: xr.DataArray, params: GapParams, *, aoi=None) -> GapPeriod:
    """Select the period of a (time, y, x) state stack, clip it to ``aoi`` (None: the whole stack),
    composite same-day images and set up the statistics, once; nothing is computed yet."""
    images = select_period(state, params.start, params.end)
    if images.sizes["time"] == 0:
        raise _no_image(params)
    inside = aoi_mask(images, aoi) if aoi is not None else None
    images = clip_to_aoi(images, inside)
    daily = composite_same_day(images.sortby("time"))
    stats = daily_gap_statistics(daily, params)
    if inside is not None:  # outside the AOI nothing is defined, counts included
        stats = stats.where(inside)
    return GapPeriod(params=params, source=state, images=images, inside=inside, daily_state=daily,
                     statistics=stats, aoi=aoi)


def write_gaps(gaps: GapPeriod, out_dir: str | Path, *, overwrite: bool | str = False,
               plot: bool = True) -> dict[str, Path]:
    """Write a prepared run's outputs into ``out_dir``; see :func:`characterize_gaps`."""
    from ..outputs import OutputSet, fingerprint, write_csv
    from ..products import CSV, GAP_MANIFEST_JOB, GAP_STATISTICS_FILE, MASK_METADATA_FILE, PNG, TIF, file_name
    from .geotiff_writer import write_geotiff

    params = gaps.params
    names = {
        "statistics": file_name(GAP_STATISTICS_FILE, params.suffix, TIF),
        "metadata": file_name(MASK_METADATA_FILE, params.suffix, CSV),
    }
    if plot:
        names["panel"] = file_name(GAP_STATISTICS_FILE, params.suffix, PNG)
    with OutputSet(out_dir, names.values(), job=GAP_MANIFEST_JOB, suffix=params.suffix, params=params.to_dict(),
                   inputs={"state": fingerprint(gaps.source), "aoi": getattr(gaps.aoi, "name", None)},
                   overwrite=overwrite) as out:
        paths = {kind: out.path(name) for kind, name in names.items()}
        table = gaps.metadata  # the first computation: stops here when nothing is valid
        stats = gaps.statistics
        write_geotiff(stats, paths["statistics"], band_names=[str(name) for name in stats.stat.values])
        write_csv(table, paths["metadata"])
        if plot:
            from ..plots import gap_panel
            from .stack import read_geotiff

            # plot from the written file, not by recomputing; large rasters are decimated for the figure
            written = read_geotiff(paths["statistics"]).rename(band="stat")
            step = max(1, max(written.sizes["y"], written.sizes["x"]) // PANEL_MAX_PX)
            gap_panel(written[:, ::step, ::step], paths["panel"],
                      title=f"Gap statistics {params.mission} {params.start} to {params.end}")
    return {kind: out.final(name) for kind, name in names.items()}


def characterize_gaps(
    state: xr.DataArray,
    params: GapParams,
    out_dir: str | Path,
    *,
    aoi=None,
    overwrite: bool | str = False,
    plot: bool = True,
) -> dict[str, Path]:
    """Run part A on a state stack and write its outputs into ``out_dir``.

    Writes ``Gap_Statistics<suffix>.tif`` (one band per statistic; NaN outside the AOI),
    ``InputMask_Metadata<suffix>.csv`` (ID, CollectionTime, CLOUD_PERCENTAGE_AOI, PIXEL_COUNT_AOI per
    input image) and, with ``plot``, ``Gap_Statistics<suffix>.png``, and ``Gap_Manifest<suffix>.json``
    last, which marks the set complete (:class:`optsar_nb.outputs.OutputSet`: staged, checked, then
    moved into place; one run per folder). Existing files are refused unless ``overwrite`` (True, or
    "own": only this job's own unchanged earlier outputs). Returns the written paths by kind.
    """
    return write_gaps(prepare_gaps(state, params, aoi=aoi), out_dir, overwrite=overwrite, plot=plot)
