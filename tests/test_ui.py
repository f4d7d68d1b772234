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
import tempfile
from pathlib import Path

import numpy as np
import pytest

from optsar_nb import run
from optsar_nb.aoi import load_aoi
from optsar_nb.errors import InvalidParameter, OptsarError
from optsar_nb.local.gaps import characterize_gaps, cloud_state
from optsar_nb.local.stack import read_geotiff, read_stack
from optsar_nb.params import GapParams
from optsar_nb.products import GAP_STATISTIC_NAMES

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
    return {name: stats[i] for i, name in enumerate(GAP_STATISTIC_NAMES)}


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
    unpacked = set(Path(tempfile.gettempdir()).glob("optsar_aoi_*"))
    app.aoi_control._handle_upload({"new": ({"name": "field.zip", "content": memoryview(buffer.getvalue())},)})
    assert app.aoi is not None and app.aoi.bounds == pytest.approx((148.7665, -31.3190, 148.7725, -31.3168))
    assert set(Path(tempfile.gettempdir()).glob("optsar_aoi_*")) == unpacked  # the unpacked copy is removed
    app.aoi_control._handle_upload({"new": ({"name": "other.zip", "content": memoryview(b"PK not a zip")},)})
    assert "not a zip archive" in app.aoi_control.message.value and app.aoi.name == "field"


# --------------------------------------------------------------------------------------------
# buttons
def test_gap_statistics_button_shows_layer_colorbar_and_direct_numbers(app, demo_dir, tmp_path):
    draw(app, RECTANGLE)
    app.buttons["gaps"].click()
    assert "gap statistics ready" in app.message.value, app.message.value
    assert "gap_mean (days)" in layer_names(app)
    colorbar = app.stat_layer.legend.value
    assert "gap_mean (days)" in colorbar and "linear-gradient" in colorbar and "stretched" in colorbar
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
    assert "clear_fraction (fraction)" in app.stat_layer.legend.value
    # stretched to the AOI's own range (a fixed 0-1 range made the layer look uniform)
    fractions = direct["clear_fraction"][inside]
    assert (app.stat_layer.style.vmin, app.stat_layer.style.vmax) == pytest.approx((fractions.min(), fractions.max()))
    assert fractions.max() - fractions.min() < 0.5
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
    written = tmp_path / "gaps" / f"Gap_Statistics{SUFFIX}.tif"
    assert written.exists()
    assert f"written to {tmp_path / 'gaps'}: " in app.message.value  # the folder the files are in
    app.buttons["export"].click()  # pressing it again replaces the app's own earlier outputs
    assert f"written to {tmp_path / 'gaps'}" in app.message.value, app.message.value
    written.write_bytes(b"changed by the user")  # no longer the app's output: refused, pointing to the checkbox
    app.buttons["export"].click()
    assert "tick &#x27;overwrite outputs&#x27;" in app.message.value and "overwrite=True" not in app.message.value
    assert written.read_bytes() == b"changed by the user"
    app.overwrite.value = True
    app.buttons["export"].click()
    assert "written to" in app.message.value and written.read_bytes() != b"changed by the user"
    app.cleanup()


def test_an_old_error_does_not_stay_beside_a_later_result(app):
    app.aoi_control._handle_upload({"new": ({"name": "notes.txt", "content": memoryview(b"hello")},)})
    app.map._handle_leaflet_event(None, {"event": "interaction", "type": "click", "coordinates": [0.0, 0.0]}, [])
    assert "optsar-error" in app.aoi_control.message.value and "optsar-error" in app.inspector.message.value
    draw(app, RECTANGLE)
    app.buttons["gaps"].click()
    assert "gap statistics ready" in app.message.value
    assert "optsar-error" not in app.aoi_control.message.value + app.inspector.message.value


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


def test_one_data_layer_at_a_time_with_its_legend_only(app):
    from ipyleaflet import ImageOverlay

    def overlays():
        return [layer.name for layer in app.map.layers if isinstance(layer, ImageOverlay)]

    assert app.layers.widget.layout.display == "none" and app.mask_controls.layout.display == "none"
    draw(app, RECTANGLE)
    app.buttons["gaps"].click()  # the masks and the statistics: the statistic (last given) is shown
    assert overlays() == ["gap_mean (days)"]
    assert app.layers.legend_box.children == (app.stat_layer.legend,)
    assert "gap_mean (days)" in app.layers.status.value
    assert list(app.layers.choice.options) == ["clear-day mask", "gap statistic"]
    assert app.layers.choice.layout.display == "flex"  # two groups to choose from
    app.layers.choice.value = "clear-day mask"
    dates = app.mask_layer.dates
    assert overlays() == [f"clear-day mask {dates[0]}"]
    assert app.layers.legend_box.children == (app.mask_layer.legend,)
    app.mask_layer.slider.value = 3  # the group touched stays the one shown
    assert overlays() == [f"clear-day mask {dates[3]}"]
    app.stat_layer.dropdown.value = "gap_max"  # picking a statistic brings the statistics back
    assert overlays() == ["gap_max (days)"] and app.layers.choice.value == "gap statistic"
    app.layers.opacity_slider.value = 0.4
    assert [layer.opacity for layer in app.map.layers if isinstance(layer, ImageOverlay)] == [0.4]
    app.layers.choice.value = "clear-day mask"
    assert [layer.opacity for layer in app.map.layers if isinstance(layer, ImageOverlay)] == [0.4]


