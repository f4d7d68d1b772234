"""The notebooks' runner (optsar_nb.run) on the Earth Engine engine, offline.

``run_gaps`` and ``run_infill`` with the engine forced to Earth Engine build their graphs with the
real earthengine-api client on the Flanders patch AOI (data/test_aois/flanders_patch.geojson);
their one server round trip (``getInfo``) is answered by the numpy evaluator of the graphs over
the real Flanders cubes, and the images they return are evaluated the same way and compared with
the local engine run on the same cubes. Exports go to an injected fake client whose tasks follow
scripted states, as in tests/test_ee_export.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import ee
import numpy as np
import pandas as pd
import pytest
from ee_support.cubes import band_array
from ee_support.evaluator import encode
from ee_support.fake_export import FakeClient

from optsar_nb import run
from optsar_nb.errors import InvalidParameter, OptsarError
from optsar_nb.local import gaps as local_gaps
from optsar_nb.local import infill as local_infill
from optsar_nb.local.stack import read_geotiff
from optsar_nb.params import GapParams, InfillParams
from optsar_nb.products import GAP_STATISTIC_NAMES

# the Earth Engine engine fills clouds the paper's way; one sample per coefficient keeps a model
# on most pixels, so that the regression, PCA and standardization are compared on them
EE_PARITY = {"method": "paper", "min_samples_per_coefficient": 1}
AOI_FILE = Path(__file__).resolve().parents[1] / "data" / "test_aois" / "flanders_patch.geojson"
START, END = "2017-08-01", "2018-11-30"
SUFFIX = f"_S2_{START}_{END}"
EE_ENGINE = run.Engine("ee", "forced for the offline tests")
# Both engines store float32; mean and std accumulate sums in different orders (last bit may differ).
SUMMED = ("gap_mean", "gap_std", "clear_fraction")
TOL = 1e-4  # NDVI units, as tests/test_ee_infill.py
FLOAT32_ULP_NDVI = 1.2e-7


# --------------------------------------------------------------------------------------------
# the server, offline: getInfo answered by the evaluator; export tasks from a fake client
class RoundTrips:
    """Replaces ``ee.data.computeValue`` (what ``getInfo`` sends) with the evaluator; counts calls."""

    def __init__(self, evaluator):
        self.evaluator, self.requests = evaluator, []

    def __call__(self, obj):
        self.requests.append(obj)
        return self.evaluator.evaluate(obj)


@pytest.fixture(scope="module")
def server(flanders_ee):
    ev, _ = flanders_ee
    trips = RoundTrips(ev)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ee.data, "computeValue", trips)
        yield trips


def no_sleep(seconds):
    pass


def progress_recorder():
    seen: dict[str, list[str]] = {}

    def progress(name, state, fraction):
        seen.setdefault(name, []).append(state)

    return seen, progress


# --------------------------------------------------------------------------------------------
# expectations from the local engine on the same cubes
@pytest.fixture(scope="module")
def aoi():
    from optsar_nb.aoi import load_aoi

    return load_aoi(AOI_FILE)


@pytest.fixture(scope="module")
def local_gap_run(flanders_ee, aoi):
    _, cubes = flanders_ee
    params = GapParams(mission="S2", start=START, end=END)
    state = local_gaps.select_period(local_gaps.cloud_state(cubes.scl, params.mask_rule_name), params.start, params.end)
    clipped = local_gaps.clip_to_aoi(state, local_gaps.aoi_mask(state, aoi))
    daily = local_gaps.composite_same_day(clipped.sortby("time"))
    return {
        "statistics": local_gaps.gap_statistics(clipped, params).compute(),
        "dates": list(pd.DatetimeIndex(daily.time.values).strftime("%Y-%m-%d")),
        "table": local_gaps.aoi_cloud_stats(clipped),
        # Earth Engine names images as the 10 m cube does (tests/ee_support/cubes.py)
        "ids": [str(i) for i in local_gaps.select_period(cubes.red, params.start, params.end)["id"].values],
        "times": [int(t) for t in pd.DatetimeIndex(clipped.time.values).asi8 // 1_000_000],
    }


# --------------------------------------------------------------------------------------------
# engine choice
def test_resolve_backend_ee_uses_the_session_initialized_here(monkeypatch, tmp_path):
    key = tmp_path / "key.json"
    key.write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    calls = []
    monkeypatch.setattr(ee, "Initialize", lambda *a, **k: calls.append((a, k)))
    engine = run.resolve_backend("ee")
    assert engine == run.Engine("ee", "credentials found and ee.Initialize() succeeded")
    assert run.resolve_backend("auto").name == "ee" and calls == [((), {}), ((), {})]

    def refuse(*a, **k):
        raise ee.EEException("Project 'x' is not registered to use Earth Engine")

    monkeypatch.setattr(ee, "Initialize", refuse)
    with pytest.raises(OptsarError, match=r"backend='ee' but Earth Engine is not usable: ee.Initialize\(\) failed: "
                                          r"Project 'x' is not registered"):
        run.resolve_backend("ee")
    fallback = run.resolve_backend("auto")
    assert fallback.name == "local" and fallback.reason.startswith("backend='auto' and ee.Initialize() failed")


def test_ee_engine_needs_an_aoi(server):
    before = len(server.requests)
    with pytest.raises(InvalidParameter, match="the Earth Engine engine needs an AOI"):
        run.run_gaps(aoi=None, start=START, end=END, engine=EE_ENGINE, out_dir=None)
    with pytest.raises(InvalidParameter, match="the Earth Engine engine needs an AOI"):
        run.run_infill(aoi=None, start=START, end=END, engine=EE_ENGINE)
    assert len(server.requests) == before


# --------------------------------------------------------------------------------------------
# part A
@pytest.fixture(scope="module")
def gap_result(server):
    before = len(server.requests)
    result = run.run_gaps(aoi=str(AOI_FILE), mission="S2", start=START, end=END, engine=EE_ENGINE, out_dir=None)
    return result, len(server.requests) - before


def test_gap_run_statistics_equal_the_local_engine(flanders_ee, gap_result, local_gap_run):
    ev, _ = flanders_ee
    result, trips = gap_result
    assert trips == 1  # the composites' dates
    assert result.engine is EE_ENGINE and result.statistics is None and result.daily_state is None
    assert result.aoi.area_km2 == pytest.approx(0.4096, rel=1e-3)  # 640 m x 640 m
    assert result.dates == local_gap_run["dates"] and len(result.dates) == 118
    image = ev.evaluate(result.ee_image)
    assert image.names == list(GAP_STATISTIC_NAMES)
    stats = local_gap_run["statistics"]
    for name in GAP_STATISTIC_NAMES:
        ours = band_array(image, name)
        theirs = stats.sel(stat=name).values.astype("float64")
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=name)
        if name in SUMMED:
            np.testing.assert_array_max_ulp(ours.astype("float32"), theirs.astype("float32"), maxulp=1)
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
    # every pixel of the patch has data on all 118 days; clear days range from 10 to 59
    np.testing.assert_array_equal(band_array(image, "valid_count"), 118)
    clear = band_array(image, "clear_count")
    assert (clear.min(), clear.max()) == (10, 59)
    with pytest.raises(OptsarError, match="no local statistics array"):
        result.summary()


def test_composites_are_the_local_daily_states(flanders_ee, gap_result, local_gap_run, aoi):
    """The collection the app's mask slider shows: day i of ``ee_collection`` is the local engine's
    composited state of ``dates[i]`` (1 clear, 0 cloudy, masked where missing)."""
    ev, cubes = flanders_ee
    result, _ = gap_result
    params = GapParams(mission="S2", start=START, end=END)
    state = local_gaps.select_period(local_gaps.cloud_state(cubes.scl, params.mask_rule_name), params.start, params.end)
    daily = local_gaps.composite_same_day(local_gaps.clip_to_aoi(state, local_gaps.aoi_mask(state, aoi)))
    composites = ev.evaluate(result.ee_collection).images
    assert len(composites) == daily.sizes["time"] == 118
    for i in (0, 57, 117):
        image, expected = composites[i], daily.isel(time=i).values.astype("float64")
        np.testing.assert_array_equal(band_array(image, "state"), np.where(expected < 0, np.nan, expected))


def _grid(flanders_ee) -> dict:
    """The optical grid exports are made on: the Flanders cube's CRS and transform."""
    _, cubes = flanders_ee
    return {"crs": cubes.grid.crs, "transform": [float(v) for v in cubes.grid.transform[:6]]}


