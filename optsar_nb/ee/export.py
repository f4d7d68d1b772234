"""Getting results out of Earth Engine: Drive, Asset, Cloud Storage or a local download.

Everything that talks to the server goes through a :class:`~optsar_nb.ee.tasks.Client` (the
real one wraps ``ee.batch.Export`` and ``ee.data``), so tests inject a fake. Outputs that already
exist are skipped, not redone; started tasks are watched with progress, and a FAILED task is
retried (a CANCELLED one is not: someone cancelled it) before the server's message is raised
(:mod:`optsar_nb.ee.tasks`).

File names follow the seed's convention (``<Product>_<Mission>_<Start>_<End>``), Drive folders
are the project title (Earth Engine's own ``folder`` semantics: an existing folder of that name,
else a new one at the Drive root). :func:`export_gap_inputs` and :func:`export_infill_inputs`
write a run's inputs in the seed's format so that any AOI can move to the local engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ee
import pandas as pd

from ..method import covariate_halo
from ..missions import MISSING
from ..products import (
    GAP_STATISTIC_NAMES,
    GAP_STATISTICS_FILE,
    INFILL_METADATA_FILE,
    MASK_INPUT_FILE,
    MASK_METADATA_FILE,
    NDVI_INPUT_FILE,
    NDVI_MASK_FILE,
    NDVI_METADATA_FILE,
    S1_METADATA_FILE,
    VH_INPUT_FILE,
    VV_INPUT_FILE,
    file_name,
)
from . import collections as col
from . import tiles as tiling
from .tasks import (
    MAX_DOWNLOAD_BYTES,
    Client,
    Destination,
    EarthEngineClient,
    ExportCancelled,  # noqa: F401 (raised by the exports, part of this module's API)
    ExportFailed,  # noqa: F401 (raised by the exports, part of this module's API)
    Job,
    Task,
    fetch_info,
    fetch_table,
    watch,
)


# ---------------------------------------------------------------------------------------------
# exporting products
@dataclass(frozen=True)
class Output:
    name: str
    image: ee.Image | None = None
    table: ee.FeatureCollection | None = None
    rows: Callable[[], pd.DataFrame] | None = None  # for local CSVs: fetch the table
    bands: int = 1  # of the image: sets the tile size of a local download (48 MiB per request)


def export_grid(aoi, params, *, fetch: Callable | None = None) -> dict:
    """The optical native grid (``crs``, ``transform``) every output is exported on, fetched once
    (one request): outputs built from composites or constants have Earth Engine's default
    projection (WGS84, 1 degree), which an export without a crs would use."""
    info = fetch_info(col.optical_grid(col.region_of(aoi), params), fetch=fetch)
    return {"crs": info["crs"], "transform": list(info["transform"])}


def _on_grid(aoi, params, fetch) -> dict:
    """``grid`` and ``window`` arguments of :func:`export_outputs` for an AOI (one request)."""
    from ..aoi import AOI, load_aoi

    grid = export_grid(aoi, params, fetch=fetch)
    return {"grid": grid, "window": tiling.aoi_window(aoi if isinstance(aoi, AOI) else load_aoi(aoi), grid)}


def export_outputs(outputs: list[Output], *, destination: Destination, region, grid: dict,
                   window: tiling.Window | None = None, max_tile_pixels: int = tiling.MAX_TILE_PIXELS,
                   client: Client | None = None, wait: bool = True, **watch_kwargs) -> dict[str, str]:
    """Export each output unless it already exists, on ``grid`` (:func:`export_grid`); returns
    name -> "skipped" | "done" | "started".

    ``window``: the AOI's pixels on the grid (:func:`optsar_nb.ee.tiles.aoi_window`). An image over
    ``max_tile_pixels`` (or, downloaded, over 48 MiB) is exported as tiles aligned to the grid,
    named ``<name>_r<i>c<j>``; downloaded tiles are mosaicked into ``<name>.tif``.
    """
    client = client or EarthEngineClient()
    report, jobs = {}, []
    for out in outputs:
        if client.exists(destination, out.name):
            report[out.name] = "skipped"
            continue
        if out.image is not None and window is not None:
            limit = max_tile_pixels
            if destination.kind == "local":  # float64 at worst: 8 bytes per band and pixel
                limit = min(limit, MAX_DOWNLOAD_BYTES // (8 * max(out.bands, 1)))
            parts = tiling.split(window, limit)
        else:
            parts = [("", None)]
        if destination.kind == "local":
            _download(client, out, Path(destination.folder), region, grid, window, parts)
            report[out.name] = "done"
            continue
        for suffix, tile in parts:
            name = out.name + suffix
            if suffix and client.exists(destination, name):
                report[name] = "skipped"
                continue
            tile_region = region if tile is None or not suffix else tiling.tile_region(grid, tile)
            jobs.append(Job(name, _task_factory(client, out, destination, tile_region, grid, name)))
            report[name] = "started"
    if jobs and wait:
        for job in watch(jobs, **watch_kwargs):
            report[job.name] = "done"
    return report


def _task_factory(client: Client, out: Output, destination: Destination, region, grid,
                  name: str) -> Callable[[], Task]:
    """A function that starts afresh the task of one output or tile (called again on retries)."""
    def make() -> Task:
        if out.image is not None:
            return client.image_task(out.image, name=name, destination=destination, region=region, grid=grid)
        return client.table_task(out.table, name=name, destination=destination)

    return make


def _download(client: Client, out: Output, folder: Path, region, grid: dict, window, parts) -> None:
    """A table as CSV; an image as one GeoTIFF of the AOI window, tile by tile and mosaicked
    (the tiles are removed once the mosaic is written)."""
    from ..outputs import write_csv

    if out.image is None:
        write_csv(out.rows(), folder / f"{out.name}.csv")
        return
    path = folder / f"{out.name}.tif"
    if window is None or len(parts) == 1:
        client.download(out.image, path, region=region, grid=_window_grid(grid, window))
        return
    tiles = []
    try:
        for suffix, tile in parts:
            tile_path = folder / f".{out.name}{suffix}.tif"
            client.download(out.image, tile_path, region=region, grid=tiling.tile_grid(grid, tile))
            tiles.append((tile, tile_path))
        tiling.mosaic(tiles, window, grid, path)
    finally:
        for _, tile_path in tiles:
            tile_path.unlink(missing_ok=True)


def _window_grid(grid: dict, window) -> dict:
    return grid if window is None else tiling.tile_grid(grid, window)


def _default_destination(destination: Destination | None, params) -> Destination:
    if destination is None:
        return Destination("drive", folder=params.project_title)
    if destination.kind == "drive" and not destination.folder:
        return Destination("drive", folder=params.project_title)
    return destination


def _rows_table(request: ee.List, columns: list[str]) -> ee.FeatureCollection:
    """A server-side FeatureCollection (no geometry) from a metadata request's rows."""
    return ee.FeatureCollection(ee.List(request).map(
        lambda row: ee.Feature(None, ee.Dictionary.fromLists(columns, ee.List(row)))))


