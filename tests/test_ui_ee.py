"""The map app on the Earth Engine engine, offline: a geemap Map with Earth Engine tile layers.

The app is built with the engine forced to Earth Engine under the offline client
(tests/ee_support). Adding an Earth Engine layer makes geemap ask the server for a map id
(``ee.Image.getMapId`` -> ``ee.data.getMapId``); that one function is replaced by a recorder that
answers with a fake tile URL, so the tests see exactly which image and visualization parameters
each layer shows. ``getInfo`` round trips are answered by the numpy evaluator over the real
Flanders cubes, and layer images are evaluated the same way and compared with the local engine.
"""

from __future__ import annotations

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
from optsar_nb.params import GapParams
from optsar_nb.products import STATISTICS_BY_NAME
from optsar_nb.ui.layers import MASK_COLORS, colorbar_html, ndvi_style, palette_hex, statistic_style

AOI_FILE = Path(__file__).resolve().parents[1] / "data" / "test_aois" / "flanders_patch.geojson"
START, END = "2017-08-01", "2018-11-30"
SUFFIX = f"_S2_{START}_{END}"
EE_ENGINE = run.Engine("ee", "forced for the offline tests")


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
        assert app.stat_layer.colorbar.value == colorbar_html(expected)
        assert tile_layers(app)[name].url == url
        np.testing.assert_array_max_ulp(band_array(server.evaluator.evaluate(image), name).astype("float32"),
                                        values, maxulp=1)
    assert (vis["min"], vis["max"]) == (0.0, 1.0)  # clear_fraction: a fixed range
    app.stat_layer.dropdown.value = "gap_max"
    assert server.map_ids.layer()[1]["min"] == 27.0 and server.map_ids.layer()[1]["max"] == 236.0
    assert "gap_max (days)" in app.stat_layer.colorbar.value and ">236<" in app.stat_layer.colorbar.value
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


def test_infill_button_shows_a_split_map_and_the_inspector_does_not_fail(server):
    app, seen = export_app({})
    app.buttons["infill"].click()
    assert "gap-free NDVI ready" in app.message.value, app.message.value
    result = app.infill_result
    names = [f"{n}{SUFFIX}" for n in ("NDVI_gapfree", "NDVI_Mask", "NDVI_Pred", "NDVI_Obs", "NDVI_gapfree_SE",
                                      "Output_Metadata")]
    assert app.progress.tasks == dict.fromkeys(names, "COMPLETED")  # the infill export's tasks are shown too
    assert app.ndvi.dates == result.dates and len(app.ndvi.dates) == 118
    assert app.ndvi.colorbar.value == colorbar_html(ndvi_style("NDVI gap-free"))
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
    # a click on the map: Earth Engine results have no local series to plot, and nothing raises
    trips = len(server.trips)
    app.inspector._handle_interaction(type="click", coordinates=[50.8160, 3.0240])
    assert app.inspector.last_table is None and "no data at 50.81600 N, 3.02400 E" in app.inspector.message.value
    assert len(server.trips) == trips
    split = app.ndvi.split
    app.cleanup()
    assert split not in app.map.controls and not tile_layers(app)