def _assert_window_of_the_aoi(window: dict, grid: dict) -> None:
    """A download's grid: the native grid's CRS and pixel size, its origin on the grid's pixel
    corners, and the AOI's bounding box inside it (corners transformed by pyproj here)."""
    from pyproj import Transformer

    from optsar_nb.aoi import load_aoi

    a, _, c, _, e, f = grid["transform"]
    wa, _, wc, _, we, wf = window["transform"]
    assert window["crs"] == grid["crs"] and (wa, we) == (a, e)
    assert ((wc - c) / a).is_integer() and ((wf - f) / e).is_integer()
    west, south, east, north = load_aoi(AOI_FILE).bounds
    to_grid = Transformer.from_crs("EPSG:4326", grid["crs"], always_xy=True)
    xs, ys = zip(*(to_grid.transform(lon, lat) for lon in (west, east) for lat in (south, north)))
    assert wc <= min(xs) and max(xs) <= wc + window["width"] * wa
    assert wf + window["height"] * we <= min(ys) and max(ys) <= wf
    assert window["width"] * wa - (max(xs) - min(xs)) <= 2 * a + 1e-6  # no wider than needed (a pixel each side)


def test_gap_export_to_drive_reports_every_task_state(server, flanders_ee, local_gap_run, tmp_path):
    client, (seen, progress) = FakeClient(), progress_recorder()
    before = len(server.requests)
    result = run.run_gaps(aoi=str(AOI_FILE), start=START, end=END, engine=EE_ENGINE, out_dir=tmp_path / "gaps",
                          export="drive", project_title="Flanders test", progress=progress,
                          export_options={"client": client, "sleep": no_sleep})
    stats_name, meta_name = f"Gap_Statistics{SUFFIX}", f"InputMask_Metadata{SUFFIX}"
    assert result.tasks == [{stats_name: "done", meta_name: "done"}]
    assert [(n, k, d.kind, d.folder, s) for n, k, d, s in client.started] == [
        (stats_name, "image", "drive", "Flanders test", _grid(flanders_ee)),
        (meta_name, "table", "drive", "Flanders test", None)]
    assert seen == {stats_name: ["READY", "RUNNING", "COMPLETED"], meta_name: ["READY", "RUNNING", "COMPLETED"]}
    # the exported image is the run's statistics image, over the AOI of the file
    assert encode(client.objects[stats_name]) == encode(result.ee_image)
    region = client.region.toGeoJSON()  # a client-side geometry: no round trip
    with open(AOI_FILE) as f:
        ring = json.load(f)["geometry"]["coordinates"][0]
    np.testing.assert_array_equal(np.array(region["coordinates"][0]), np.array(ring))
    assert region["geodesic"] is False  # a planar polygon, as the local engine clips
    assert not (tmp_path / "gaps").exists()  # Drive: nothing is written here
    assert len(server.requests) - before == 2  # the dates, the export grid; the tasks make the table server-side