def export_gaps(run, *, destination: Destination | None = None, client: Client | None = None,
                fetch: Callable | None = None, **kwargs) -> dict[str, str]:
    """Gap_Statistics image and InputMask_Metadata table of a :class:`~optsar_nb.ee.gaps.GapRun`."""
    params = run.params
    columns = ["ID", "CollectionTime", col.CLOUD_PERCENTAGE, col.PIXEL_COUNT]
    outputs = [
        Output(file_name(GAP_STATISTICS_FILE, params.suffix, ""), image=run.statistics,
               bands=len(GAP_STATISTIC_NAMES)),
        Output(file_name(MASK_METADATA_FILE, params.suffix, ""), table=_rows_table(run.metadata_request(), columns),
               rows=lambda: run.metadata(fetch=fetch)),
    ]
    return export_outputs(outputs, destination=_default_destination(destination, params),
                          region=col.region_of(run.aoi), client=client, **_on_grid(run.aoi, params, fetch), **kwargs)


def export_gap_inputs(run, *, destination: Destination | None = None, client: Client | None = None,
                      fetch: Callable | None = None, **kwargs) -> dict[str, str]:
    """The run's inputs in the seed's format: Mask_Input (1 clear, 0 cloudy, band per image ID;
    missing masked) and InputMask_Metadata, readable by ``optsar_nb.local.stack.read_stack``."""
    params = run.params
    ids = run.states.aggregate_array("system:index")
    mask_input = run.states.select(col.STATE_BAND).toBands().rename(ids)
    columns = ["ID", "CollectionTime", col.CLOUD_PERCENTAGE, col.PIXEL_COUNT]
    destination = _default_destination(destination, params)
    # a download needs the table anyway, and its tiles are sized by the image count
    table = run.metadata(fetch=fetch) if destination.kind == "local" else None
    outputs = [
        Output(file_name(MASK_INPUT_FILE, params.suffix, ""), image=mask_input, bands=_count(table)),
        Output(file_name(MASK_METADATA_FILE, params.suffix, ""), table=_rows_table(run.metadata_request(), columns),
               rows=lambda: table),
    ]
    return export_outputs(outputs, destination=destination, region=col.region_of(run.aoi), client=client,
                          **_on_grid(run.aoi, params, fetch), **kwargs)


