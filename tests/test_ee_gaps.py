"""Gap characterization: graphs built by optsar_nb.ee, evaluated on the real Flanders data,
equal the local engine's results (optsar_nb.local.gaps) on the same masks."""

from __future__ import annotations

import numpy as np
import pytest
from ee_support.cubes import band_array, flanders_aoi, flanders_evaluator
from ee_support.evaluator import algorithms_in, encode

from optsar_nb.ee import gaps as ee_gaps
from optsar_nb.local import gaps as local_gaps
from optsar_nb.params import GapParams
from optsar_nb.products import GAP_STATISTIC_NAMES

PARAMS = GapParams(mission="S2", start="2017-08-01", end="2018-12-01")  # the whole Flanders series
# Both engines store float32; mean and std accumulate sums in different orders, so their last
# float32 bit may differ. Everything else (counts, order statistics, open gap) is exact.
SUMMED = ("gap_mean", "gap_std", "clear_fraction")


@pytest.fixture(scope="module")
def aoi():
    return flanders_aoi()


@pytest.fixture(scope="module")
def local_result(flanders_ee, aoi):
    _, cubes = flanders_ee
    state = local_gaps.cloud_state(cubes.scl, "scl")
    inside = local_gaps.aoi_mask(state, aoi)
    state = local_gaps.clip_to_aoi(state, inside)
    stats = local_gaps.gap_statistics(state, PARAMS).compute()
    return stats, local_gaps.aoi_cloud_stats(state), inside.values


@pytest.fixture(scope="module")
def run(ee_offline, aoi):
    return ee_gaps.characterize_gaps(aoi, PARAMS)


def test_statistics_equal_local(flanders_ee, run, local_result):
    ev, _ = flanders_ee
    image = ev.evaluate(run.statistics)
    stats, _, inside = local_result
    assert image.names == list(GAP_STATISTIC_NAMES)
    for name in GAP_STATISTIC_NAMES:
        ours = band_array(image, name)
        theirs = stats.sel(stat=name).values.astype("float64")
        assert np.isnan(ours[~inside]).all(), f"{name} is not clipped to the AOI"
        ours, theirs = ours[inside], theirs[inside]
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=f"{name}: masks differ")
        if name in SUMMED:
            np.testing.assert_array_max_ulp(ours.astype("float32"), theirs.astype("float32"), maxulp=1)
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
    # the data is a real mixed case: some pixels have undefined statistics, most do not
    clear = band_array(image, "clear_count")[inside]
    assert clear.min() >= 0 and clear.max() > 40


def test_histogram_percentiles_are_bounded(ee_offline, flanders, run, local_result):
    """Earth Engine derives percentiles from a histogram beyond maxRaw inputs. With the 1-day
    buckets the EE engine asks for, the value falls in a bucket next to the order statistics
    around the percentile: within [x(floor(pos) - 1) - 1 day, x(ceil(pos)) + 1 day] where
    pos = q (n - 1). The exact path (above) is what the local engine computes."""
    import ee

    ev, _ = flanders_evaluator(flanders, percentile_mode="histogram")
    image = ev.evaluate(run.statistics)
    gaps = ev.evaluate(ee.ImageCollection.fromImages(
        ee_gaps.gap_iteration(run.composites, revisit_days=PARAMS.revisit_days).slice(1)))
    values = np.stack([band_array(g, ee_gaps.DAY_GAP) for g in gaps.images])
    stats, _, inside = local_result
    width = ee_gaps.PERCENTILE_BUCKET_DAYS
    ordered = np.sort(values, axis=0)  # NaN last
    n = np.sum(~np.isnan(values), axis=0)
    worst = 0.0
    for name, q in (("gap_median", 0.5), ("gap_p90", 0.9)):
        hist = band_array(image, name)
        pos = q * np.maximum(n - 1, 0)
        lo = np.take_along_axis(ordered, np.maximum(np.floor(pos) - 1, 0).astype(int)[None], 0)[0]
        hi = np.take_along_axis(ordered, np.ceil(pos).astype(int)[None], 0)[0]
        ok = inside & (n > 0)
        assert np.all(hist[ok] >= lo[ok] - width) and np.all(hist[ok] <= hi[ok] + width), name
        worst = max(worst, float(np.nanmax(np.abs(hist - stats.sel(stat=name).values)[ok])))
    # The bracket, not a fixed number of days, is the bound: where a pixel has few, uneven gaps
    # the neighbouring order statistic is far away (35 days for p90 on this data).
    assert worst > 0


def test_metadata_equal_local(flanders_ee, run, local_result):
    ev, cubes = flanders_ee
    rows = ev.evaluate(run.metadata_request())
    _, table, _ = local_result
    assert [r[0] for r in rows] == [str(i) for i in cubes.red["id"].values]
    counts = np.array([r[3] for r in rows])
    np.testing.assert_array_equal(counts, table["PIXEL_COUNT_AOI"].to_numpy())
    pct = np.array([r[2] for r in rows])
    valid = counts > 0
    np.testing.assert_allclose(pct[valid], table["CLOUD_PERCENTAGE_AOI"].to_numpy()[valid], rtol=1e-12)