def test_gap_export_failure_shows_the_servers_message(server, tmp_path):
    stats_name = f"Gap_Statistics{SUFFIX}"
    client = FakeClient(scripts={stats_name: [["RUNNING", "FAILED"]]}, message="User memory limit exceeded.")
    seen, progress = progress_recorder()
    with pytest.raises(run.OptsarError, match=rf"export '{stats_name}' failed 2 times; the server said: "
                                              r"User memory limit exceeded\."):
        run.run_gaps(aoi=str(AOI_FILE), start=START, end=END, engine=EE_ENGINE, out_dir=tmp_path, progress=progress,
                     export_options={"client": client, "sleep": no_sleep, "retries": 1})
    assert seen[stats_name] == ["RUNNING", "FAILED", "RUNNING", "FAILED"]
    assert sum(1 for s in client.started if s[0] == stats_name) == 2


def test_gap_export_to_a_local_folder_writes_the_metadata_table(server, flanders_ee, local_gap_run, tmp_path):
    """export="local" downloads into out_dir; the InputMask_Metadata CSV is fetched (one more round
    trip) and equals the local engine's per-image AOI cloud statistics."""
    client = FakeClient()
    before = len(server.requests)
    out = tmp_path / "gaps"
    result = run.run_gaps(aoi=str(AOI_FILE), start=START, end=END, engine=EE_ENGINE, out_dir=out, export="local",
                          export_options={"client": client})
    assert result.tasks == [{f"Gap_Statistics{SUFFIX}": "done", f"InputMask_Metadata{SUFFIX}": "done"}]
    [(path, grid)] = client.downloads
    assert path == out / f"Gap_Statistics{SUFFIX}.tif"
    _assert_window_of_the_aoi(grid, _grid(flanders_ee))
    assert encode(client.objects[f"Gap_Statistics{SUFFIX}"]) == encode(result.ee_image)
    assert len(server.requests) - before == 3  # the dates, the export grid, the table
    table = pd.read_csv(out / f"InputMask_Metadata{SUFFIX}.csv")
    local = local_gap_run["table"]
    assert list(table.columns) == ["ID", "CollectionTime", "CLOUD_PERCENTAGE_AOI", "PIXEL_COUNT_AOI"]
    assert list(table["ID"]) == local_gap_run["ids"] and list(table["CollectionTime"]) == local_gap_run["times"]
    np.testing.assert_array_equal(table["PIXEL_COUNT_AOI"], local["PIXEL_COUNT_AOI"])
    valid = table["PIXEL_COUNT_AOI"].to_numpy() > 0
    np.testing.assert_allclose(table["CLOUD_PERCENTAGE_AOI"][valid], local["CLOUD_PERCENTAGE_AOI"][valid], rtol=1e-12)
    assert sorted(p.name for p in out.iterdir()) == [f"Gap_Statistics{SUFFIX}.tif", f"InputMask_Metadata{SUFFIX}.csv"]