def _count(table: pd.DataFrame | None) -> int:
    return 1 if table is None else max(len(table), 1)


def export_infill(run, *, destination: Destination | None = None, client: Client | None = None,
                  fetch: Callable | None = None, **kwargs) -> dict[str, str]:
    """NDVI_gapfree, NDVI_Mask, NDVI_Pred, NDVI_Obs (band per pair ID) and Output_Metadata."""
    params = run.params
    outputs = [Output(file_name(name, params.suffix, ""), image=image, bands=len(run.table))
               for name, image in run.outputs.items()]
    metadata = run.metadata  # bound method: fetched only for a local CSV or the table below
    outputs.append(Output(file_name(INFILL_METADATA_FILE, params.suffix, ""),
                          table=_infill_table(run), rows=lambda: metadata(fetch=fetch)))
    return export_outputs(outputs, destination=_default_destination(destination, params),
                          region=col.region_of(run.aoi), client=client, **_on_grid(run.aoi, params, fetch), **kwargs)


def _infill_table(run) -> ee.FeatureCollection:
    t = run.table
    rows = [[str(i), float(c), int(ms), float(r), str(s)] for i, c, ms, r, s in
            zip(t["ID"], t[col.CLOUD_PERCENTAGE], t["CollectionTime"], t["Random"], t["SplitLabel"])]
    columns = ["ID", "Cloud_cover", "CollectionTime", "Random", "SplitLabel", "MAE"]
    with_mae = ee.List(rows).zip(run.mae).map(lambda pair: ee.List(ee.List(pair).get(0)).add(ee.List(pair).get(1)))
    return _rows_table(with_mae, columns)


def export_infill_inputs(run, *, destination: Destination | None = None, client: Client | None = None,
                         fetch: Callable | None = None, **kwargs) -> dict[str, str]:
    """The infilling inputs in the seed's format: NDVI_Input, NDVI_Mask (state, -1 missing),
    VV_Input, VH_Input (band per image ID) and InputNDVI_Metadata, InputS1_Metadata.

    The images cover the AOI's window grown by ``covariate_halo`` pixels on each side: the
    covariates of the AOI's edge pixels read the S1 values around it (docs/method.md B.3), so
    the local engine needs them to give the same result. The optical bands are masked (the
    state MISSING) outside the AOI."""
    params = run.params
    region = col.region_of(run.aoi)
    on_grid = _on_grid(run.aoi, params, fetch)
    window = on_grid["window"].grown(covariate_halo(params))
    optical, s1 = run.observations, run.s1
    optical_ids, s1_ids = optical.aggregate_array("system:index"), s1.aggregate_array("system:index")
    ndvi_columns = ["ID", "CollectionTime", col.CLOUD_PERCENTAGE, col.PIXEL_COUNT]
    ndvi_request = col.metadata_request(optical, [col.CLOUD_PERCENTAGE, col.PIXEL_COUNT])
    s1_request = col.metadata_request(s1, [])
    s = params.suffix
    destination = _default_destination(destination, params)
    local = destination.kind == "local"  # a download needs the tables anyway, and its tiles are sized by them
    ndvi_table = fetch_table(ndvi_request, ndvi_columns, fetch=fetch) if local else None
    s1_table = fetch_table(s1_request, ["ID", "CollectionTime"], fetch=fetch) if local else None
    n_optical, n_s1 = _count(ndvi_table), _count(s1_table)
    outputs = [
        Output(file_name(NDVI_INPUT_FILE, s, ""), image=optical.select(col.NDVI_BAND).toBands().rename(optical_ids),
               bands=n_optical),
        Output(file_name(NDVI_MASK_FILE, s, ""),
               image=optical.select(col.STATE_BAND).toBands().rename(optical_ids).unmask(MISSING, False).clip(region),
               bands=n_optical),
        Output(file_name(VV_INPUT_FILE, s, ""), image=s1.select("VV").toBands().rename(s1_ids), bands=n_s1),
        Output(file_name(VH_INPUT_FILE, s, ""), image=s1.select("VH").toBands().rename(s1_ids), bands=n_s1),
        Output(file_name(NDVI_METADATA_FILE, s, ""), table=_rows_table(ndvi_request, ndvi_columns),
               rows=lambda: ndvi_table),
        Output(file_name(S1_METADATA_FILE, s, ""), table=_rows_table(s1_request, ["ID", "CollectionTime"]),
               rows=lambda: s1_table),
    ]
    return export_outputs(outputs, destination=destination, region=tiling.tile_region(on_grid["grid"], window),
                          client=client, grid=on_grid["grid"], window=window, **kwargs)
