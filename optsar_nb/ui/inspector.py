"""Click a pixel, see its time series: NDVI observed / predicted / gap-free and Sentinel-1 VV, VH."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from ._deps import require

NDVI_SERIES = ("observed", "predicted", "gap-free")
S1_SERIES = ("VV", "VH")
SERIES_STYLE = {  # kind -> matplotlib keyword arguments
    "observed": {"marker": "o", "linestyle": "none", "color": "#1a9850", "label": "observed NDVI"},
    "predicted": {"marker": ".", "linestyle": ":", "color": "#7570b3", "label": "predicted NDVI"},
    "gap-free": {"linestyle": "-", "color": "#000000", "label": "gap-free NDVI"},
    "VV": {"linestyle": "-", "color": "#d95f02", "alpha": 0.6, "label": "VV (dB)"},
    "VH": {"linestyle": "-", "color": "#e6ab02", "alpha": 0.6, "label": "VH (dB)"},
}


def lonlat_to_pixel(stack, lon: float, lat: float) -> tuple[int, int] | None:
    """(row, col) of the pixel of a (…, y, x) stack containing ``lon, lat``; None when outside."""
    from pyproj import CRS, Transformer

    crs = stack.attrs.get("crs")
    x, y = (Transformer.from_crs("EPSG:4326", CRS.from_user_input(crs), always_xy=True).transform(lon, lat)
            if crs else (lon, lat))
    xs, ys = stack.x.values, stack.y.values
    col, row = int(np.abs(xs - x).argmin()), int(np.abs(ys - y).argmin())
    half_x = abs(float(xs[1] - xs[0])) / 2 if len(xs) > 1 else np.inf
    half_y = abs(float(ys[1] - ys[0])) / 2 if len(ys) > 1 else np.inf
    if abs(xs[col] - x) > half_x or abs(ys[row] - y) > half_y:
        return None
    return row, col


def lonlat_label(lon: float, lat: float) -> str:
    """``31.32000 S, 148.77000 E`` style position."""
    return f"{abs(lat):.5f} {'N' if lat >= 0 else 'S'}, {abs(lon):.5f} {'E' if lon >= 0 else 'W'}"


def pixel_series(stacks: Mapping[str, object], lon: float, lat: float) -> pd.DataFrame | None:
    """One column per stack (kind -> (time, y, x) DataArray), rows = dates; None outside every grid.

    Stacks on different dates (S1 vs optical) are joined on their dates, so a column is NaN on
    the other stacks' dates.
    """
    columns = {}
    for kind, stack in stacks.items():
        if stack is None:
            continue
        where = lonlat_to_pixel(stack, lon, lat)
        if where is None:
            continue
        row, col = where
        values = np.asarray(stack.isel(y=row, x=col).values, dtype="float64")
        columns[kind] = pd.Series(values, index=pd.DatetimeIndex(stack.time.values), name=kind)
    if not columns:
        return None
    return pd.concat(columns.values(), axis=1, sort=True)


def plot_pixel_series(table: pd.DataFrame, *, title: str = ""):
    """A matplotlib figure: NDVI series on the left axis, VV/VH (dB) on the right (made without
    pyplot: the notebook's backend is left as it is)."""
    from ..plots import new_figure

    fig, ax = new_figure(figsize=(8, 3.2))
    for kind in NDVI_SERIES:
        if kind in table:
            series = table[kind].dropna()
            ax.plot(series.index, series.values, **SERIES_STYLE[kind])
    ax.set_ylabel("NDVI")
    ax.set_ylim(-0.2, 1.0)
    handles, labels = ax.get_legend_handles_labels()
    if any(k in table for k in S1_SERIES):
        ax2 = ax.twinx()
        for kind in S1_SERIES:
            if kind in table:
                series = table[kind].dropna()
                ax2.plot(series.index, series.values, **SERIES_STYLE[kind])
        ax2.set_ylabel("backscatter (dB)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper left", fontsize=8, ncol=3)
    ax.set_title(title, fontsize=10)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


class PixelInspector:
    """Plots the time series of the pixel clicked on ``host`` into ``output`` (an ipywidgets.Output).

    ``stacks`` returns the current kind -> (time, y, x) stacks (observed, predicted, gap-free NDVI;
    VV, VH), or a server-side source with ``pixel_table(lon, lat)`` and ``hint`` (on Earth
    Engine: :class:`optsar_nb.ee.pixel.PixelSeries`, one request per click); it is a callable so
    that the inspector follows new results without re-wiring.
    """

    def __init__(self, host, stacks: Callable[[], Mapping[str, object]]):
        ipyleaflet = require("ipyleaflet")
        widgets = require("ipywidgets")
        self.host = host
        self.stacks = stacks
        self.output = widgets.Output(layout=widgets.Layout(min_height="40px"))
        self.message = widgets.HTML("<i>Click a pixel on the map to plot its NDVI and Sentinel-1 time series.</i>")
        self.marker = ipyleaflet.CircleMarker(radius=6, color="#000000", fill_opacity=0, name="inspected pixel")
        self.last_table: pd.DataFrame | None = None
        self.last_figure = None
        host.on_interaction(self._handle_interaction)
        self._connected = True

    def _handle_interaction(self, **event) -> None:
        if event.get("type") == "click":
            lat, lon = event["coordinates"]
            self.inspect(lon, lat)

    def inspect(self, lon: float, lat: float) -> pd.DataFrame | None:
        """Plot the series at ``lon, lat`` (degrees); returns the table (None outside the data)."""
        from IPython.display import Image

        from ..plots import png_bytes
        from .aoi_control import message_html

        source = self.stacks()
        where = lonlat_label(lon, lat)
        if hasattr(source, "pixel_table"):  # server-side (Earth Engine): one request
            try:
                table = source.pixel_table(lon, lat)
            except Exception as exc:  # a failed request: say so, keep the map alive
                self.last_table = None
                self.message.value = message_html(f"no series at {where}: the request failed "
                                                  f"({type(exc).__name__}: {exc})", kind="error")
                return None
        else:
            table = pixel_series(source, lon, lat)
        self.last_table = table
        if table is None:
            hint = getattr(source, "hint", "click inside the scene")
            self.message.value = message_html(f"no data at {where}: {hint}", kind="error")
            return None
        self.marker.location = (lat, lon)
        if self.marker not in self.host.layers:
            self.host.add(self.marker)
        self.last_figure = plot_pixel_series(table, title=f"pixel at {lonlat_label(lon, lat)}")
        self.output.outputs = ()  # a PNG: shown as an image whatever the notebook's matplotlib backend
        self.output.append_display_data(Image(data=png_bytes(self.last_figure), format="png"))
        self.message.value = message_html(f"pixel at {lonlat_label(lon, lat)}: {len(table)} dates", kind="ok")
        return table

    def cleanup(self) -> None:
        """Stop listening to map clicks and remove the marker (idempotent)."""
        if self._connected:
            self.host.on_interaction(self._handle_interaction, remove=True)
            self._connected = False
        if self.marker in self.host.layers:
            self.host.remove(self.marker)
