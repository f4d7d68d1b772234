"""Talking to the Earth Engine server for the exports of :mod:`optsar_nb.ee.export`.

Round trips (``getInfo``) retried on transient errors; export destinations; the :class:`Client`
that everything touching the server goes through (the real one, :class:`EarthEngineClient`,
wraps ``ee.batch.Export`` and ``ee.data``, so tests inject a fake); and :func:`watch`, which
starts tasks, polls them with progress and retries a FAILED one (a CANCELLED one is not: someone
cancelled it) before the server's message is raised.
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
from . import collections as col

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
