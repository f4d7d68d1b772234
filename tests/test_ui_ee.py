"""The map app on the Earth Engine engine, offline: a geemap Map with Earth Engine tile layers.

The app is built with the engine forced to Earth Engine under the offline client
(tests/ee_support). Adding an Earth Engine layer makes geemap ask the server for a map id
(``ee.Image.getMapId`` -> ``ee.data.getMapId``); that one function is replaced by a recorder that
answers with a fake tile URL, so the tests see exactly which image and visualization parameters
each layer shows. ``getInfo`` round trips are answered by the numpy evaluator over the real
Flanders cubes, and layer images are evaluated the same way and compared with the local engine.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import ee
import numpy as np
import pandas as pd
import pytest
from ee_support.cubes import band_array
from ee_support.evaluator import encode
from ee_support.fake_export import FakeClient

from optsar_nb import run
from optsar_nb.local import gaps as local_gaps
from optsar_nb.missions import CLEAR
from optsar_nb.params import GapParams
from optsar_nb.products import STATISTICS_BY_NAME
from optsar_nb.ui.inspector import lonlat_label
from optsar_nb.ui.layers import MASK_COLORS, colorbar_html, ndvi_style, palette_hex, statistic_style

AOI_FILE = Path(__file__).resolve().parents[1] / "data" / "test_aois" / "flanders_patch.geojson"
START, END = "2017-08-01", "2018-11-30"
SUFFIX = f"_S2_{START}_{END}"
EE_ENGINE = run.Engine("ee", "forced for the offline tests")
ALL_PIXELS = 10**6  # the fusion's weights from every pixel's leave-out rows, as the local engine


class MapIds:
    """Stands in for ``ee.data.getMapId``: records each request, answers with a fake tile URL."""

    def __init__(self):
        self.requests = []

    def __call__(self, request):
        self.requests.append(request)
        n = len(self.requests)
        return {"mapid": f"fake-map-{n}", "token": "",
                "tile_fetcher": SimpleNamespace(url_format=f"https://tiles.invalid/{n}/{{z}}/{{x}}/{{y}}")}

    def layer(self, i: int = -1):
        """(image, visualization parameters, tile URL) of request ``i``: geemap sends
        ``image.visualize(**vis_params)``."""
        visualized = self.requests[i]["image"]
        assert visualized.func.getSignature()["name"] == "Image.visualize"
        args = dict(visualized.args)
        n = i % len(self.requests) + 1
        return args.pop("image"), args, f"https://tiles.invalid/{n}/{{z}}/{{x}}/{{y}}"


@pytest.fixture(scope="module")
def server(flanders_ee):
    ev, _ = flanders_ee
    trips, map_ids = [], MapIds()

    def compute_value(obj):
        trips.append(obj)
        return ev.evaluate(obj)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ee.data, "computeValue", compute_value)
        mp.setattr(ee.data, "getMapId", map_ids)
        yield SimpleNamespace(evaluator=ev, trips=trips, map_ids=map_ids)


@pytest.fixture(scope="module")
def local(flanders_ee):
    """The local engine's statistics and daily states of the same AOI and dates."""
    from optsar_nb.aoi import load_aoi

    _, cubes = flanders_ee
    params = GapParams(mission="S2", start=START, end=END)
    state = local_gaps.select_period(local_gaps.cloud_state(cubes.scl, params.mask_rule_name), params.start, params.end)
    clipped = local_gaps.clip_to_aoi(state, local_gaps.aoi_mask(state, load_aoi(AOI_FILE)))
    daily = local_gaps.composite_same_day(clipped.sortby("time"))
    return SimpleNamespace(statistics=local_gaps.gap_statistics(clipped, params).compute(), daily=daily,
                           dates=list(pd.DatetimeIndex(daily.time.values).strftime("%Y-%m-%d")))


