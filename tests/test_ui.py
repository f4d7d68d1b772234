"""The map app and its widgets, driven as a browser would: draw events, uploads, button clicks, map clicks.

ipyleaflet delivers a drawn shape by calling the DrawControl's message handler with a
``draw:created`` event and a GeoJSON feature, and a map click with an ``interaction`` event;
the tests call those handlers the same way and check the AOI, layers, colorbars and messages.
"""

from __future__ import annotations

import base64
import importlib
import io
import json

import numpy as np
import pytest

from optsar_nb import run
from optsar_nb.aoi import load_aoi
from optsar_nb.local.gaps import characterize_gaps, cloud_state
from optsar_nb.local.stack import read_geotiff, read_stack
from optsar_nb.params import GapParams

SUFFIX = "_S2_2021-01-01_2022-01-01"
# inside the demo scene (lon 148.7654 to 148.7739, lat -31.3232 to -31.3159)
RECTANGLE = [[148.7665, -31.3168], [148.7725, -31.3168], [148.7725, -31.3190], [148.7665, -31.3190],
             [148.7665, -31.3168]]
BOWTIE = [[148.7665, -31.3195], [148.7725, -31.3220], [148.7725, -31.3195], [148.7665, -31.3220], [148.7665, -31.3195]]


def feature(ring) -> dict:
    """A feature as Leaflet.draw hands it to ipyleaflet."""
    return {"type": "Feature", "properties": {"style": {"color": "#2166ac"}},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


@pytest.fixture()
def app(demo_dir):
    from optsar_nb.ui.app import OptsarApp

    app = OptsarApp(backend="local", inputs=demo_dir, out_dir="unused")
    yield app
    app.cleanup()


def draw(app, ring, action="created") -> None:
    app.aoi_control.draw._handle_leaflet_event(None, {"event": f"draw:{action}", "geo_json": feature(ring)}, [])


def layer_names(app) -> list[str]:
    return [layer.name for layer in app.map.layers]


def direct_statistics(demo_dir, aoi, tmp_path) -> dict[str, np.ndarray]:
    """Gap statistics of the AOI by a direct call of the local engine, band by band."""
    params = GapParams(mission="S2", start="2021-01-01", end="2022-01-01")
    state = cloud_state(read_stack(demo_dir / f"SCL_Input{SUFFIX}.tif"), params.mask_rule_name)
    paths = characterize_gaps(state, params, tmp_path, aoi=aoi, plot=False)
    stats = read_geotiff(paths["statistics"]).values
    return {name: stats[i] for i, name in enumerate(run.GAP_STATISTIC_NAMES)}


# --------------------------------------------------------------------------------------------
# AOI from the draw control and the upload
def test_drawn_rectangle_sets_the_aoi_and_zooms_to_it(app):
    draw(app, RECTANGLE)
    assert app.aoi is not None and app.aoi.name == "drawn_aoi"
    assert app.aoi.bounds == pytest.approx((148.7665, -31.3190, 148.7725, -31.3168))
    assert "AOI" in layer_names(app)
    assert "set from drawn shape" in app.aoi_control.message.value
    lat, lon = app.map.center
    assert lat == pytest.approx(-31.3179) and lon == pytest.approx(148.7695)
    assert app.map.zoom >= 14


def test_self_intersecting_drawn_polygon_is_refused_with_a_message(app):
    draw(app, RECTANGLE)
    before = app.aoi
    draw(app, BOWTIE)
    message = app.aoi_control.message.value
    assert "drawn shape rejected" in message
    assert "Self-intersection" in message and "crosses itself" in message
    assert "Traceback" not in message
    assert app.aoi is before  # the previous AOI stays in force
    assert layer_names(app).count("AOI") == 1


def test_deleting_a_drawing_keeps_the_aoi(app):
    draw(app, RECTANGLE)
    draw(app, RECTANGLE, action="deleted")
    assert app.aoi is not None


def test_geojson_upload_sets_the_aoi_and_a_bad_file_is_explained(app):
    content = json.dumps({"type": "FeatureCollection", "features": [feature(RECTANGLE)]}).encode()
    app.aoi_control._handle_upload({"new": ({"name": "fields.geojson", "content": memoryview(content)},)})
    assert app.aoi.name == "fields"
    app.aoi_control._handle_upload({"new": ({"name": "notes.txt", "content": memoryview(b"hello")},)})
    assert "upload a .geojson" in app.aoi_control.message.value
    app.aoi_control._handle_upload({"new": ({"name": "broken.geojson", "content": memoryview(b"{")},)})
    assert "not valid GeoJSON" in app.aoi_control.message.value
    assert app.aoi.name == "fields"


def test_zipped_shapefile_upload(app, tmp_path):
    import zipfile

    import shapefile

    with shapefile.Writer(str(tmp_path / "field"), shapeType=shapefile.POLYGON) as writer:
        writer.field("name", "C")
        writer.poly([RECTANGLE[::-1]])  # shapefile outer rings run clockwise
        writer.record("field")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for ext in ("shp", "shx", "dbf"):
            archive.write(tmp_path / f"field.{ext}", f"field.{ext}")
    app.aoi_control._handle_upload({"new": ({"name": "field.zip", "content": memoryview(buffer.getvalue())},)})
    assert app.aoi is not None and app.aoi.bounds == pytest.approx((148.7665, -31.3190, 148.7725, -31.3168))


# --------------------------------------------------------------------------------------------
# buttons
def test_gap_statistics_button_shows_layer_colorbar_and_direct_numbers(app, demo_dir, tmp_path):
    draw(app, RECTANGLE)
    app.buttons["gaps"].click()
    assert "gap statistics ready" in app.message.value, app.message.value
    assert "gap_mean (days)" in layer_names(app)
    colorbar = app.stat_layer.colorbar.value
    assert "gap_mean (days)" in colorbar and "linear-gradient" in colorbar
    direct = direct_statistics(demo_dir, load_aoi(feature(RECTANGLE)), tmp_path)
    inside = direct["valid_count"] > 0
    shown = app.stat_layer.values("gap_mean")
    np.testing.assert_allclose(shown[inside], direct["gap_mean"][inside], rtol=1e-6)
    assert np.isnan(shown[~inside]).all()  # outside the AOI nothing is drawn
    style = app.stat_layer.style
    assert style.vmin == pytest.approx(np.nanmin(direct["gap_mean"][inside]))
    assert style.vmax == pytest.approx(np.nanmax(direct["gap_mean"][inside]))

    app.stat_layer.dropdown.value = "clear_fraction"
    assert "clear_fraction (fraction)" in layer_names(app) and "gap_mean (days)" not in layer_names(app)
    assert "clear_fraction (fraction)" in app.stat_layer.colorbar.value
    assert (app.stat_layer.style.vmin, app.stat_layer.style.vmax) == (0.0, 1.0)
    assert "Gap statistics: done" in app.progress.label.value


def test_preview_masks_button_and_time_slider(app):
    draw(app, RECTANGLE)
    app.buttons["preview"].click()
    dates = app.mask_layer.dates
    assert len(dates) == app.gap_result.daily_state.sizes["time"] > 50
    assert f"clear-day mask {dates[0]}" in layer_names(app)
    app.mask_layer.slider.value = 10
    assert f"clear-day mask {dates[10]}" in layer_names(app)
    assert f"clear-day mask {dates[0]}" not in layer_names(app)
    state = app.gap_result.daily_state.isel(time=10).values
    expected = (state == 1).sum() / np.isin(state, (0, 1)).sum()
    assert f"{dates[10]}: {100 * expected:.0f} % clear" in app.mask_layer.legend.value


def test_bad_dates_are_shown_as_a_message(app):
    app.start.value = app.end.value
    app.buttons["gaps"].click()
    assert "not after start date" in app.message.value
    assert "Gap statistics: failed" in app.progress.label.value


def test_export_button_writes_files(demo_dir, tmp_path):
    from optsar_nb.ui.app import OptsarApp

    app = OptsarApp(backend="local", inputs=demo_dir, out_dir=tmp_path)
    draw(app, RECTANGLE)
    app.buttons["export"].click()
    assert (tmp_path / "gaps" / f"Gap_Statistics{SUFFIX}.tif").exists()
    assert "written to" in app.message.value
    app.buttons["export"].click()  # a second export refuses to overwrite, and says how to
    assert "overwrite" in app.message.value
    app.cleanup()


# --------------------------------------------------------------------------------------------
# pixel inspector
def test_clicking_a_pixel_plots_its_ndvi_and_s1_series(app, demo_dir):
    lat, lon = -31.3180, 148.7700
    app.map._handle_leaflet_event(None, {"event": "interaction", "type": "click", "coordinates": [lat, lon]}, [])
    table = app.inspector.last_table
    assert {"observed", "VV", "VH"} <= set(table.columns)
    assert app.inspector.last_figure is not None
    assert "inspected pixel" in layer_names(app)
    vv = read_stack(demo_dir / f"VV_Input{SUFFIX}.tif", demo_dir / f"InputS1_Metadata{SUFFIX}.csv")
    from optsar_nb.ui.inspector import lonlat_to_pixel

    row, col = lonlat_to_pixel(vv, lon, lat)
    expected = vv.isel(y=row, x=col).values
    np.testing.assert_allclose(table["VV"].dropna().values, expected[np.isfinite(expected)], rtol=1e-6)
    app.map._handle_leaflet_event(None, {"event": "interaction", "type": "click", "coordinates": [0.0, 0.0]}, [])
    assert "no data" in app.inspector.message.value


def test_cleanup_removes_everything_the_app_added(app):
    draw(app, RECTANGLE)
    app.buttons["gaps"].click()
    app.cleanup()
    assert [layer.name for layer in app.map.layers] == ["OpenStreetMap.Mapnik"]
    from ipyleaflet import DrawControl, WidgetControl

    assert not any(isinstance(c, (DrawControl, WidgetControl)) for c in app.map.controls)


# --------------------------------------------------------------------------------------------
# layers: arrays to georeferenced PNG overlays
def test_array_overlay_is_georeferenced_and_transparent_where_nan():
    from PIL import Image

    from optsar_nb.ui.layers import LayerStyle, array_to_overlay

    values = np.arange(20 * 30, dtype="float32").reshape(20, 30)
    values[:5, :5] = np.nan
    transform = (10.0, 0.0, 668000.0, 0.0, -10.0, 6534000.0)  # UTM 55S, the demo scene's zone
    url, bounds = array_to_overlay(values, crs="EPSG:32755", transform=transform,
                                   style=LayerStyle("viridis", 0, 599, label="v"))
    assert url.startswith("data:image/png;base64,")
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert image.shape[2] == 4
    assert image[0, 0, 3] == 0 and image[-1, -1, 3] == 255  # NaN corner transparent
    (south, west), (north, east) = bounds
    from pyproj import Transformer

    lon0, lat0 = Transformer.from_crs(32755, 4326, always_xy=True).transform(668000.0, 6534000.0)
    assert west == pytest.approx(lon0, abs=1e-4) and north == pytest.approx(lat0, abs=1e-4)
    assert south < north and west < east


def test_colorbar_and_palette_match_the_statistic_catalogue():
    from optsar_nb.products import STATISTICS_BY_NAME
    from optsar_nb.ui.layers import colorbar_html, palette_hex, statistic_style

    style = statistic_style("gap_max", np.array([5.0, 60.0, np.nan]))
    assert (style.vmin, style.vmax, style.unit) == (5.0, 60.0, "days")
    assert style.palette == STATISTICS_BY_NAME["gap_max"].palette
    html = colorbar_html(style)
    assert "gap_max (days)" in html and ">5<" in html and ">60<" in html
    assert style.vis_params()["palette"][0] == palette_hex("magma_r")[0].lstrip("#")


# --------------------------------------------------------------------------------------------
# engine choice and optional dependencies
def test_auto_backend_is_local_without_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.delenv("EE_SERVICE_ACCOUNT_KEY", raising=False)
    engine = run.resolve_backend("auto")
    assert engine.name == "local" and "no Earth Engine credentials" in str(engine)
    with pytest.raises(run.OptsarError, match="backend='ee' but Earth Engine is not usable"):
        run.resolve_backend("ee")
    with pytest.raises(run.InvalidParameter, match="backend='cloud' is unknown"):
        run.resolve_backend("cloud")


def test_auto_backend_does_not_hang_when_ee_initialize_hangs(monkeypatch, tmp_path):
    import threading
    import time

    import ee

    key = tmp_path / "key.json"
    key.write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    release = threading.Event()
    monkeypatch.setattr(ee, "Initialize", lambda *a, **k: release.wait(30))
    started = time.monotonic()
    engine = run.resolve_backend("auto", timeout_s=0.5)
    release.set()
    assert time.monotonic() - started < 5
    assert engine.name == "local" and "did not answer" in engine.reason


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    from optsar_nb.ui import _deps

    real = importlib.import_module

    def fake_import(name, *args):
        if name.startswith("geemap"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(_deps.importlib, "import_module", fake_import)
    with pytest.raises(_deps.MissingDependency, match=r"optsar_nb\[geemap\]"):
        _deps.require("geemap.ee_tile_layers")


def test_infill_button_shows_ndvi_toggle_and_pixel_series(demo_dir, tmp_path):
    from optsar_nb.ui.app import OptsarApp

    app = OptsarApp(backend="local", inputs=demo_dir, out_dir=tmp_path)
    app.buttons["infill"].click()
    assert "gap-free NDVI ready" in app.message.value, app.message.value
    assert (tmp_path / "infill" / f"NDVI_gapfree{SUFFIX}.tif").exists()
    first = app.ndvi.dates[0]
    assert f"NDVI gap-free {first}" in layer_names(app)
    assert "NDVI gap-free (NDVI)" in app.ndvi.colorbar.value
    app.ndvi.toggle.value = "observed"
    assert f"NDVI observed {first}" in layer_names(app) and f"NDVI gap-free {first}" not in layer_names(app)
    app.ndvi.slider.value = 5
    assert f"NDVI observed {app.ndvi.dates[5]}" in layer_names(app)
    table = app.inspector.inspect(148.7700, -31.3180)
    assert {"observed", "predicted", "gap-free", "VV", "VH"} <= set(table.columns)
    gapfree = read_stack(tmp_path / "infill" / f"NDVI_gapfree{SUFFIX}.tif",
                         tmp_path / "infill" / f"Output_Metadata{SUFFIX}.csv")
    from optsar_nb.ui.inspector import lonlat_to_pixel

    row, col = lonlat_to_pixel(gapfree, 148.7700, -31.3180)
    np.testing.assert_allclose(table["gap-free"].dropna().values,
                               gapfree.isel(y=row, x=col).values[np.isfinite(gapfree.isel(y=row, x=col).values)])
    app.cleanup()
