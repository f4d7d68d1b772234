"""Earth Engine collections as the method uses them (docs/method.md "Missions and masks").

Every function here builds a server-side graph and returns it; none calls the server. Collection
ids come from :mod:`optsar_nb.missions` only. Step names follow :mod:`optsar_nb.local.gaps`:
``cloud_state`` (CLEAR/CLOUDY per pixel, masked where missing) and ``aoi_cloud_stats``
(per-image ``CLOUD_PERCENTAGE_AOI`` and ``PIXEL_COUNT_AOI`` over the AOI).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import ee

from ..aoi import AOI, load_aoi
from ..errors import InvalidParameter
from ..missions import CLEAR, CLOUDY, MASK_RULES, S1, BinaryRule, BitRule, Mission, SCLRule, get_mission

STATE_BAND = "state"
NDVI_BAND = "NDVI"
CLOUDSCORE_BAND = "cs_cdf"  # Cloud Score+ band, cumulative clear-sky score (its catalogue page)
MS_PER_DAY = 86_400_000
# Earth Engine's reduceRegion refuses more than maxPixels pixels (default 1e7); AOIs are already
# bounded by max_aoi_km2 (1e4 km2 = 1e8 px at 10 m), so the limit is raised above that.
MAX_PIXELS = 1e13

# Image properties the metadata tables read (docs/method.md A "Metadata table").
CLOUD_PERCENTAGE = "CLOUD_PERCENTAGE_AOI"
PIXEL_COUNT = "PIXEL_COUNT_AOI"


def region_of(aoi: Any) -> ee.Geometry:
    """The AOI as an ``ee.Geometry``; accepts an AOI or anything :func:`optsar_nb.aoi.load_aoi` takes."""
    if isinstance(aoi, ee.Geometry):
        return aoi
    return (aoi if isinstance(aoi, AOI) else load_aoi(aoi)).to_ee()


def millis(day: dt.date) -> int:
    """Milliseconds since the epoch at 00:00 UTC of ``day`` (Earth Engine's time unit)."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def optical_collection(aoi: Any, *, mission: str | Mission, start: dt.date, end: dt.date) -> ee.ImageCollection:
    """The mission's images intersecting the AOI with start <= time < end."""
    mission = mission if isinstance(mission, Mission) else get_mission(mission)
    return (
        ee.ImageCollection(mission.collection_id)
        .filterBounds(region_of(aoi))
        .filterDate(start.isoformat(), end.isoformat())
    )


def optical_grid(aoi: Any, params) -> ee.Projection:
    """The optical native grid every AOI-wide reduction of a job runs on: the projection (CRS and
    transform, hence scale) of the red band of the period's first image over the AOI. Composites
    and constants have Earth Engine's default projection (WGS84, 1 degree), so a reduction must
    never take its grid from them."""
    mission = get_mission(params.mission)
    first = optical_collection(aoi, mission=mission, start=params.start, end=params.end).first()
    return ee.Image(first).select(mission.red).projection()


def with_cloudscore(collection: ee.ImageCollection, *, mission: Mission) -> ee.ImageCollection:
    """Add Cloud Score+'s ``cs_cdf`` band to each image of the same ``system:index``.

    A saveFirst join on ``system:index`` (the two collections share granule ids) rather than
    ``linkCollection``, which is absent from older algorithm tables.
    """
    if mission.cloudscore_collection_id is None:
        raise InvalidParameter(f"mask='cloudscore' exists for S2 only, not {mission.name}: use mask='qa'")
    scores = ee.ImageCollection(mission.cloudscore_collection_id).select([CLOUDSCORE_BAND])
    joined = ee.Join.saveFirst("cloudscore").apply(
        collection, scores, ee.Filter.equals(leftField="system:index", rightField="system:index")
    )
    return ee.ImageCollection(joined).map(lambda img: ee.Image(img).addBands(ee.Image(img.get("cloudscore"))))


def cloud_state(image: ee.Image, rule: str, *, threshold: float | None = None) -> ee.Image:
    """One band ``state``: CLEAR (1) or CLOUDY (0), masked where the pixel is missing.

    ``rule`` is a key of ``missions.MASK_RULES`` or ``"cloudscore"`` (cloudy where ``cs_cdf`` <
    ``threshold``). The quality band's own mask (outside the swath, no data) propagates, so such
    pixels are missing too.
    """
    if rule == "cloudscore":
        if threshold is None:
            raise InvalidParameter("rule='cloudscore' needs a threshold (cloudscore_threshold)")
        score = image.select(CLOUDSCORE_BAND)
        return _state(score.lt(threshold), score.mask())
    spec = MASK_RULES.get(rule)
    if spec is None:
        raise InvalidParameter(f"unknown mask rule {rule!r}: choose one of {sorted(MASK_RULES)} or 'cloudscore'")
    qa = image.select(spec.band)
    if isinstance(spec, SCLRule):
        cloudy = qa.remap(list(spec.cloudy_values), [1] * len(spec.cloudy_values), 0)
        missing = qa.remap(list(spec.missing_values), [1] * len(spec.missing_values), 0)
        return _state(cloudy, missing.Not())
    if isinstance(spec, BitRule):
        cloudy = qa.bitwiseAnd(spec.cloudy_bitmask).neq(0)
        missing = qa.bitwiseAnd(spec.fill_bitmask).neq(0)
        return _state(cloudy, missing.Not())
    if isinstance(spec, BinaryRule):
        valid = image.select(spec.valid_band).neq(0) if spec.valid_band else qa.mask()
        return _state(qa.eq(spec.cloud_value), valid)
    raise InvalidParameter(f"unknown mask rule {rule!r}")


def _state(cloudy: ee.Image, valid: ee.Image) -> ee.Image:
    state = ee.Image.constant(CLEAR).where(cloudy, CLOUDY)
    # cloudy carries the quality band's mask; updateMask(cloudy.mask()) keeps it on the result
    return state.updateMask(valid).updateMask(cloudy.mask()).toInt8().rename(STATE_BAND)


def aoi_cloud_stats(state: ee.Image, aoi: Any, *, projection: ee.Projection) -> ee.Image:
    """``state`` with ``CLOUD_PERCENTAGE_AOI`` (cloudy / valid x 100) and ``PIXEL_COUNT_AOI`` set.

    Counted on ``projection`` (the optical bands' native grid). An image with no valid pixel
    gets 0 % and count 0 (the local engine writes NaN there; the count says which it is).
    """
    cloudy = state.eq(CLOUDY).rename("cloudy")
    valid = state.gte(CLOUDY).rename("valid")  # 1 wherever state is unmasked
    sums = cloudy.addBands(valid).reduceRegion(
        reducer=ee.Reducer.sum().unweighted(), geometry=region_of(aoi), crs=projection, maxPixels=MAX_PIXELS
    )
    n_valid = ee.Number(sums.get("valid"))
    pct = ee.Number(sums.get("cloudy")).multiply(100).divide(n_valid.max(1))
    return state.set({CLOUD_PERCENTAGE: pct, PIXEL_COUNT: n_valid})


def mask_states(aoi: Any, *, mission: str, start: dt.date, end: dt.date, rule: str,
                threshold: float | None = None) -> ee.ImageCollection:
    """The mission's images within AOI and dates as ``state`` images clipped to the AOI.

    Each keeps ``system:time_start`` and ``system:index`` and carries the AOI cloud statistics.
    """
    mission_spec = get_mission(mission)
    collection = optical_collection(aoi, mission=mission_spec, start=start, end=end)
    if rule == "cloudscore":
        collection = with_cloudscore(collection, mission=mission_spec)
    region = region_of(aoi)

    def one(image):
        image = ee.Image(image)
        state = cloud_state(image, rule, threshold=threshold).clip(region)
        state = aoi_cloud_stats(state, region, projection=image.select(mission_spec.red).projection())
        return state.copyProperties(image, ["system:time_start", "system:index"])

    return collection.map(one)


def ndvi(image: ee.Image, *, mission: Mission) -> ee.Image:
    """NDVI = (NIR - Red) / (NIR + Red) from surface reflectance (scale and offset applied)."""
    red = image.select(mission.red).multiply(mission.scale).add(mission.offset)
    nir = image.select(mission.nir).multiply(mission.scale).add(mission.offset)
    return nir.subtract(red).divide(nir.add(red)).rename(NDVI_BAND).toFloat()


def s1_collection(aoi: Any, *, start: dt.date, end: dt.date, min_db: float, max_db: float,
                  support: ee.Image | None = None) -> ee.ImageCollection:
    """Sentinel-1 GRD in IW mode with both VV and VH, backscatter below ``min_db`` or above ``max_db`` masked,
    clipped to the AOI, or masked where ``support`` is 0 (the AOI and the pixels around it that
    its covariates read, :func:`optsar_nb.ee.infill.covariate_support`)."""
    region = region_of(aoi)
    collection = (
        ee.ImageCollection(S1.collection_id)
        .filterBounds(region)
        .filterDate(start.isoformat(), end.isoformat())
        .filter(ee.Filter.eq("instrumentMode", S1.instrument_mode))
    )
    for band in S1.bands:
        collection = collection.filter(ee.Filter.listContains("transmitterReceiverPolarisation", band))

    def mask_implausible(image):
        image = ee.Image(image).select(list(S1.bands))
        image = image.updateMask(image.gte(min_db).And(image.lte(max_db)))
        return image.clip(region) if support is None else image.updateMask(support)

    return collection.map(mask_implausible)


def metadata_request(collection: ee.ImageCollection, columns: list[str]) -> ee.List:
    """One list of rows ``[system:index, system:time_start, *columns]``: a single round trip."""
    selectors = ["system:index", "system:time_start", *columns]
    return ee.List(collection.reduceColumns(ee.Reducer.toList(len(selectors)), selectors).get("list"))


def bands_by_id(images: list, ids: list[str], *, rename: bool = True) -> ee.Image:
    """The images' bands in one image, named after ``ids``: each image gets its id as
    system:index, which toBands prefixes to its band names (``<id>_<band>``, or just ``<id>``
    with ``rename`` for one-band images)."""
    named = [ee.Image(image).set("system:index", i) for image, i in zip(images, ids)]
    stacked = ee.ImageCollection.fromImages(named).toBands()
    return stacked.rename(list(ids)) if rename else stacked

