"""Gap characterization on the local engine: hand-computed cases, invariants, real data."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from optsar_nb.errors import InvalidParameter
from optsar_nb.local import gaps
from optsar_nb.local.grid import align_to
from optsar_nb.local.stack import read_netcdf
from optsar_nb.missions import CLEAR, CLOUDY, MISSING
from optsar_nb.params import GapParams
from optsar_nb.products import GAP_STATISTIC_NAMES

C, K, M = CLEAR, CLOUDY, MISSING


def _stack(states, dates) -> xr.DataArray:
    arr = np.asarray(states, dtype="int8")
    if arr.ndim == 1:
        arr = arr[:, None, None]
    elif arr.ndim == 2:
        arr = arr[:, None, :]
    return xr.DataArray(
        arr,
        dims=("time", "y", "x"),
        coords={
            "time": pd.to_datetime(dates, format="ISO8601"),
            "y": np.arange(arr.shape[1]) + 0.5,
            "x": np.arange(arr.shape[2]) + 0.5,
        },
    )


def _stats(states, dates, start="2020-01-01", end="2020-02-01", revisit=5) -> dict[str, np.ndarray]:
    params = GapParams(start=start, end=end, revisit_days=revisit)
    out = gaps.gap_statistics(_stack(states, dates), params).compute()
    return {name: out.sel(stat=name).values.ravel() for name in GAP_STATISTIC_NAMES}


DATES = ["2020-01-03", "2020-01-08", "2020-01-13", "2020-01-18"]  # days 2, 7, 12, 17 after start


def test_always_clear_by_hand():
    s = _stats([C, C, C, C], DATES)
    # gaps: 2 - (-5) = 7, then 5, 5, 5; the period has 31 days, last clear day 17
    assert s["clear_count"][0] == 4 and s["gap_count"][0] == 4
    assert s["gap_mean"][0] == pytest.approx(22 / 4)
    assert s["gap_median"][0] == pytest.approx(5.0)
    assert s["gap_std"][0] == pytest.approx(np.sqrt((1.5**2 + 3 * 0.5**2) / 4))
    assert (s["gap_min"][0], s["gap_max"][0]) == (5, 7)
    assert s["gap_p90"][0] == pytest.approx(5 + 0.7 * 2)  # position 0.9 * 3 = 2.7 between 5 and 7
    assert s["open_gap"][0] == 31 - 17
    assert s["valid_count"][0] == 4 and s["clear_fraction"][0] == 1.0


def test_never_clear_is_undefined_not_zero():
    s = _stats([K, K, M, K], DATES)
    assert s["clear_count"][0] == 0 and s["gap_count"][0] == 0
    for name in ("gap_mean", "gap_median", "gap_std", "gap_min", "gap_max", "gap_p90"):
        assert np.isnan(s[name][0]), name
    assert s["open_gap"][0] == 31 + 5  # end minus the initial condition start - revisit
    assert s["valid_count"][0] == 3 and s["clear_fraction"][0] == 0.0


def test_all_missing_has_no_open_gap():
    s = _stats([M, M, M, M], DATES)
    assert s["valid_count"][0] == 0
    assert np.isnan(s["open_gap"][0]) and np.isnan(s["clear_fraction"][0]) and np.isnan(s["gap_mean"][0])


def test_single_clear_day_uses_initial_condition():
    s = _stats([K, M, C, K], DATES, revisit=5)
    assert s["clear_count"][0] == 1
    assert s["gap_mean"][0] == s["gap_max"][0] == s["gap_min"][0] == s["gap_median"][0] == 12 + 5
    assert s["gap_std"][0] == 0.0
    assert s["open_gap"][0] == 31 - 12
    assert s["clear_fraction"][0] == pytest.approx(1 / 3)


def test_initial_condition_follows_revisit_days():
    assert _stats([C, K, K, K], DATES, revisit=16)["gap_mean"][0] == 2 + 16
    assert _stats([C, K, K, K], DATES, revisit=1)["gap_mean"][0] == 2 + 1


def test_same_day_duplicates_are_composited():
    dates = ["2020-01-03", "2020-01-08T10:00", "2020-01-08T10:07", "2020-01-18"]
    # pixel 0: cloudy then clear on the same day -> clear; pixel 1: missing + cloudy -> cloudy;
    # pixel 2: missing in both -> missing
    states = [[C, C, C], [K, K, M], [C, M, M], [C, C, C]]
    s = _stats(states, dates)
    np.testing.assert_array_equal(s["clear_count"], [3, 2, 2])
    np.testing.assert_array_equal(s["valid_count"], [3, 3, 2])
    # clear days 2, 7, 17: pixel 0 gaps 7, 5, 10; pixels 1 and 2 (day 7 not clear) gaps 7, 15
    np.testing.assert_allclose(s["gap_max"], [10, 15, 15])
    np.testing.assert_allclose(s["gap_mean"], [22 / 3, 11, 11])


def test_images_outside_period_are_ignored():
    dates = ["2019-12-30", "2020-01-03", "2020-02-01", "2020-02-05"]  # first before, last two at/after end
    s = _stats([C, C, C, C], dates)
    assert s["clear_count"][0] == 1 and s["gap_mean"][0] == 7 and s["valid_count"][0] == 1


def test_sum_of_gaps_equals_last_clear_day_plus_revisit():
    rng = np.random.default_rng(3)
    dates = pd.date_range("2020-01-01", "2020-12-31", freq="5D")
    states = rng.choice([C, K, M], p=[0.4, 0.45, 0.15], size=(len(dates), 6, 7)).astype("int8")
    params = GapParams(start="2020-01-01", end="2021-01-01", revisit_days=5)
    out = gaps.gap_statistics(_stack(states, dates), params).compute()
    days = (dates - pd.Timestamp("2020-01-01")).days.to_numpy()
    clear = states == C
    last_clear = np.where(clear.any(0), np.max(np.where(clear, days[:, None, None], -1), axis=0), np.nan)
    total = out.sel(stat="gap_mean").values * out.sel(stat="clear_count").values
    has = clear.any(0)
    np.testing.assert_allclose(total[has], last_clear[has] + 5)
    # and the open gap closes the period: sum of gaps + open gap = end - (start - revisit)
    np.testing.assert_allclose(total[has] + out.sel(stat="open_gap").values[has], 366 + 5)
    assert has.sum() > 30 and (~has).sum() >= 0


def test_results_do_not_depend_on_chunking():
    rng = np.random.default_rng(5)
    dates = pd.date_range("2020-01-01", periods=40, freq="4D")
    states = _stack(rng.choice([C, K, M], size=(40, 33, 29)), dates)
    params = GapParams(start="2020-01-01", end="2020-07-01")
    whole = gaps.gap_statistics(states, params).compute()
    chunked = gaps.gap_statistics(states.chunk({"y": 7, "x": 10, "time": 9}), params).compute()
    xr.testing.assert_identical(whole, chunked)


# ------------------------------------------------------------------------------------------
# real data against an independent per-pixel loop
def _loop_reference(state: np.ndarray, times, start: str, end: str, revisit: int) -> dict[str, np.ndarray]:
    """docs/method.md A written literally: composite per day, then iterate days in order per pixel."""
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    by_day: dict[int, list[int]] = {}
    for i, t in enumerate(pd.DatetimeIndex(times)):
        if start_ts <= t < end_ts:
            by_day.setdefault((t.normalize() - start_ts).days, []).append(i)
    period = (end_ts - start_ts).days
    ny, nx = state.shape[1:]
    out = {name: np.full((ny, nx), np.nan) for name in GAP_STATISTIC_NAMES}
    for r in range(ny):
        for c in range(nx):
            previous = -revisit
            gap_list, n_valid = [], 0
            for day in sorted(by_day):
                values = [state[i, r, c] for i in by_day[day]]
                if any(v == C for v in values):
                    gap_list.append(day - previous)
                    previous = day
                if any(v != M for v in values):
                    n_valid += 1
            out["clear_count"][r, c] = out["gap_count"][r, c] = len(gap_list)
            out["valid_count"][r, c] = n_valid
            if n_valid:
                out["open_gap"][r, c] = period - previous
                out["clear_fraction"][r, c] = len(gap_list) / n_valid
            if gap_list:
                out["gap_mean"][r, c] = statistics.fmean(gap_list)
                out["gap_median"][r, c] = statistics.median(gap_list)
                out["gap_std"][r, c] = statistics.pstdev(gap_list)
                out["gap_min"][r, c] = min(gap_list)
                out["gap_max"][r, c] = max(gap_list)
                ordered = sorted(gap_list)
                pos = 0.9 * (len(ordered) - 1)
                lo = int(pos)
                hi = min(lo + 1, len(ordered) - 1)
                out["gap_p90"][r, c] = ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
    return out


def _assert_matches_loop(stats: xr.DataArray, ref: dict[str, np.ndarray]) -> None:
    for name in GAP_STATISTIC_NAMES:
        np.testing.assert_allclose(stats.sel(stat=name).values, ref[name], rtol=1e-6, atol=1e-5, err_msg=name)


def test_flanders_scl_equals_plain_loop(flanders):
    scl = read_netcdf(next(flanders.glob("S2_L2A_20m_*.nc")), "SCL")["SCL"]
    state = gaps.cloud_state(scl, "scl")
    params = GapParams(mission="S2", start="2017-08-01", end="2018-11-30")
    stats = gaps.gap_statistics(state, params).compute()
    ref = _loop_reference(state.values, state.time.values, "2017-08-01", "2018-11-30", 5)
    _assert_matches_loop(stats, ref)
    # a real mix: pixels with many and few clear days, and the SCL classes were really used
    assert stats.sel(stat="clear_count").min() < 20 < stats.sel(stat="clear_count").max()
    raw = scl.values
    assert np.isin(raw, [3, 8, 9, 10]).any() and np.isin(raw, [4, 5]).any()


def test_flanders_scl_aligned_to_10m_repeats_20m_pixels(flanders):
    scl = read_netcdf(next(flanders.glob("S2_L2A_20m_*.nc")), "SCL")["SCL"]
    red = read_netcdf(next(flanders.glob("S2_L2A_10m_*.nc")), "B04")["B04"]
    aligned = align_to(scl, red)
    assert aligned.shape == red.shape
    a = aligned.values
    np.testing.assert_array_equal(a[:, ::2, ::2], scl.values)
    np.testing.assert_array_equal(a[:, 1::2, 1::2], scl.values)


def test_slovenia_clm_is_data_equals_plain_loop(shared_data):
    folder = shared_data / "slovenia_s2_clouds"
    clm = np.load(folder / "CLM.npy")[..., 0]
    is_data = np.load(folder / "IS_DATA.npy")[..., 0]
    times = pd.to_datetime(json.loads((folder / "timestamps.json").read_text()))
    coords = {"time": times, "y": np.arange(clm.shape[1]) * -10.0, "x": np.arange(clm.shape[2]) * 10.0}
    cm = xr.DataArray(clm, dims=("time", "y", "x"), coords=coords)
    valid = xr.DataArray(is_data, dims=("time", "y", "x"), coords=coords)
    state = gaps.cloud_state(cm, "binary", valid=valid)
    assert pd.DatetimeIndex(times).normalize().duplicated().sum() == 1  # the real same-day pair
    params = GapParams(mission="S2", start="2015-07-01", end="2018-01-01")
    stats = gaps.gap_statistics(state.chunk({"y": 40, "x": 40}), params).compute()
    ref = _loop_reference(state.values, times, "2015-07-01", "2018-01-01", 5)
    _assert_matches_loop(stats, ref)
    assert 0.2 < clm.mean() < 0.8 and 0 < stats.sel(stat="clear_count").min()


def test_characterize_gaps_writes_outputs_and_refuses_overwrite(flanders, tmp_path):
    from optsar_nb.aoi import load_aoi
    from optsar_nb.errors import OutputExists
    from optsar_nb.local.stack import read_geotiff

    scl = read_netcdf(next(flanders.glob("S2_L2A_20m_*.nc")), "SCL")["SCL"]
    state = gaps.cloud_state(scl, "scl")
    params = GapParams(mission="S2", start="2017-08-01", end="2018-11-30")
    # an AOI covering the western half of the patch (UTM 31N -> lon/lat)
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    utm = [(501360, 5629040), (501680, 5629040), (501680, 5629680), (501360, 5629680)]
    corners = [tr.transform(x, y) for x, y in utm]
    aoi = load_aoi({"type": "Polygon", "coordinates": [corners + [corners[0]]]})
    paths = characterize_gaps = gaps.characterize_gaps(state, params, tmp_path, aoi=aoi)
    assert paths["statistics"].name == "Gap_Statistics_S2_2017-08-01_2018-11-30.tif"
    stats = read_geotiff(paths["statistics"])
    assert list(stats.band.values) == list(GAP_STATISTIC_NAMES)
    values = stats.values
    # pixels east of the AOI: every statistic undefined, counts included
    assert np.isnan(values[:, :, -3:]).all()
    assert np.isfinite(values[GAP_STATISTIC_NAMES.index("valid_count"), :, :10]).all()
    table = pd.read_csv(paths["metadata"])
    assert list(table.columns) == ["ID", "CollectionTime", "CLOUD_PERCENTAGE_AOI", "PIXEL_COUNT_AOI"]
    assert len(table) == scl.sizes["time"]
    # by hand for the first image: the AOI holds the 16 western columns of the 32 x 32 grid
    first = state.values[0][:, :16]
    assert table["PIXEL_COUNT_AOI"][0] == (first != M).sum()
    assert table["CLOUD_PERCENTAGE_AOI"][0] == pytest.approx(100 * (first == K).sum() / (first != M).sum())
    assert paths["panel"].stat().st_size > 10_000
    before = paths["statistics"].read_bytes()
    with pytest.raises(OutputExists, match="overwrite=True"):
        gaps.characterize_gaps(state, params, tmp_path, aoi=aoi)
    assert paths["statistics"].read_bytes() == before
    del characterize_gaps


@pytest.mark.parametrize(
    ("value", "rule", "expected"),
    [
        (0, "scl", M), (1, "scl", M), (2, "scl", C), (3, "scl", K), (4, "scl", C), (5, "scl", C), (6, "scl", C),
        (7, "scl", K), (8, "scl", K), (9, "scl", K), (10, "scl", K), (11, "scl", K),
        (0b1, "qa_pixel", M), (0b10, "qa_pixel", K), (0b100, "qa_pixel", K), (0b1000, "qa_pixel", K),
        (0b10000, "qa_pixel", K), (0b100000, "qa_pixel", C), (0b1000000, "qa_pixel", C), (21824, "qa_pixel", C),
        (22280, "qa_pixel", K), (1, "pixel_qa", M), (0b1000, "pixel_qa", K), (0b100000, "pixel_qa", K),
        (0b10, "pixel_qa", C), (322, "pixel_qa", C), (480, "pixel_qa", K),
    ],
)
def test_mask_rules_by_value(value, rule, expected):
    qa = xr.DataArray(np.array([[[value]]], dtype="uint16"), dims=("time", "y", "x"))
    assert int(gaps.cloud_state(qa, rule).values.ravel()[0]) == expected


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16"])
@pytest.mark.parametrize("rule", ["scl", "qa_pixel", "pixel_qa", "binary", "clear_mask"])
def test_integer_quality_bands_are_classified_as_the_rule_classifies_their_values(rule, dtype):
    """An 8/16-bit quality band goes through a table of every value's state: the same states,
    pixel by pixel, as the rule's own operations applied to the values as floats (no table),
    no-data and ``valid`` included, on a chunked stack."""
    import dask.array as da

    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.integers(info.min, int(info.max) + 1, 3000), np.arange(-3, 40),
                             [info.min, info.max, 21824, 22280, 322, 480]])
    values = values[(values >= info.min) & (values <= info.max)]
    values = np.resize(values, 2 * 40 * 40).astype(dtype).reshape(2, 40, 40)
    valid = xr.DataArray(rng.integers(0, 2, (2, 40, 40)), dims=("time", "y", "x"))
    attrs = {"nodata": int(values[0, 0, 0]), "crs": "EPSG:32631", "other": 1}
    qa = xr.DataArray(da.from_array(values, chunks=(1, 16, 16)), dims=("time", "y", "x"), attrs=attrs)
    as_float = qa.copy(data=values.astype("float64"))
    for v in (None, valid, valid[0].astype("float64").where(valid[0] > 0)):  # the last: one image for all, NaN
        by_table = gaps.cloud_state(qa, rule, valid=v)
        assert isinstance(by_table.data, da.Array) and by_table.dtype == np.int8 and by_table.name == "state"
        assert by_table.attrs == {"crs": "EPSG:32631"}
        np.testing.assert_array_equal(by_table.values, gaps.cloud_state(as_float, rule, valid=v).values)
    assert (by_table.values == M)[0, 0, 0]  # the no-data value


def test_qa_nodata_value_is_missing():
    qa = xr.DataArray(np.array([[[0, 21824]]], dtype="uint16"), dims=("time", "y", "x"), attrs={"nodata": 0})
    np.testing.assert_array_equal(gaps.cloud_state(qa, "qa_pixel").values.ravel(), [M, C])


def test_cloudscore_threshold():
    cs = xr.DataArray(np.array([[[0.2, 0.59, 0.6, 0.95, np.nan]]]), dims=("time", "y", "x"))
    np.testing.assert_array_equal(gaps.cloud_state(cs, "cloudscore", threshold=0.6).values.ravel(), [K, K, C, C, M])


def test_no_image_in_period():
    from optsar_nb.errors import NoImages

    with pytest.raises(NoImages, match="no image between 2021-01-01 and 2021-02-01.*widen the dates"):
        _stats([C, C, C, C], DATES, start="2021-01-01", end="2021-02-01")


@pytest.mark.parametrize(
    ("values", "rule", "threshold"),
    [
        ([200.0, -100.0, np.inf, -np.inf, 12.0, 4.5], "scl", None),  # SCL classes are 0-11
        ([-2.0, 70000.0, np.inf, 21824.5], "qa_pixel", None),  # 16-bit integers
        ([2.0, -1.0, 0.5, np.inf], "binary", None),  # 0 or 1
        ([1.5, -0.1, np.inf], "cloudscore", 0.6),  # a probability
    ],
)
def test_values_a_rule_does_not_define_are_missing_never_clear(values, rule, threshold):
    qa = xr.DataArray(np.array([[values]], dtype="float64"), dims=("time", "y", "x"))
    assert (gaps.cloud_state(qa, rule, threshold=threshold).values == M).all()


def test_a_stack_with_no_valid_value_stops_with_the_reason(tmp_path):
    """Landsat QA_PIXEL values read with Sentinel-2's SCL rule (the default mission): every value
    lies outside the SCL classes, so nothing can be computed; exit 2 names the reason and the fix,
    and nothing is written."""
    from optsar_nb.errors import NoImages

    qa = xr.DataArray(np.full((3, 4, 4), 21824.0), dims=("time", "y", "x"),
                      coords={"time": pd.to_datetime(["2021-01-05", "2021-01-21", "2021-02-06"]),
                              "id": ("time", ["a", "b", "c"]),
                              "y": [35.0, 25.0, 15.0, 5.0], "x": [5.0, 15.0, 25.0, 35.0]},
                      attrs={"crs": "EPSG:32631"})
    params = GapParams(mission="S2", start="2021-01-01", end="2021-03-01")
    state = gaps.cloud_state(qa, params.mask_rule_name)
    with pytest.raises(NoImages, match="values the rule does not define.*give mission L8 or L9"):
        gaps.characterize_gaps(state, params, tmp_path, plot=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidParameter, match="Landsat quality band but mission='S2'"):
        GapParams(mission="S2", mask="qa_pixel")


def _west_half_aoi():
    """An AOI covering the western half of the Flanders patch (UTM 31N -> lon/lat)."""
    from pyproj import Transformer

    from optsar_nb.aoi import load_aoi

    tr = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    utm = [(501360, 5629040), (501680, 5629040), (501680, 5629680), (501360, 5629680)]
    corners = [tr.transform(x, y) for x, y in utm]
    return load_aoi({"type": "Polygon", "coordinates": [corners + [corners[0]]]})


def _assert_identical(in_memory: np.ndarray, written: np.ndarray) -> None:
    assert in_memory.dtype == written.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(in_memory), np.isnan(written))
    np.testing.assert_array_equal(in_memory, written)  # NaN where NaN, equal elsewhere


def test_in_memory_statistics_equal_the_written_geotiff(flanders, tmp_path):
    """One preparation serves both uses: the lazy statistics equal the written GeoTIFF exactly, and
    outside the AOI every statistic is NaN in both, counts included."""
    from optsar_nb.local.stack import read_geotiff

    scl = read_netcdf(next(flanders.glob("S2_L2A_20m_*.nc")), "SCL")["SCL"]
    params = GapParams(mission="S2", start="2017-08-01", end="2018-11-30")
    prepared = gaps.prepare_gaps(gaps.cloud_state(scl, "scl"), params, aoi=_west_half_aoi())
    in_memory = prepared.statistics.compute()
    paths = gaps.write_gaps(prepared, tmp_path, plot=False)
    written = read_geotiff(paths["statistics"])
    assert list(in_memory.stat.values) == list(written.band.values) == list(GAP_STATISTIC_NAMES)
    _assert_identical(in_memory.values, written.values)
    outside = ~prepared.inside.values
    assert outside.any() and (~outside).any()
    assert np.isnan(in_memory.values[:, outside]).all()
    assert np.isfinite(in_memory.sel(stat="valid_count").values[~outside]).all()
    pd.testing.assert_frame_equal(pd.read_csv(paths["metadata"]), prepared.metadata, check_dtype=False)
    assert prepared.daily_state.sizes["time"] == len(np.unique(prepared.images.time.dt.floor("D")))


def test_run_gaps_in_memory_equals_its_written_outputs(tmp_path):
    """``run_gaps`` without and with an output folder (the map app and the notebooks) give the same
    statistics and daily states, NaN outside the AOI."""
    from optsar_nb import run
    from optsar_nb.aoi import load_aoi

    west, south, east, north = load_aoi(run.DEMO_DIR / "aoi.geojson").geometry.bounds
    bbox = (west, south, (west + east) / 2, north)
    engine = run.Engine("local", "test")
    in_memory = run.run_gaps(aoi=bbox, out_dir=None, engine=engine)
    on_disk = run.run_gaps(aoi=bbox, out_dir=tmp_path, engine=engine)
    assert list(in_memory.statistics.stat.values) == list(on_disk.statistics.stat.values)
    values = in_memory.statistics.values
    _assert_identical(values, on_disk.statistics.values)
    assert np.isnan(values).all(axis=0).any() and np.isfinite(values[GAP_STATISTIC_NAMES.index("valid_count")]).any()
    np.testing.assert_array_equal(in_memory.daily_state.values, on_disk.daily_state.values)
    pd.testing.assert_frame_equal(in_memory.metadata, on_disk.metadata, check_dtype=False)