def make_app(**kwargs):
    from optsar_nb.ui.app import OptsarApp

    return OptsarApp(engine=EE_ENGINE, start=START, end=END, aoi=str(AOI_FILE), **kwargs)


@pytest.fixture(scope="module")
def app(server):
    app = make_app()
    yield app
    app.cleanup()


def tile_layers(app) -> dict:
    return {layer.name: layer for layer in app.map.layers if getattr(layer, "url", "").startswith("https://tiles.invalid")}


# --------------------------------------------------------------------------------------------
def test_app_map_is_geemap_without_any_request(server, app):
    import geemap

    assert isinstance(app.map, geemap.Map)
    assert app.engine is EE_ENGINE
    assert "AOI &#x27;Flanders patch&#x27; (0.41 km2): press Preview masks or Gap statistics" in app.message.value
    assert app.aoi.name == "Flanders patch" and "AOI" in [layer.name for layer in app.map.layers]
    assert not tile_layers(app) and not server.map_ids.requests and not server.trips


def test_gap_statistics_layer_is_the_ee_band_with_the_local_colorbar(server, app, local):
    """Each statistic is the run's band, drawn with its catalogue palette and the range of its
    values over the AOI (one request for all bands), so the colorbar equals the local engine's."""
    trips = len(server.trips)
    app.buttons["gaps"].click()
    assert "gap statistics ready" in app.message.value, app.message.value
    assert len(server.trips) - trips == 2  # the dates, the value ranges
    result = app.gap_result
    for name in ("gap_mean", "gap_max", "clear_fraction"):
        app.stat_layer.dropdown.value = name
        image, vis, url = server.map_ids.layer()
        assert encode(image) == encode(result.ee_image.select(name))
        values = local.statistics.sel(stat=name).values.astype("float32")
        expected = statistic_style(name, values)  # what the local engine's layer uses
        assert vis == {"min": expected.vmin, "max": expected.vmax,
                       "palette": [c.lstrip("#") for c in palette_hex(STATISTICS_BY_NAME[name].palette)]}
        assert app.stat_layer.legend.value == colorbar_html(expected)
        assert tile_layers(app)[name].url == url
        np.testing.assert_array_max_ulp(band_array(server.evaluator.evaluate(image), name).astype("float32"),
                                        values, maxulp=1)
    # clear_fraction: stretched from the AOI's lowest to its highest value, not a fixed [0, 1]
    assert (vis["min"], vis["max"]) == (float(np.nanmin(values)), float(np.nanmax(values))) != (0.0, 1.0)
    app.stat_layer.dropdown.value = "gap_max"
    assert server.map_ids.layer()[1]["min"] == 27.0 and server.map_ids.layer()[1]["max"] == 236.0
    assert "gap_max (days)" in app.stat_layer.legend.value and ">236<" in app.stat_layer.legend.value
    assert [n for n in tile_layers(app) if n.startswith("gap") or n.startswith("clear_f")] == ["gap_max"]


def test_mask_preview_layer_is_the_days_composite_in_the_legends_colours(server, app, local):
    app.buttons["preview"].click()
    assert "118 days with images" in app.message.value, app.message.value
    assert app.mask_layer.dates == local.dates
    composites = server.evaluator.evaluate(app.gap_result.ee_collection).images
    for index in (0, 40):
        app.mask_layer.slider.value = index
        image, vis, url = server.map_ids.layer()
        assert encode(image) == encode(ee.Image(app.gap_result.ee_collection.toList(1, index).get(0)))
        assert vis == {"min": 0, "max": 1, "palette": [MASK_COLORS["cloudy"].lstrip("#"),
                                                        MASK_COLORS["clear"].lstrip("#")]}
        assert tile_layers(app)[f"clear-day mask {local.dates[index]}"].url == url
        expected = local.daily.isel(time=index).values.astype("float64")
        np.testing.assert_array_equal(band_array(composites[index], "state"), np.where(expected < 0, np.nan, expected))


