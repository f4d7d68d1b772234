"""Setting the AOI on the map: a draw control (rectangle, polygon) and a GeoJSON/shapefile upload.

Every geometry goes through :func:`optsar_nb.aoi.load_aoi`; a rejected one is explained in the
control's message panel (never as a traceback) and the previous AOI stays in force.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..aoi import AOI, load_aoi, read_shapefile
from ..errors import OptsarError
from ._deps import require
from .layers import nice_bounds_center

AOI_STYLE = {"color": "#2166ac", "weight": 2, "fillOpacity": 0.05}
DRAW_SHAPE = {"shapeOptions": {"color": "#2166ac", "weight": 2, "fillOpacity": 0.05}}


def message_html(text: str, *, kind: str = "info") -> str:
    """A one-line coloured message for the app's panels (kind: info, ok, error)."""
    import html

    color = {"error": "#b2182b", "ok": "#1a7837", "info": "#333333"}.get(kind, "#333333")
    icon = {"error": "&#9888; ", "ok": "&#10003; "}.get(kind, "")
    return (f'<div class="optsar-message optsar-{kind}" style="color:{color};font:13px sans-serif;'
            f'white-space:normal">{icon}{html.escape(text)}</div>')


def clear_error(panel) -> None:
    """Empty a message panel (an ipywidgets.HTML) that shows an error: a later action supersedes it."""
    if "optsar-error" in panel.value:
        panel.value = ""


def geojson_from_upload(name: str, content: bytes) -> dict:
    """The AOI of an uploaded file as GeoJSON: the file's text, or a zipped shapefile read (and its
    unpacked copy removed: nothing is left in the temporary folder)."""
    suffix = Path(name).suffix.lower()
    if suffix in (".geojson", ".json"):
        try:
            return json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OptsarError(f"{name} is not valid GeoJSON ({exc})") from None
    if suffix == ".zip":
        with tempfile.TemporaryDirectory(prefix="optsar_aoi_") as folder:
            try:
                with zipfile.ZipFile(io.BytesIO(content)) as archive:
                    archive.extractall(folder)
            except zipfile.BadZipFile as exc:
                raise OptsarError(f"{name} is not a zip archive ({exc}): zip the shapefile's files") from None
            shapefiles = sorted(Path(folder).rglob("*.shp"))
            if not shapefiles:
                raise OptsarError(f"{name} holds no .shp file: zip the .shp with its .shx, .dbf and .prj")
            return read_shapefile(shapefiles[0])
    raise OptsarError(f"{name}: upload a .geojson/.json file or a .zip of a shapefile (.shp, .shx, .dbf, .prj)")


class AOIControl:
    """Draw or upload an AOI on ``host`` (an ipyleaflet or geemap Map).

    ``on_change(aoi)`` is called with each accepted :class:`~optsar_nb.aoi.AOI`. The accepted AOI
    is drawn as a GeoJSON layer named "AOI"; ``message`` (an ipywidgets.HTML) says what happened.
    """

    def __init__(self, host, *, on_change: Callable[[AOI], None] | None = None, max_area_km2: float | None = None):
        ipyleaflet = require("ipyleaflet")
        widgets = require("ipywidgets")
        self.host = host
        self.on_change = on_change
        self.max_area_km2 = max_area_km2
        self.aoi: AOI | None = None
        self.layer = None
        self.draw = ipyleaflet.DrawControl(
            rectangle=DRAW_SHAPE, polygon=DRAW_SHAPE, polyline={}, circlemarker={}, circle={}, marker={},
            position="topleft",
        )
        self.draw.on_draw(self._handle_draw)
        host.add(self.draw)
        self.upload = widgets.FileUpload(accept=".geojson,.json,.zip", multiple=False,
                                         description="AOI file", tooltip="GeoJSON or zipped shapefile")
        self.upload.observe(self._handle_upload, names="value")
        self._connected = True
        self.message = widgets.HTML(message_html("Draw a rectangle or polygon, or upload a GeoJSON/zipped shapefile."))

    # event handlers -------------------------------------------------------------------------
    def _handle_draw(self, control, action: str, geo_json: dict) -> None:
        """ipyleaflet's draw callback: ``action`` is "created", "edited" or "deleted"."""
        if action == "deleted":
            return
        self.set_aoi(geo_json, origin="drawn shape", name="drawn_aoi")

    def _handle_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        item = files[0]
        name = item["name"] if isinstance(item, dict) else item.name
        content = bytes(item["content"] if isinstance(item, dict) else item.content)
        try:
            source = geojson_from_upload(name, content)
        except OptsarError as exc:
            self.show_error(str(exc))
            return
        self.set_aoi(source, origin=name, name=Path(name).stem)

    # public ---------------------------------------------------------------------------------
    def set_aoi(self, geometry, *, origin: str = "AOI", name: str | None = None) -> AOI | None:
        """Validate ``geometry`` (any load_aoi source) and make it the AOI.

        On failure the reason is shown in ``message`` and the previous AOI stays. ``origin``
        says where the geometry came from (drawn shape, file name) in the messages.
        """
        try:
            aoi = load_aoi(geometry, name=name, max_area_km2=self.max_area_km2)
        except OptsarError as exc:
            self.show_error(f"{origin} rejected: {exc}")
            return None
        except Exception as exc:  # malformed input from a browser or file: explain, don't raise
            self.show_error(f"{origin} could not be read: {exc}")
            return None
        self.aoi = aoi
        self._draw_layer(aoi)
        self.message.value = message_html(
            f"AOI '{aoi.name}' set from {origin}: {aoi.area_km2:,.2f} km2", kind="ok"
        )
        if self.on_change is not None:
            self.on_change(aoi)
        return aoi

    def show_error(self, text: str) -> None:
        self.message.value = message_html(text, kind="error")

    def clear_error(self) -> None:
        clear_error(self.message)

    def _draw_layer(self, aoi: AOI) -> None:
        ipyleaflet = require("ipyleaflet")
        if self.layer is not None and self.layer in self.host.layers:
            self.host.remove(self.layer)
        self.layer = ipyleaflet.GeoJSON(data=aoi.to_geojson(), name="AOI", style=AOI_STYLE)
        self.host.add(self.layer)
        self.draw.clear()
        west, south, east, north = aoi.bounds
        self.host.center, self.host.zoom = nice_bounds_center([[south, west], [north, east]])

    def cleanup(self) -> None:
        """Remove the draw control, the AOI layer and the callbacks from the host map (idempotent)."""
        if self._connected:
            self.draw.on_draw(self._handle_draw, remove=True)
            self.upload.unobserve(self._handle_upload, names="value")
            self._connected = False
        for item in (self.draw, self.layer):
            if item is not None and (item in self.host.controls or item in self.host.layers):
                self.host.remove(item)
        self.layer = None
