"""The time series of one pixel, fetched in one request (the map app's pixel inspector).

Each group of series is an image collection whose bands are series kinds (observed, predicted
and gap-free NDVI; VV, VH), one image per date with its ``system:time_start``. A click samples
every group at the clicked point with ``ImageCollection.getRegion`` on the optical grid
(:func:`optsar_nb.ee.collections.optical_grid`), all groups in one ``ee.Dictionary``: one round
trip. :func:`series_table` turns the answer into the table the local inspector builds
(:func:`optsar_nb.ui.inspector.pixel_series`): dates as index, one column per kind.

- :func:`infill_series`: an infill run's outputs (band-per-pair images) and its S1 inputs;
- :func:`input_series`: before any infill, the clear observations and S1 images of the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ee
import pandas as pd

from ..missions import CLEAR, get_mission
from ..params import InfillParams
from . import collections as col

KINDS = ("observed", "predicted", "gap-free", "VV", "VH")  # the inspector's series, in its order
BANDS = {"observed": "observed", "predicted": "predicted", "gap-free": "gapfree", "VV": "VV", "VH": "VH"}
KIND_OF_BAND = {band: kind for kind, band in BANDS.items()}
REGION_HEADER = ("id", "longitude", "latitude", "time")  # getRegion's leading columns
Fetch = Any  # callable(ee.ComputedObject) -> its value


@dataclass(frozen=True)
class PixelSeries:
    """Where the inspector reads a clicked pixel's series on Earth Engine.

    ``groups``: name -> image collection whose bands are named after :data:`BANDS`; ``grid``:
    the projection the pixel is taken in. Without groups (nothing to show yet), ``hint`` says
    why and no request is made.
    """

    groups: Mapping[str, ee.ImageCollection] = field(default_factory=dict)
    grid: ee.Projection | None = None
    hint: str = "click inside the AOI"
    fetch: Fetch | None = None

    def request(self, lon: float, lat: float) -> ee.Dictionary:
        """Every group's ``getRegion`` rows at ``lon, lat`` (degrees), on ``grid``, in one dictionary."""
        point = ee.Geometry.Point([float(lon), float(lat)])
        return ee.Dictionary({name: collection.getRegion(point, crs=self.grid)
                              for name, collection in self.groups.items()})

    def pixel_table(self, lon: float, lat: float) -> pd.DataFrame | None:
        """The pixel's series (one request, not retried: a click is simply made again); None
        where no group has a value (outside the AOI)."""
        if not self.groups:
            return None
        from .tasks import fetch_info

        return series_table(fetch_info(self.request(lon, lat), fetch=self.fetch, retries=0))


def series_table(answer: Mapping[str, list]) -> pd.DataFrame | None:
    """The table of :func:`optsar_nb.ui.inspector.pixel_series` from ``getRegion`` answers.

    Each answer is a header row (``id, longitude, latitude, time`` and the bands) and a row per
    image and pixel, ``None`` where the band is masked. Rows of one group at the same time (two
    granules over the pixel) are merged, the first value of each kind kept; groups are joined on
    their dates. None when every value is missing.
    """
    frames = []
    for rows in answer.values():
        if not rows:
            continue
        header, body = list(rows[0]), rows[1:]
        bands = [b for b in header[len(REGION_HEADER):] if b in KIND_OF_BAND]
        if not body or not bands:
            continue
        table = pd.DataFrame([list(r) for r in body], columns=header)
        table = table[table["time"].notna()]
        values = table[bands].apply(pd.to_numeric, errors="coerce").astype("float64")
        values.index = pd.DatetimeIndex(pd.to_datetime(table["time"].astype("int64").to_numpy(), unit="ms"))
        frames.append(values.rename(columns=KIND_OF_BAND).groupby(level=0, sort=True).first())
    if not frames:
        return None
    out = pd.concat(frames, axis=1, sort=True)
    out = out[[k for k in KINDS if k in out]]
    if not out.notna().to_numpy().any():
        return None
    return out


# ---------------------------------------------------------------------------------------------
def pairs_collection(images: Mapping[str, ee.Image], ids: list[str], times: list[int]) -> ee.ImageCollection:
    """One image per pair from band-per-pair images (``kind -> image`` with one band per pair id):
    the pair's band of each image, named after :data:`BANDS`, at the pair's time (ms)."""
    kinds = list(images)
    time_of = ee.Dictionary({str(i): int(t) for i, t in zip(ids, times)})

    def one(pair_id):
        pair_id = ee.String(pair_id)
        image = ee.Image(images[kinds[0]]).select([pair_id]).rename(BANDS[kinds[0]])
        for kind in kinds[1:]:
            image = image.addBands(ee.Image(images[kind]).select([pair_id]).rename(BANDS[kind]))
        return image.set({"system:time_start": time_of.get(pair_id), "system:index": pair_id})

    return ee.ImageCollection.fromImages(ee.List([str(i) for i in ids]).map(one))


def s1_series(region: ee.Geometry, params: InfillParams) -> ee.ImageCollection:
    """The S1 images of the period (bands VV, VH), as an infill run uses them."""
    return col.s1_collection(region, start=params.start, end=params.end, min_db=params.s1_min_db,
                             max_db=params.s1_max_db)


def infill_series(result, *, fetch: Fetch | None = None) -> PixelSeries:
    """An Earth Engine infill result (:func:`optsar_nb.run.run_infill`): observed, predicted and
    gap-free NDVI of each pair (its ``metadata`` gives the pairs' IDs and times) and the S1
    images of the period, on the run's optical grid."""
    region = col.region_of(result.aoi)
    table = result.metadata
    images = {"observed": result.observed, "predicted": result.predicted, "gap-free": result.gapfree}
    ndvi = pairs_collection({k: v for k, v in images.items() if v is not None}, [str(i) for i in table["ID"]],
                            [int(t) for t in table["CollectionTime"]])
    return PixelSeries({"ndvi": ndvi, "s1": s1_series(region, result.params)},
                       col.optical_grid(region, result.params), fetch=fetch)


def observed_inputs(region: ee.Geometry, params: InfillParams) -> ee.ImageCollection:
    """The mission's images of the period as band ``observed``: NDVI where the pixel is clear
    (masked where cloudy or missing), clipped to the region."""
    mission = get_mission(params.mission)
    collection = col.optical_collection(region, mission=mission, start=params.start, end=params.end)
    if params.mask_rule_name == "cloudscore":
        collection = col.with_cloudscore(collection, mission=mission)

    def one(image):
        image = ee.Image(image)
        clear = col.cloud_state(image, params.mask_rule_name, threshold=params.cloudscore_threshold).eq(CLEAR)
        ndvi = col.ndvi(image, mission=mission).updateMask(clear).clip(region)
        return ndvi.rename(BANDS["observed"]).copyProperties(image, ["system:time_start", "system:index"])

    return collection.map(one)


def input_series(aoi, params, *, fetch: Fetch | None = None) -> PixelSeries:
    """Before any infill: the clear NDVI observations and S1 images of the inputs for the AOI,
    mission and dates of ``params`` (GapParams or InfillParams; S1 is masked as the infill masks it)."""
    if aoi is None:
        return PixelSeries(hint="draw an AOI, or run Infill, to see a pixel's series on Earth Engine")
    params = params if isinstance(params, InfillParams) else InfillParams(
        mission=params.mission, start=params.start, end=params.end, mask=params.mask,
        cloudscore_threshold=params.cloudscore_threshold)
    region = col.region_of(aoi)
    return PixelSeries({"ndvi": observed_inputs(region, params), "s1": s1_series(region, params)},
                       col.optical_grid(region, params), fetch=fetch)