# --------------------------------------------------------------------------------------------
def export_app(scripts, message="no message", retries=2):
    """An app whose exports go to a fake client; the progress panel is read at every poll."""
    seen = []
    options = {"client": FakeClient(scripts, message, default_states=("RUNNING", "COMPLETED")), "retries": retries,
               "poll_s": 0}
    app = make_app(export_options=options)
    options["sleep"] = lambda s: seen.append((app.progress.label.value, app.progress.bar.value))
    return app, seen


def test_export_button_shows_each_task_state_then_done(server):
    stats, meta = f"Gap_Statistics{SUFFIX}", f"InputMask_Metadata{SUFFIX}"
    app, seen = export_app({stats: [["READY", "RUNNING", "COMPLETED"]], meta: [["RUNNING", "COMPLETED"]]})
    app.buttons["export"].click()
    assert seen == [(f"{stats}: READY, {meta}: RUNNING", 0), (f"{stats}: RUNNING, {meta}: COMPLETED", 50)]
    assert app.progress.tasks == {stats: "COMPLETED", meta: "COMPLETED"}
    assert app.progress.bar.value == 100 and app.progress.bar.bar_style == "success"
    assert app.progress.label.value.startswith("Export: done in ")
    assert f"Earth Engine exports: {stats}: done, {meta}: done" in app.message.value
    app.cleanup()


def test_export_button_shows_a_failed_task_with_the_servers_message(server):
    stats, meta = f"Gap_Statistics{SUFFIX}", f"InputMask_Metadata{SUFFIX}"
    app, seen = export_app({stats: [["RUNNING", "FAILED"]]}, message="User memory limit exceeded.", retries=1)
    app.buttons["export"].click()
    assert seen == [(f"{stats}: RUNNING, {meta}: RUNNING", 0), (f"{stats}: FAILED, {meta}: COMPLETED", 100),
                    (f"{stats}: RUNNING, {meta}: COMPLETED", 50)]
    assert app.progress.tasks == {stats: "FAILED", meta: "COMPLETED"}
    assert app.progress.bar.bar_style == "danger" and app.progress.label.value == "Export: failed"
    assert (f"Export: export &#x27;{stats}&#x27; failed 2 times; the server said: User memory limit exceeded."
            in app.message.value), app.message.value
    app.cleanup()


@pytest.fixture(scope="module")
def infilled(server):
    """An app after its Infill button. The fusion's weights are fitted on every pixel's leave-out
    rows, as the local engine fits them (tests/test_ee_infill.py), so that both engines' gap-free
    NDVI can be compared."""
    from optsar_nb.ee import infill as ee_infill

    app, _ = export_app({})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ee_infill, "build_infill", functools.partial(ee_infill.build_infill,
                                                                fusion_sample_pixels=ALL_PIXELS))
        app.buttons["infill"].click()
    yield app
    app.cleanup()


def test_infill_button_shows_a_split_map(server, infilled):
    app = infilled
    assert "gap-free NDVI ready" in app.message.value, app.message.value
    result = app.infill_result
    names = [f"{n}{SUFFIX}" for n in ("NDVI_gapfree", "NDVI_Mask", "NDVI_Pred", "NDVI_Obs", "NDVI_gapfree_SE",
                                      "Output_Metadata")]
    assert app.progress.tasks == dict.fromkeys(names, "COMPLETED")  # the infill export's tasks are shown too
    assert app.ndvi.dates == result.dates and len(app.ndvi.dates) == 118
    assert app.ndvi.legend.value == colorbar_html(ndvi_style("NDVI gap-free"))
    style = ndvi_style().vis_params()

    def split_images():
        left, right = app.ndvi.split.left_layer, app.ndvi.split.right_layer
        assert app.ndvi.split in app.map.controls
        (l_image, l_vis, l_url), (r_image, r_vis, r_url) = server.map_ids.layer(-2), server.map_ids.layer(-1)
        assert (left.url, right.url) == (l_url, r_url) and l_vis == r_vis == style
        return left.name, encode(l_image), right.name, encode(r_image)

    assert split_images() == ("NDVI observed", encode(result.observed.select(0)),
                              "NDVI gap-free", encode(result.gapfree.select(0)))
    app.ndvi.toggle.value = "predicted"
    assert split_images() == ("NDVI observed", encode(result.observed.select(0)),
                              "NDVI predicted", encode(result.predicted.select(0)))
    app.ndvi.slider.value = 7
    assert split_images()[3] == encode(result.predicted.select(7))


