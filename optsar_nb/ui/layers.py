"""Palettes, colorbars, legends and array -> image overlays for the map widgets.

Local results are (y, x) arrays on a projected grid. :func:`array_to_overlay` warps one to
EPSG:4326, colours it with a matplotlib palette (NaN transparent) and returns a PNG data URL
with its ``[[south, west], [north, east]]`` bounds, which is what ``ipyleaflet.ImageOverlay``
takes. The same palettes feed Earth Engine ``vis_params`` (:func:`palette_hex`), so a statistic
looks the same on both engines.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np

from ..products import STATISTICS_BY_NAME

Bounds = list  # [[south, west], [north, east]] in degrees, as ipyleaflet wants

# NDVI layers share one fixed range so that observed and gap-free images compare by eye.
NDVI_STYLE = ("RdYlGn", -0.2, 1.0)
# Clear-day mask: pixel states of optsar_nb.missions (MISSING -1 is left transparent).
MASK_COLORS = {"clear": "#1a9850", "cloudy": "#8c8c8c"}  # cloudy: darker than a blank map


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def palette_hex(name: str, n: int = 9) -> list[str]:
    """``n`` evenly spaced colours of a matplotlib colormap as ``#rrggbb`` strings."""
    from matplotlib.colors import to_hex

    cmap = _colormap(name)
    return [to_hex(cmap(i / max(n - 1, 1))) for i in range(n)]


@dataclass(frozen=True)
class LayerStyle:
    """How one layer is drawn: palette, value range and the label of its colorbar."""

    palette: str
    vmin: float
    vmax: float
    label: str
    unit: str = ""
    note: str = ""  # a line under the colorbar's title, e.g. how the range was chosen

    def vis_params(self) -> dict:
        """Earth Engine visualization parameters with the same palette and range."""
        return {"min": self.vmin, "max": self.vmax, "palette": [c.lstrip("#") for c in palette_hex(self.palette)]}


def value_range(values: np.ndarray, *, robust: bool = False) -> tuple[float, float]:
    """(min, max) of the finite values (2nd-98th percentiles if ``robust``); (0, 1) if none."""
    finite = np.asarray(values, dtype="float64")
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (np.percentile(finite, [2, 98]) if robust else (finite.min(), finite.max()))
    low, high = float(low), float(high)
    if high <= low:
        high = low + 1.0
    return low, high


def statistic_style(name: str, values: np.ndarray | None = None) -> LayerStyle:
    """The style of a gap statistic band: its palette and unit from ``optsar_nb.products``, its
    colours stretched from the lowest to the highest of ``values`` (the shown area's), so that
    differences within an area show even when they are small (a clear fraction of 0.55 to 0.65)."""
    info = STATISTICS_BY_NAME.get(name)
    palette, unit = (info.palette, info.unit) if info else ("viridis", "")
    if values is None:
        return LayerStyle(palette=palette, vmin=0.0, vmax=1.0, label=name, unit=unit)
    vmin, vmax = value_range(values)
    return LayerStyle(palette=palette, vmin=vmin, vmax=vmax, label=name, unit=unit,
                      note="colours stretched from this area's lowest to its highest value")


def ndvi_style(label: str = "NDVI") -> LayerStyle:
    palette, vmin, vmax = NDVI_STYLE
    return LayerStyle(palette=palette, vmin=vmin, vmax=vmax, label=label, unit="NDVI")


# --------------------------------------------------------------------------------------------
# arrays -> PNG
def colorize(values: np.ndarray, style: LayerStyle) -> np.ndarray:
    """RGBA uint8 image of a (y, x) array; NaN is fully transparent."""
    values = np.asarray(values, dtype="float64")
    scaled = (values - style.vmin) / (style.vmax - style.vmin)
    rgba = _colormap(style.palette)(np.clip(np.nan_to_num(scaled), 0, 1), bytes=True)
    rgba[..., 3] = np.where(np.isfinite(values), 255, 0)
    return rgba


def categorical_rgba(codes: np.ndarray, colors: dict[int, str]) -> np.ndarray:
    """RGBA uint8 image of an integer array; codes without a colour are transparent."""
    from matplotlib.colors import to_rgba

    codes = np.asarray(codes)
    rgba = np.zeros((*codes.shape, 4), dtype="uint8")
    for code, color in colors.items():
        rgba[codes == code] = np.round(np.array(to_rgba(color)) * 255).astype("uint8")
    return rgba


def png_data_url(rgba: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URL of an RGBA uint8 image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), mode="RGBA").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_lonlat_grid(values: np.ndarray, *, crs, transform, nearest: bool = True) -> tuple[np.ndarray, Bounds]:
    """Warp a (y, x) array from its grid to a north-up EPSG:4326 grid of about the same size.

    Returns the warped float array (NaN where no source pixel falls) and its bounds
    ``[[south, west], [north, east]]``. Nearest neighbour keeps categorical codes intact.
    """
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    values = np.asarray(values, dtype="float32")
    height, width = values.shape
    src_crs = CRS.from_user_input(crs) if crs else CRS.from_epsg(4326)
    src_transform = Affine(*transform[:6])
    west, north = src_transform @ (0, 0)
    east, south = src_transform @ (width, height)
    dst_transform, dst_w, dst_h = calculate_default_transform(
        src_crs, "EPSG:4326", width, height, left=min(west, east), bottom=min(south, north),
        right=max(west, east), top=max(south, north),
    )
    out = np.full((dst_h, dst_w), np.nan, dtype="float32")
    reproject(
        values, out, src_transform=src_transform, src_crs=src_crs, src_nodata=np.nan,
        dst_transform=dst_transform, dst_crs="EPSG:4326", dst_nodata=np.nan,
        resampling=Resampling.nearest if nearest else Resampling.bilinear,
    )
    lon0, lat0 = dst_transform @ (0, 0)
    lon1, lat1 = dst_transform @ (dst_w, dst_h)
    return out, [[min(lat0, lat1), min(lon0, lon1)], [max(lat0, lat1), max(lon0, lon1)]]