# --------------------------------------------------------------------------------------------
# part B
INFILL_OUTPUTS = ("NDVI_gapfree", "NDVI_Mask", "NDVI_Pred", "NDVI_Obs", "Output_Metadata")


@pytest.fixture(scope="module")
def infill_run(flanders_ee, server, tmp_path_factory):
    """run_infill on Earth Engine with a Drive export to the fake client, and its outputs evaluated."""
    ev, _ = flanders_ee
    client, (seen, progress) = FakeClient(), progress_recorder()
    before = len(server.requests)
    result = run.run_infill(aoi=str(AOI_FILE), mission="S2", start=START, end=END, engine=EE_ENGINE,
                            out_dir=tmp_path_factory.mktemp("unused"), progress=progress,
                            export_options={"client": client, "sleep": no_sleep}, **EE_PARITY)
    trips = len(server.requests) - before
    images = {"observed": result.observed, "predicted": result.predicted, "gapfree": result.gapfree,
              "mask": result.mask}
    values = ev.evaluate(ee.Dictionary(images))  # one evaluation: shared steps computed once
    return result, trips, client, seen, values


@pytest.fixture(scope="module")
def local_infill_run(flanders_ee, aoi, tmp_path_factory):
    _, cubes = flanders_ee
    params = InfillParams(mission="S2", start=START, end=END, **EE_PARITY)
    ndvi = local_infill.ndvi(cubes.red, cubes.nir)
    state = local_infill.cloud_mask(cubes.scl, params)
    done = local_infill.infill(ndvi, state, cubes.vv, cubes.vh, params, tmp_path_factory.mktemp("local_infill"),
                               aoi=aoi, report=False)
    n_images = local_gaps.select_period(ndvi, params.start, params.end).sizes["time"]
    return done, n_images


def _stack(image, ids):
    return np.stack([band_array(image, i) for i in ids])


def test_infill_run_tables_and_dates_equal_the_local_engine(infill_run, local_infill_run):
    result, trips, _, _, _ = infill_run
    local, n_images = local_infill_run
    assert trips == 3  # the pair check (B.5), the fusion's leave-out rows (C), the export grid
    assert result.engine is EE_ENGINE and result.vv is None and result.vh is None
    assert list(result.metadata["ID"]) == list(local.metadata["ID"])
    np.testing.assert_array_equal(result.metadata["SplitLabel"], local.metadata["SplitLabel"])
    np.testing.assert_array_equal(result.metadata["Random"], local.metadata["Random"])
    assert result.n_pairs == len(local.metadata) == 118
    assert result.n_images == n_images == 118
    local_dates = pd.to_datetime(local.metadata["CollectionTime"], unit="ms").dt.strftime("%Y-%m-%d")
    assert result.dates == list(local_dates)
    with pytest.raises(OptsarError, match="no local accuracy table"):
        _ = result.accuracy