# --------------------------------------------------------------------------------------------
# the pixel inspector: a click fetches the pixel's series in one getRegion request, whose
# reference says: "Output an array of values for each [pixel, band, image] tuple in an
# ImageCollection. The output contains rows of id, lon, lat, time, and all bands for each image
# that intersects each pixel in the given region."
PIXEL = (40, 40)  # (row, col) of the clicked pixel on the Flanders grid, inside the AOI
OUTSIDE = (3.0350, 50.8160)  # lon, lat east of the AOI (and of the cube)
FLOAT32_ULP_NDVI = 1.2e-7  # one float32 ulp at |NDVI| < 1


def pixel_centre(grid, row: int, col: int) -> tuple[float, float]:
    """(lon, lat) of a pixel's centre."""
    from pyproj import Transformer

    a, b, c, d, e, f = grid.transform[:6]
    x, y = c + a * (col + 0.5) + b * (row + 0.5), f + d * (col + 0.5) + e * (row + 0.5)
    return Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)


def test_evaluator_get_region_gives_a_row_per_image_at_the_points_pixel(flanders_ee):
    """The evaluator's ``ImageCollection.getRegion`` as its reference describes it: "Output an
    array of values for each [pixel, band, image] tuple in an ImageCollection. The output contains
    rows of id, lon, lat, time, and all bands for each image that intersects each pixel in the
    given region." A point's pixel is the one containing it; masked values are None; a call that
    names no grid (EPSG:4326 by default) is refused."""
    from optsar_nb.local.stack import datetime_to_ms
    from optsar_nb.missions import S1

    ev, cubes = flanders_ee
    row, col = PIXEL
    lon, lat = pixel_centre(cubes.grid, row, col)
    s1 = ee.ImageCollection(S1.collection_id).limit(3).map(lambda i: i.updateMask(i.gt(-6)))
    grid = ee.Image(ee.ImageCollection(S1.collection_id).first()).select("VV").projection()
    rows = ev.evaluate(s1.getRegion(ee.Geometry.Point([lon, lat]), crs=grid))
    assert rows[0] == ["id", "longitude", "latitude", "time", "VV", "VH"]
    assert len(rows) == 4
    for i, r in enumerate(rows[1:]):
        assert r[0] == str(cubes.vv["id"].values[i]) and r[3] == int(datetime_to_ms(cubes.vv.time.values)[i])
        assert r[1:3] == pytest.approx([lon, lat], abs=1e-9)
        for value, stack in zip(r[4:], (cubes.vv, cubes.vh)):
            expected = float(stack.values[i, row, col])
            assert value == (expected if expected > -6 else None)
    assert any(v is None for r in rows[1:] for v in r[4:])  # some masked value is in the sample
    assert ev.evaluate(s1.getRegion(ee.Geometry.Point(list(OUTSIDE)), crs=grid)) == rows[:1]
    with pytest.raises(ValueError, match="default projection"):
        ev.evaluate(s1.getRegion(ee.Geometry.Point([lon, lat])))
    with pytest.raises(ValueError, match="grid other than the cube's"):
        ev.evaluate(s1.getRegion(ee.Geometry.Point([lon, lat]), scale=10))