def test_the_map_opens_on_the_data(app, demo_dir):
    """Without an AOI the map opens on the input scene, not on the whole world at (0, 0)."""
    import json as _json

    ring = _json.loads((demo_dir / "aoi.geojson").read_text())
    scene = load_aoi(ring)
    lat, lon = app.map.center
    west, south, east, north = scene.bounds
    assert south - 0.01 < lat < north + 0.01 and west - 0.01 < lon < east + 0.01
    assert app.map.zoom >= 13


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_basemap_tiles_when_reachable_else_a_neutral_background_that_says_so(monkeypatch):
    """Offline there are no tiles: the basemap layer goes, the map gets a neutral background
    and says "basemap offline"; with a tile server answering, the basemap stays."""
    import http.server
    import threading

    from optsar_nb.ui import app as app_module

    class Tiles(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # a server that refuses anonymous clients still proves the network
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Tiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert app_module.tiles_reachable(f"http://127.0.0.1:{server.server_port}/{{z}}/{{x}}/{{y}}.png")
    finally:
        server.shutdown()
        server.server_close()
    # a port nothing listens on (the server's, now closed), and a name that does not resolve
    assert not app_module.tiles_reachable(f"http://127.0.0.1:{server.server_port}/{{z}}/{{x}}/{{y}}.png", 1.5)
    assert not app_module.tiles_reachable("http://tiles.invalid/{z}/{x}/{y}.png")

    engine = run.resolve_backend("local")
    for reachable in (False, True):
        monkeypatch.setattr(app_module, "tiles_reachable", lambda url, reachable=reachable: reachable)
        host = app_module.make_map(engine)
        notes = [c.widget.value for c in host.controls if hasattr(c, "widget") and hasattr(c.widget, "value")]
        has_basemap = any(getattr(layer, "base", False) for layer in host.layers)
        assert has_basemap is reachable
        assert ("optsar-basemap-offline" in host._dom_classes) is not reachable
        assert any("basemap offline" in note for note in notes) is not reachable


def test_figures_leave_the_notebooks_matplotlib_backend_alone(app, tmp_path):
    """Writing a PNG (panel, report) once switched the kernel to Agg, after which a clicked pixel's
    figure showed as text ("<Figure size 800x320 with 2 Axes>") instead of a picture."""
    import matplotlib

    from optsar_nb.plots import gap_panel

    before = matplotlib.get_backend()
    matplotlib.use("module://matplotlib_inline.backend_inline")
    try:
        draw(app, RECTANGLE)
        app.buttons["gaps"].click()
        gap_panel(app.gap_result.statistics, tmp_path / "panel.png")
        assert matplotlib.get_backend() == "module://matplotlib_inline.backend_inline"
        app.inspector.inspect(148.7700, -31.3180)
        assert matplotlib.get_backend() == "module://matplotlib_inline.backend_inline"
        shown = app.inspector.output.outputs
        assert len(shown) == 1 and "image/png" in shown[0]["data"]
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []  # no figure left open in pyplot either
    finally:
        matplotlib.use(before)


def test_cleanup_removes_everything_the_app_added(app):
    draw(app, RECTANGLE)
    app.buttons["gaps"].click()
    app.cleanup()
    from optsar_nb.ui.app import make_map

    bare = make_map(app.engine)  # the basemap (or the offline note), zoom, scale and layer list
    assert [layer.name for layer in app.map.layers] == [layer.name for layer in bare.layers]
    assert [type(c) for c in app.map.controls] == [type(c) for c in bare.controls]


# --------------------------------------------------------------------------------------------
# layers: arrays to georeferenced PNG overlays
def test_array_overlay_is_georeferenced_and_transparent_where_nan():
    from PIL import Image

    from optsar_nb.ui.layers import LayerStyle, array_to_overlay, to_lonlat_grid

    values = np.arange(20 * 30, dtype="float32").reshape(20, 30)
    values[:5, :5] = np.nan
    transform = (10.0, 0.0, 668000.0, 0.0, -10.0, 6534000.0)  # UTM 55S, the demo scene's zone
    url, bounds = array_to_overlay(values, crs="EPSG:32755", transform=transform,
                                   style=LayerStyle("viridis", 0, 599, label="v"))
    assert url.startswith("data:image/png;base64,")
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert image.shape[2] == 4
    assert image[0, 0, 3] == 0 and image[-1, -1, 3] == 255  # NaN corner transparent
    # pixels are drawn as k x k blocks of one colour (crisp squares when the browser enlarges them)
    warped, _ = to_lonlat_grid(values, crs="EPSG:32755", transform=transform)
    k = image.shape[0] // warped.shape[0]
    assert k > 1 and image.shape[:2] == (k * warped.shape[0], k * warped.shape[1])
    blocks = image.reshape(warped.shape[0], k, warped.shape[1], k, 4)
    assert (blocks == blocks[:, :1, :, :1]).all()
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
    with pytest.raises(OptsarError, match="backend='ee' but Earth Engine is not usable"):
        run.resolve_backend("ee")
    with pytest.raises(InvalidParameter, match="backend='cloud' is unknown"):
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
    # one group with data: no Show buttons to choose from, the opacity slider stays
    assert app.layers.widget.layout.display == "flex" and app.layers.choice.layout.display == "none"
    assert "NDVI gap-free (NDVI)" in app.ndvi.legend.value
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