def array_to_overlay(values, *, crs, transform, style: LayerStyle | None = None,
                     colors: dict[int, str] | None = None) -> tuple[str, Bounds]:
    """A (y, x) array -> (PNG data URL, EPSG:4326 bounds) for ``ipyleaflet.ImageOverlay``.

    Give ``style`` for continuous values or ``colors`` (code -> colour) for categories.
    """
    warped, bounds = to_lonlat_grid(values, crs=crs, transform=transform)
    if colors is not None:
        codes = np.where(np.isfinite(warped), warped, -9999).astype("int64")
        rgba = categorical_rgba(codes, colors)
    else:
        rgba = colorize(warped, style or LayerStyle("viridis", *value_range(warped), label=""))
    return png_data_url(blocky(rgba)), bounds


def blocky(rgba: np.ndarray, *, target_px: int = 1024, max_factor: int = 16) -> np.ndarray:
    """Each pixel repeated into a k x k block (k up to ``max_factor``, the image up to about
    ``target_px`` wide): browsers smooth an image they enlarge, and a small scene seen at a high
    zoom would otherwise show blurred pixels instead of crisp squares."""
    k = max(1, min(max_factor, target_px // max(rgba.shape[:2])))
    return np.repeat(np.repeat(rgba, k, axis=0), k, axis=1) if k > 1 else rgba


def image_overlay(values, *, crs, transform, name: str, style: LayerStyle | None = None,
                  colors: dict[int, str] | None = None, opacity: float = 0.85):
    """An ``ipyleaflet.ImageOverlay`` of a local (y, x) array."""
    from ._deps import require

    ipyleaflet = require("ipyleaflet")
    url, bounds = array_to_overlay(values, crs=crs, transform=transform, style=style, colors=colors)
    return ipyleaflet.ImageOverlay(url=url, bounds=bounds, name=name, opacity=opacity)


# --------------------------------------------------------------------------------------------
# colorbars and legends (HTML, so they render the same in Jupyter, VS Code and exported HTML)
def _tick_format(vmin: float, vmax: float) -> str:
    span = abs(vmax - vmin)
    return ".2f" if span < 5 else ".0f" if span >= 50 or float(vmin).is_integer() else ".1f"


def colorbar_html(style: LayerStyle, *, ticks: int = 5, width_px: int = 220) -> str:
    """A horizontal colorbar: CSS gradient of the palette, tick values and ``label (unit)``."""
    stops = ", ".join(palette_hex(style.palette, 11))
    fmt = _tick_format(style.vmin, style.vmax)
    values = np.linspace(style.vmin, style.vmax, ticks)
    tick_cells = "".join(
        f'<span style="position:absolute;left:{100 * i / (ticks - 1):.1f}%;transform:translateX(-50%)">'
        f"{format(v, fmt)}</span>"
        for i, v in enumerate(values)
    )
    title = f"{style.label} ({style.unit})" if style.unit else style.label
    note = f'<div style="color:#555">{style.note}</div>' if style.note else ""
    return (
        f'<div class="optsar-colorbar" style="width:{width_px}px;font:11px sans-serif;padding:4px 16px 2px 10px">'
        f'<div style="font-weight:bold">{title}</div>{note}'
        f'<div style="height:12px;background:linear-gradient(to right, {stops});border:1px solid #777"></div>'
        f'<div style="position:relative;height:14px">{tick_cells}</div></div>'
    )


def legend_html(title: str, entries: dict[str, str]) -> str:
    """A categorical legend: a colour swatch per label."""
    rows = "".join(
        f'<div><span style="display:inline-block;width:12px;height:12px;background:{color};'
        f'border:1px solid #777;margin-right:4px"></span>{label}</div>'
        for label, color in entries.items()
    )
    return f'<div class="optsar-legend" style="font:11px sans-serif;padding:4px 8px"><b>{title}</b>{rows}</div>'


def lonlat_bounds(crs, transform, height: int, width: int) -> Bounds:
    """``[[south, west], [north, east]]`` in degrees of a grid of ``height`` x ``width`` pixels."""
    from rasterio.transform import Affine
    from rasterio.warp import transform_bounds

    t = Affine(*transform[:6])
    x0, y0 = t @ (0, 0)
    x1, y1 = t @ (width, height)
    west, south, east, north = transform_bounds(crs or "EPSG:4326", "EPSG:4326", min(x0, x1), min(y0, y1),
                                                max(x0, x1), max(y0, y1))
    return [[south, west], [north, east]]


def nice_bounds_center(bounds: Bounds) -> tuple[list[float], int]:
    """Map centre and a zoom level that shows ``bounds`` whole on a ~600 px wide map."""
    (south, west), (north, east) = bounds
    span = max(north - south, east - west, 1e-6)
    zoom = int(max(2, min(18, math.floor(math.log2(360 * 2 / span)))))
    return [(south + north) / 2, (west + east) / 2], zoom