def test_infill_run_images_equal_the_local_engine(infill_run, local_infill_run):
    """Observed NDVI and the mask exactly (float32); the prediction and gap-free NDVI to float32
    rounding: both engines round where the other does, so their Talwar fits agree (see
    test_ee_infill). Measured on this AOI, which covers the whole cube: median 1.5e-8, 99th
    percentile 2.1e-7, largest 1.9e-5 NDVI (prediction; gap-free 2.5e-6). Bounds: 99 % of
    pixel-dates within four float32 ulps, all within 1e-4; a wiring error (another date's band,
    prediction for gap-free, ...) moves most pixels by > 0.01, and one flipped Talwar weight
    moves every pixel through the AOI-wide PCA by ~1e-4."""
    result, _, _, _, values = infill_run
    local, _ = local_infill_run
    ids = [str(i) for i in result.metadata["ID"]]
    obs = _stack(values["observed"], ids)
    obs_local = read_geotiff(local.paths["NDVI_Obs"]).values.astype("float64")
    np.testing.assert_array_equal(np.isnan(obs), np.isnan(obs_local))
    assert np.nanmax(np.abs(obs - obs_local)) <= FLOAT32_ULP_NDVI
    np.testing.assert_array_equal(_stack(values["mask"], ids),
                                  read_geotiff(local.paths["NDVI_Mask"]).values.astype("float64"))
    predicted = _stack(values["predicted"], ids)
    for kind, name in (("predicted", "NDVI_Pred"), ("gapfree", "NDVI_gapfree")):
        ours = _stack(values[kind], ids)
        theirs = read_geotiff(local.paths[name]).values.astype("float64")
        if name == "NDVI_gapfree":
            ours, theirs = _where_predicted_on_both(ours, theirs, predicted)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=name)
        diff = np.abs(ours - theirs)
        assert np.nanpercentile(diff, 99) <= 4 * FLOAT32_ULP_NDVI, name
        assert np.nanmax(diff) <= TOL, name


def test_infill_export_starts_the_five_outputs_with_progress(infill_run, flanders_ee):
    result, _, client, seen, _ = infill_run
    names = [f"{n}{SUFFIX}" for n in INFILL_OUTPUTS]
    assert result.tasks == [dict.fromkeys(names, "done")]
    assert [(n, k, d.kind, d.folder, s) for n, k, d, s in client.started] == [
        *((n, "image", "drive", "optsar_nb", _grid(flanders_ee)) for n in names[:4]),
        (names[4], "table", "drive", "optsar_nb", None)]
    assert seen == dict.fromkeys(names, ["READY", "RUNNING", "COMPLETED"])
    for name, image in (("NDVI_gapfree", result.gapfree), ("NDVI_Mask", result.mask), ("NDVI_Pred", result.predicted),
                        ("NDVI_Obs", result.observed)):
        assert encode(client.objects[f"{name}{SUFFIX}"]) == encode(image), name


def test_export_parameter_names_a_destination(tmp_path):
    from optsar_nb.run_ee import ee_destination

    params = GapParams(project_title="Gap study")
    assert (ee_destination("drive", params, tmp_path).kind, ee_destination("drive", params, tmp_path).folder) == (
        "drive", "Gap study")
    local = ee_destination("local", params, tmp_path)
    assert (local.kind, local.folder) == ("local", str(tmp_path))
    asset = ee_destination("asset:projects/my-proj/assets/gaps", params, tmp_path)
    assert (asset.kind, asset.folder) == ("asset", "projects/my-proj/assets/gaps")
    gcs = ee_destination("gcs:my-bucket/runs/2024", params, tmp_path)
    assert (gcs.kind, gcs.bucket, gcs.folder) == ("gcs", "my-bucket", "runs/2024")
    for bad in ("asset", "asset:gaps", "gcs", "ftp:host"):
        with pytest.raises(InvalidParameter, match="is not a destination"):
            ee_destination(bad, params, tmp_path)


def _where_predicted_on_both(ours, theirs, predicted):
    """Gap-free stacks compared where the focal median saw only pixel-dates with a prediction.

    Both engines fill pixel-dates without a prediction by the fusion, whose weights the local
    engine fits on every pixel and Earth Engine on a sample of pixels (this AOI is larger than
    ``optsar_nb.ee.fusion.SAMPLE_PIXELS``; tests/test_ee_infill.py compares them on all pixels).
    Elsewhere the two must agree.
    """
    from scipy.ndimage import minimum_filter

    assert np.isfinite(theirs[np.isfinite(ours)]).all()
    inner = minimum_filter(np.isfinite(predicted).astype(np.uint8), size=(1, 3, 3), mode="constant", cval=1)
    inner = inner.astype(bool)
    return np.where(inner, ours, np.nan), np.where(inner, theirs, np.nan)