def test_same_day_composite_and_initial_condition(ee_offline):
    """Hand-made case: two images on one day (clear in either -> clear), revisit 5 days."""
    import ee
    from ee_support.evaluator import Evaluator
    from ee_support.values import Band, Collection, Grid, Image

    grid = Grid("EPSG:32631", (10.0, 0.0, 501360.0, 0.0, -10.0, 5629680.0), 1, 3)
    day_ms = 86_400_000
    start = 1501545600000  # 2017-08-01T00:00Z

    def img(day, hour, scl):
        data = np.array([scl], "float64")
        return Image({"B4": Band(np.ones((1, 3)), np.ones((1, 3), bool)), "SCL": Band(data, data > 0)},
                     {"system:time_start": start + day * day_ms + hour * 3_600_000, "system:index": f"d{day}h{hour}"})

    # pixel 0: cloudy then clear on day 3 (second granule); pixel 1: clear day 3 and 10; pixel 2: never valid
    images = [img(3, 10, [9, 4, 0]), img(3, 11, [4, 9, 0]), img(10, 10, [9, 4, 0])]
    ev = Evaluator(grid)
    ev.register("COPERNICUS/S2_SR_HARMONIZED", Collection(images))
    params = GapParams(mission="S2", start="2017-08-01", end="2017-08-21")
    from shapely.geometry import box

    from optsar_nb.aoi import AOI

    aoi = AOI(box(2.0, 50.0, 4.0, 52.0))
    out = ev.evaluate(ee_gaps.characterize_gaps(aoi, params).statistics)
    get = {n: band_array(out, n)[0] for n in out.names}
    # day 3 closes the gap from the initial condition -5: 8 days; pixel 1 then 7 days to day 10
    np.testing.assert_array_equal(get["clear_count"], [1, 2, 0])
    np.testing.assert_array_equal(get["gap_max"][:2], [8, 8])
    np.testing.assert_array_equal(get["gap_min"][:2], [8, 7])
    np.testing.assert_array_equal(get["open_gap"][:2], [20 - 3, 20 - 10])
    np.testing.assert_array_equal(get["valid_count"], [2, 2, 0])
    assert np.isnan(get["gap_mean"][2]) and np.isnan(get["open_gap"][2]) and np.isnan(get["clear_fraction"][2])
    assert ee.data.is_initialized()


def test_gap_graph_uses_iterate_and_the_mission_revisit(run):
    expr = encode(run.statistics)
    names = algorithms_in(expr)
    assert "Collection.iterate" in names and "ImageCollection.reduce" in names
    from ee_support.evaluator import constants_of

    assert -PARAMS.revisit_days in constants_of(expr)


def test_landsat8_statistics_equal_local(ee_offline, flanders, aoi):
    """Landsat 8 (Collection 2 QA_PIXEL bits, 16-day revisit) on the real Landsat cube of the
    Flanders patch (55 dates, on the 10 m grid): the same parity as Sentinel-2. The cube has no
    reflectance; the red band the graph reads its grid from is a placeholder of zeros. Its no-data
    value (0) is masked, as the server masks QA_PIXEL where a scene has no data."""
    from ee_support.evaluator import Evaluator
    from ee_support.values import Band, Collection, Image

    from optsar_nb.local import grid, stack
    from optsar_nb.missions import MISSIONS

    _, cubes = flanders_evaluator(flanders)
    qa = stack.read_netcdf(next(flanders.glob("L8_L2-ST_10m_*.nc")), "QA-PIXEL")["QA-PIXEL"]
    qa = grid.align_to(qa, cubes.red).compute()
    mission = MISSIONS["L8"]
    images = []
    for i, t in enumerate(stack.datetime_to_ms(qa.time.values)):
        values = qa.values[i].astype("float64")
        images.append(Image({mission.red: Band(np.zeros_like(values), np.ones(values.shape, bool)),
                             "QA_PIXEL": Band(values, values != qa.attrs["nodata"])},
                            {"system:time_start": int(t), "system:index": str(qa["id"].values[i])}))
    ev = Evaluator(cubes.grid)
    ev.register(mission.collection_id, Collection(images))
    params = GapParams(mission="L8", start="2017-08-01", end="2018-12-01")
    image = ev.evaluate(ee_gaps.characterize_gaps(aoi, params).statistics)

    state = local_gaps.cloud_state(qa.rename("QA_PIXEL"), params.mask_rule_name)
    inside = local_gaps.aoi_mask(state, aoi)
    stats = local_gaps.gap_statistics(local_gaps.clip_to_aoi(state, inside), params).compute()
    inside = inside.values
    for name in GAP_STATISTIC_NAMES:
        ours, theirs = band_array(image, name)[inside], stats.sel(stat=name).values.astype("float64")[inside]
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=name)
        if name in SUMMED:
            np.testing.assert_array_max_ulp(ours.astype("float32"), theirs.astype("float32"), maxulp=1)
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
    clear = band_array(image, "clear_count")[inside]
    assert 0 < clear.max() < 55 and np.nanmax(band_array(image, "gap_max")[inside]) >= 16
