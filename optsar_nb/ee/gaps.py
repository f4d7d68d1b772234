"""Gap characterization on Earth Engine (docs/method.md part A), step by step.

Same step names as :mod:`optsar_nb.local.gaps`: ``cloud_state``/``aoi_cloud_stats`` (in
:mod:`optsar_nb.ee.collections`), ``composite_same_day``, ``day_counts``, ``gap_iteration`` and
``gap_statistics``; :func:`characterize_gaps` wires them into a :class:`GapRun`. Building a run
makes no request to the server; results leave Google only through :mod:`optsar_nb.ee.export`.

The iteration is the seed's, with ``ee.ImageCollection.iterate`` over days in time order: the
accumulator is a list of images whose last element holds ``last_clear`` (the previous clear day,
never masked) and ``day_gap``; the initial element is ``last_clear = -revisit_days``,
``day_gap = revisit_days`` (A.4) and is dropped before the statistics (A.5).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import ee

from ..missions import CLEAR
from ..params import GapParams
from ..products import GAP_STATISTIC_NAMES
from . import collections as col

DAY = "day"  # property: whole days since the start date (UTC)
DAY_COUNT = "day_count"
DAY_GAP = "day_gap"
LAST_CLEAR = "last_clear"
# Gaps are whole days, so a 1-day histogram bucket keeps Earth Engine's histogram-based
# percentiles (used beyond maxRaw inputs) within one day of the exact value.
PERCENTILE_BUCKET_DAYS = 1


def day_counts(states: ee.ImageCollection, start: dt.date) -> ee.ImageCollection:
    """Set ``day`` = whole days from ``start`` (00:00 UTC) to each image's UTC date."""
    start_ms = col.millis(start)

    def one(image):
        image = ee.Image(image)
        day = ee.Number(image.get("system:time_start")).subtract(start_ms).divide(col.MS_PER_DAY).floor()
        return image.set(DAY, day)

    return states.map(one)


def composite_same_day(states: ee.ImageCollection, start: dt.date) -> ee.ImageCollection:
    """One ``state`` image per UTC day, in time order: the maximum over the day's images.

    With CLOUDY (0) < CLEAR (1) and missing masked, the maximum is "clear if clear in any
    image, missing only if missing in all" (A.2). Each composite carries ``day`` and a
    ``system:time_start`` at 00:00 UTC of its day.
    """
    states = day_counts(states, start)
    start_ms = col.millis(start)
    days = ee.List(states.aggregate_array(DAY)).distinct().sort()

    def one_day(day):
        day = ee.Number(day)
        composite = states.filter(ee.Filter.eq(DAY, day)).max()
        return composite.set({DAY: day, "system:time_start": day.multiply(col.MS_PER_DAY).add(start_ms)})

    return ee.ImageCollection.fromImages(days.map(one_day))


def gap_iteration(composites: ee.ImageCollection, *, revisit_days: int) -> ee.List:
    """The A.4 iteration; returns the accumulator list (initial element first)."""
    initial = (
        ee.Image.constant(revisit_days).toFloat().rename(DAY_GAP)
        .addBands(ee.Image.constant(-revisit_days).toFloat().rename(LAST_CLEAR))
    )

    def step(composite, accumulator):
        accumulator = ee.List(accumulator)
        composite = ee.Image(composite)
        previous = ee.Image(accumulator.get(-1)).select(LAST_CLEAR)
        # clear pixels take the day's count; cloudy and missing pixels are masked (A.3)
        day_count = (
            ee.Image.constant(composite.get(DAY)).toFloat()
            .updateMask(composite.select(col.STATE_BAND).eq(CLEAR)).rename(DAY_COUNT)
        )
        gap = day_count.subtract(previous).rename(DAY_GAP)
        # sameFootprint=False: the carried day must survive outside this day's footprint
        last = day_count.unmask(previous, False).rename(LAST_CLEAR)
        return accumulator.add(gap.addBands(last))

    return ee.List(composites.iterate(step, ee.List([initial])))