def click(server, app, lon: float, lat: float):
    """The map's click on ``lon, lat``; returns the inspector's table and the round trips it made."""
    trips = len(server.trips)
    app.inspector._handle_interaction(type="click", coordinates=[lat, lon])
    return app.inspector.last_table, server.trips[trips:]


def in_period(times) -> np.ndarray:
    t = pd.DatetimeIndex(times)
    return np.asarray((t >= pd.Timestamp(START)) & (t < pd.Timestamp(END)))


def s1_expected(cubes, band: str, row: int, col: int, params) -> pd.Series:
    """The S1 images of the period at the pixel, masked outside [s1_min_db, s1_max_db] as the
    infill's S1 inputs are."""
    stack = getattr(cubes, band.lower())
    keep = in_period(stack.time.values)
    values = stack.values[keep, row, col].astype("float64")
    values[(values < params.s1_min_db) | (values > params.s1_max_db)] = np.nan
    return pd.Series(values, index=pd.DatetimeIndex(stack.time.values[keep]))


def test_inspector_before_infill_plots_the_inputs_of_the_pixel_in_one_request(server, app, flanders_ee):
    """Clear NDVI observations (the local engine's NDVI where its cloud mask is clear) and S1 of
    the app's mission, dates and AOI."""
    from optsar_nb.local import infill as local_infill
    from optsar_nb.params import InfillParams

    _, cubes = flanders_ee
    assert app.infill_result is None
    row, col = PIXEL
    table, trips = click(server, app, *pixel_centre(cubes.grid, row, col))
    assert len(trips) == 1
    assert list(table.columns) == ["observed", "VV", "VH"]
    params = InfillParams(mission="S2", start=START, end=END)
    keep = in_period(cubes.red.time.values)
    ndvi = local_infill.ndvi(cubes.red, cubes.nir).values[keep, row, col].astype("float64")
    clear = local_infill.cloud_mask(cubes.scl, params).values[keep, row, col] == CLEAR
    observed = pd.Series(np.where(clear, ndvi, np.nan), index=pd.DatetimeIndex(cubes.red.time.values[keep]))
    assert 0 < clear.sum() < len(clear)  # the pixel has clear and cloudy dates
    vv, vh = (s1_expected(cubes, band, row, col, params) for band in ("VV", "VH"))
    assert table.index.equals(observed.index.union(vv.index))
    np.testing.assert_array_equal(table.loc[observed.index, "observed"].isna(), observed.isna())
    assert np.nanmax(np.abs(table.loc[observed.index, "observed"] - observed)) <= FLOAT32_ULP_NDVI
    np.testing.assert_array_equal(table.loc[vv.index, "VV"], vv)
    np.testing.assert_array_equal(table.loc[vh.index, "VH"], vh)
    assert table.loc[observed.index, ["VV", "VH"]].isna().all().all()
    assert f"{len(table)} dates" in app.inspector.message.value
    assert app.inspector.marker in app.map.layers

    table, trips = click(server, app, *OUTSIDE)
    assert table is None and len(trips) == 1
    assert "no data at 50.81600 N, 3.03500 E: click inside the AOI" in app.inspector.message.value


def test_inspector_says_when_the_request_fails(server, app, flanders_ee):
    _, cubes = flanders_ee
    calls = []

    def refuse(obj):
        calls.append(obj)
        raise ee.EEException("Computation timed out.")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ee.data, "computeValue", refuse)
        lon, lat = pixel_centre(cubes.grid, *PIXEL)
        app.inspector._handle_interaction(type="click", coordinates=[lat, lon])
    assert len(calls) == 1 and app.inspector.last_table is None
    assert (f"no series at {lonlat_label(lon, lat)}: the request failed (EEException: Computation timed out.)"
            in app.inspector.message.value), app.inspector.message.value


