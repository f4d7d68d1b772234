"""Getting results out of Earth Engine: Drive, Asset, Cloud Storage or a local download.

Everything that talks to the server goes through a :class:`Client` (the real one wraps
``ee.batch.Export`` and ``ee.data``), so tests inject a fake. Outputs that already exist are
skipped, not redone; started tasks are watched with progress, and a FAILED task is retried (a
CANCELLED one is not: someone cancelled it) before the server's message is raised.

File names follow the seed's convention (``<Product>_<Mission>_<Start>_<End>``), Drive folders
are the project title (Earth Engine's own ``folder`` semantics: an existing folder of that name,
else a new one at the Drive root). :func:`export_gap_inputs` and :func:`export_infill_inputs`
write a run's inputs in the seed's format so that any AOI can move to the local engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ee
import pandas as pd

from ..errors import OptsarError
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

# Earth Engine refuses direct downloads above 48 MiB per request (computePixels /
# getDownloadURL "Total request size must be less than or equal to 50331648 bytes").
MAX_DOWNLOAD_BYTES = 50_331_648
TRANSIENT = ("Too Many Requests", "Too many concurrent", "timed out", "Internal error", "Service Unavailable",
             "Computation timed out", "deadline")  # server messages worth a retry
DONE, FAILED, CANCELLED = "COMPLETED", "FAILED", "CANCELLED"  # Task.status() states
SUCCEEDED = "SUCCEEDED"  # a long-running operation's state once its export has finished


class ExportFailed(OptsarError):
    """An export task failed on the server (its message is included)."""


class ExportCancelled(OptsarError):
    """An export task was cancelled."""


# ---------------------------------------------------------------------------------------------
# round trips
def fetch_info(obj: Any, *, fetch: Callable | None = None, retries: int = 3, backoff_s: float = 2.0,
               sleep: Callable = time.sleep) -> Any:
    """``obj.getInfo()`` (or ``fetch(obj)``), retried with exponential backoff on transient errors."""
    fetch = fetch or (lambda o: o.getInfo())
    for attempt in range(retries + 1):
        try:
            return fetch(obj)
        except ee.EEException as exc:
            if attempt == retries or not any(t.lower() in str(exc).lower() for t in TRANSIENT):
                raise
            sleep(backoff_s * 2**attempt)


def fetch_table(request: Any, columns: list[str], *, fetch: Callable | None = None) -> pd.DataFrame:
    """Rows of a :func:`optsar_nb.ee.collections.metadata_request` as a DataFrame (one round trip)."""
    return pd.DataFrame(fetch_info(request, fetch=fetch), columns=columns)


# ---------------------------------------------------------------------------------------------
# destinations and the client
@dataclass(frozen=True)
class Destination:
    """Where outputs go: ``kind`` is "drive", "asset", "gcs" or "local".

    drive: ``folder`` (default: the project title); asset: ``folder`` = an asset folder id
    (``projects/<p>/assets/<dir>``); gcs: ``bucket`` and optional ``folder`` prefix; local:
    ``folder`` = a directory (small results only, below MAX_DOWNLOAD_BYTES per image).
    """

    kind: str = "drive"
    folder: str | None = None
    bucket: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("drive", "asset", "gcs", "local"):
            raise OptsarError(f"destination kind {self.kind!r} is unknown: use drive, asset, gcs or local")
        if self.kind == "gcs" and not self.bucket:
            raise OptsarError("a Cloud Storage destination needs bucket='<bucket name>'")
        if self.kind in ("asset", "local") and not self.folder:
            raise OptsarError(f"a {self.kind} destination needs folder=... (asset folder id or local directory)")


class Task(Protocol):
    def start(self) -> None: ...
    def status(self) -> dict: ...


class Client(Protocol):
    """What exports need from Earth Engine (the real one is :class:`EarthEngineClient`)."""

    def exists(self, destination: Destination, name: str) -> bool: ...
    def image_task(self, image: ee.Image, *, name: str, destination: Destination, region, grid: dict) -> Task: ...
    def table_task(self, table: ee.FeatureCollection, *, name: str, destination: Destination) -> Task: ...
    def download(self, image: ee.Image, path: Path, *, region, grid: dict) -> Path: ...


class EarthEngineClient:
    """The real client: ``ee.batch.Export`` tasks, asset and task listings, computePixels."""

    def exists(self, destination: Destination, name: str) -> bool:
        if destination.kind == "local":
            return any(Path(destination.folder).glob(f"{name}.*"))
        if destination.kind == "asset":
            try:
                ee.data.getAsset(f"{destination.folder}/{name}")
                return True
            except ee.EEException:
                return False
        # Drive and Cloud Storage files are not listed by Earth Engine; a succeeded export of the
        # same description means the file was written (the project's long-running operations;
        # getTaskList is deprecated)
        finished = (op.get("metadata", {}) for op in ee.data.listOperations())
        return any(m.get("description") == name and m.get("state") == SUCCEEDED for m in finished)

    def image_task(self, image, *, name, destination, region, grid):
        common = dict(image=image, description=name, region=region, crs=grid["crs"], crsTransform=grid["transform"],
                      maxPixels=col.MAX_PIXELS)
        if destination.kind == "drive":
            return ee.batch.Export.image.toDrive(folder=destination.folder, fileNamePrefix=name, **common)
        if destination.kind == "asset":
            return ee.batch.Export.image.toAsset(assetId=f"{destination.folder}/{name}", **common)
        return ee.batch.Export.image.toCloudStorage(bucket=destination.bucket,
                                                    fileNamePrefix=_prefix(destination, name),
                                                    **common)

    def table_task(self, table, *, name, destination):
        if destination.kind == "drive":
            return ee.batch.Export.table.toDrive(table, description=name, folder=destination.folder,
                                                 fileNamePrefix=name, fileFormat="CSV")
        if destination.kind == "asset":
            return ee.batch.Export.table.toAsset(table, description=name, assetId=f"{destination.folder}/{name}")
        return ee.batch.Export.table.toCloudStorage(table, description=name, bucket=destination.bucket,
                                                    fileNamePrefix=_prefix(destination, name), fileFormat="CSV")

    def download(self, image, path, *, region, grid):
        """One GeoTIFF on ``grid`` (crs and transform; with width and height, exactly those pixels)."""
        from ..outputs import atomic_path

        a, b, c, d, e, f = grid["transform"][:6]
        request = {"expression": image.clip(region).reproject(crs=grid["crs"], crsTransform=grid["transform"]),
                   "fileFormat": "GEO_TIFF"}
        if "width" in grid:  # a window or tile: exactly its pixels
            request["grid"] = {"dimensions": {"width": grid["width"], "height": grid["height"]},
                               "crsCode": grid["crs"],
                               "affineTransform": {"scaleX": a, "shearX": b, "translateX": c,
                                                   "shearY": d, "scaleY": e, "translateY": f}}
        data = ee.data.computePixels(request)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return Path(path)


def _prefix(destination: Destination, name: str) -> str:
    return f"{destination.folder}/{name}" if destination.folder else name


# ---------------------------------------------------------------------------------------------
# watching tasks
@dataclass
class Job:
    """One output: how to (re)start its task, and what happened."""

    name: str
    make_task: Callable[[], Task]
    task: Task | None = None
    attempts: int = 0
    state: str = "PENDING"
    messages: list = field(default_factory=list)


def watch(jobs: list[Job], *, retries: int = 2, poll_s: float = 10.0, timeout_s: float | None = None,
          progress: Callable[[str, str, float | None], None] | None = None, sleep: Callable = time.sleep,
          clock: Callable = time.monotonic) -> list[Job]:
    """Start and poll tasks until each completes; FAILED tasks restart up to ``retries`` times.

    ``progress(name, state, fraction)`` is called on every change (tqdm or a widget). Raises
    ExportFailed (with the server's message) when a task keeps failing, ExportCancelled when a
    task is cancelled, TimeoutError after ``timeout_s``.
    """
    started = clock()
    for job in jobs:
        if job.task is None:
            job.task, job.attempts = job.make_task(), 1
            job.task.start()
    pending = list(jobs)
    while pending:
        for job in list(pending):
            status = job.task.status()
            state = status.get("state", "UNKNOWN")
            if state != job.state and progress:
                progress(job.name, state, status.get("progress"))
            job.state = state
            if state == DONE:
                pending.remove(job)
            elif state in ("CANCELLED", "CANCEL_REQUESTED"):
                raise ExportCancelled(f"export {job.name!r} was cancelled: {status.get('error_message', 'no message')}")
            elif state == FAILED:
                message = status.get("error_message", "no message from the server")
                job.messages.append(message)
                if job.attempts > retries:
                    raise ExportFailed(f"export {job.name!r} failed {job.attempts} times; the server said: {message}")
                job.task, job.attempts = job.make_task(), job.attempts + 1
                job.task.start()
        if pending:
            if timeout_s is not None and clock() - started > timeout_s:
                raise TimeoutError(f"exports still running after {timeout_s} s: {[j.name for j in pending]}")
            sleep(poll_s)
    return jobs


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