def gap_statistics(composites: ee.ImageCollection, params: GapParams, aoi: Any) -> ee.Image:
    """The statistics image: one float band per name of ``GAP_STATISTIC_NAMES``, clipped to the AOI.

    Undefined statistics are masked: gap statistics where no day is clear, ``open_gap`` and
    ``clear_fraction`` where no day has valid data. Counts are 0 there.
    """
    accumulator = gap_iteration(composites, revisit_days=params.revisit_days)
    gaps = ee.ImageCollection.fromImages(accumulator.slice(1)).select(DAY_GAP)
    max_buckets = _power_of_two_at_least((params.period_days + params.revisit_days) // PERCENTILE_BUCKET_DAYS + 1)
    reducer = (
        ee.Reducer.count()
        .combine(ee.Reducer.mean(), "", True)
        .combine(ee.Reducer.stdDev(), "", True)  # population standard deviation
        .combine(ee.Reducer.min(), "", True)
        .combine(ee.Reducer.max(), "", True)
        .combine(ee.Reducer.percentile([50, 90], None, max_buckets, PERCENTILE_BUCKET_DAYS), "", True)
    )
    reduced = gaps.reduce(reducer)

    def band(output):
        return reduced.select(f"{DAY_GAP}_{output}")

    clear_count = band("count").unmask(0).toFloat()
    valid_count = composites.select(col.STATE_BAND).count().unmask(0).toFloat()
    has_valid = valid_count.gt(0)
    last_clear = ee.Image(accumulator.get(-1)).select(LAST_CLEAR)
    open_gap = ee.Image.constant(params.period_days).toFloat().subtract(last_clear).updateMask(has_valid)
    clear_fraction = clear_count.divide(valid_count).updateMask(has_valid)
    bands = {"clear_count": clear_count, "gap_count": clear_count, "gap_mean": band("mean"), "gap_median": band("p50"),
             "gap_std": band("stdDev"), "gap_min": band("min"), "gap_max": band("max"), "gap_p90": band("p90"),
             "open_gap": open_gap, "valid_count": valid_count, "clear_fraction": clear_fraction}
    named = [bands[name].toFloat().rename(name) for name in GAP_STATISTIC_NAMES]
    stats = named[0]
    for b in named[1:]:
        stats = stats.addBands(b)
    return stats.clip(col.region_of(aoi))


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


@dataclass(frozen=True)
class GapRun:
    """A built gap characterization: server-side graphs, nothing computed yet.

    ``statistics`` is the image of ``GAP_STATISTIC_NAMES`` bands, ``states`` the per-image
    ``state`` collection (``Mask_Input``), ``composites`` the same-day composites. Use
    :mod:`optsar_nb.ee.export` to get files or :meth:`metadata` for the table.
    """

    params: GapParams
    aoi: Any
    states: ee.ImageCollection
    composites: ee.ImageCollection
    statistics: ee.Image

    def metadata_request(self) -> ee.List:
        return col.metadata_request(self.states, [col.CLOUD_PERCENTAGE, col.PIXEL_COUNT])

    def metadata(self, *, fetch=None):
        """The ``InputMask_Metadata`` table (one server round trip, through ``fetch``)."""
        from .tasks import fetch_table

        return fetch_table(self.metadata_request(), ["ID", "CollectionTime", col.CLOUD_PERCENTAGE, col.PIXEL_COUNT],
                           fetch=fetch)


def characterize_gaps(aoi: Any, params: GapParams) -> GapRun:
    """Build part A for an AOI (anything ``optsar_nb.aoi.load_aoi`` takes) and parameters."""
    states = col.mask_states(aoi, mission=params.mission, start=params.start, end=params.end,
                             rule=params.mask_rule_name,
                             threshold=params.cloudscore_threshold)
    composites = composite_same_day(states, params.start)
    return GapRun(params=params, aoi=aoi, states=states, composites=composites,
                  statistics=gap_statistics(composites, params, aoi))