def test_inspector_before_infill_without_an_aoi_says_what_to_do(server):
    from optsar_nb.ui.app import OptsarApp

    app = OptsarApp(engine=EE_ENGINE, start=START, end=END)
    trips = len(server.trips)
    app.inspector._handle_interaction(type="click", coordinates=[50.8160, 3.0240])
    assert app.inspector.last_table is None and len(server.trips) == trips
    assert "no data at 50.81600 N, 3.02400 E: draw an AOI, or run Infill" in app.inspector.message.value
    app.cleanup()


@pytest.fixture(scope="module")
def local_infill_run(flanders_ee, tmp_path_factory):
    """The local engine's infill of the same inputs, AOI and parameters as the app's Infill button."""
    from optsar_nb.aoi import load_aoi
    from optsar_nb.local import infill as local_infill
    from optsar_nb.params import InfillParams

    _, cubes = flanders_ee
    params = InfillParams(mission="S2", start=START, end=END)
    return local_infill.infill(local_infill.ndvi(cubes.red, cubes.nir), local_infill.cloud_mask(cubes.scl, params),
                               cubes.vv, cubes.vh, params, tmp_path_factory.mktemp("local_infill"),
                               aoi=load_aoi(AOI_FILE), report=False)


def test_inspector_after_infill_plots_the_pixels_series_in_one_request(server, infilled, flanders_ee,
                                                                       local_infill_run):
    """Observed, predicted and gap-free NDVI equal the local engine's at the same pixel and pair
    dates; VV and VH equal the S1 inputs. Observations within one float32 ulp (both store
    float32); the prediction and the gap-free NDVI within 1e-4 (measured at this pixel: one
    float32 ulp; the engines round where each other does, see test_ee_infill)."""
    from optsar_nb.local.stack import read_geotiff

    _, cubes = flanders_ee
    app, local = infilled, local_infill_run
    row, col = PIXEL
    lon, lat = pixel_centre(cubes.grid, row, col)
    table, trips = click(server, app, lon, lat)
    assert len(trips) == 1
    assert list(table.columns) == ["observed", "predicted", "gap-free", "VV", "VH"]
    pairs = pd.DatetimeIndex(pd.to_datetime(local.metadata["CollectionTime"].to_numpy(), unit="ms"))
    assert list(pairs.strftime("%Y-%m-%d")) == app.infill_result.dates
    params = app.infill_result.params
    vv, vh = (s1_expected(cubes, band, row, col, params) for band in ("VV", "VH"))
    assert table.index.equals(pairs.union(vv.index))
    for kind, name, tol in (("observed", "NDVI_Obs", FLOAT32_ULP_NDVI), ("predicted", "NDVI_Pred", 1e-4),
                            ("gap-free", "NDVI_gapfree", 1e-4)):
        expected = read_geotiff(local.paths[name]).values[:, row, col].astype("float64")
        ours = table.loc[pairs, kind].to_numpy()
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected), err_msg=kind)
        assert np.nanmax(np.abs(ours - expected)) <= tol, kind
    assert 0 < table["observed"].notna().sum() < len(pairs)  # clear and cloudy dates
    assert table["predicted"].notna().sum() == table["gap-free"].notna().sum() == len(pairs)
    np.testing.assert_array_equal(table.loc[vv.index, "VV"], vv)
    np.testing.assert_array_equal(table.loc[vh.index, "VH"], vh)
    assert f"pixel at {lonlat_label(lon, lat)}: {len(table)} dates" in app.inspector.message.value
    assert tuple(app.inspector.marker.location) == (lat, lon)

    table, trips = click(server, app, *OUTSIDE)
    assert table is None and len(trips) == 1
    assert "no data at 50.81600 N, 3.03500 E: click inside the AOI" in app.inspector.message.value


def test_infill_app_cleanup_takes_the_split_map_and_the_marker_off(infilled):
    app = infilled
    split, marker = app.ndvi.split, app.inspector.marker
    assert split in app.map.controls and marker in app.map.layers
    app.cleanup()
    assert split not in app.map.controls and marker not in app.map.layers and not tile_layers(app)
