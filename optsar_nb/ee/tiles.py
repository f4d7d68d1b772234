"""Tiles of an export on the optical native grid.

An image whose AOI window is over a size limit is exported (or downloaded) as tiles aligned to
the grid's pixels, and downloaded tiles are mosaicked locally into one GeoTIFF. The limits: the
seed's 100 km x 100 km per export (1e8 pixels at 10 m), and for a local download Earth Engine's
48 MiB per request.

Only the export is tiled: every tile's task computes the same image, whose AOI-wide statistics
(AOI means, PCA, standardization) are reduced over the whole AOI, not over the tile, so tiling
changes no number; it only splits where the pixels are written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import OptsarError, WriteFailed

# The seed: AOIs over 100 km x 100 km are tiled; at 10 m that is 1e8 pixels per image.
MAX_TILE_PIXELS = 10_000 * 10_000


@dataclass(frozen=True)
class Window:
    """A block of pixels of a grid: offset (``col``, ``row``) from the grid's origin and size."""

    col: int
    row: int
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def transform(self, grid: dict) -> list[float]:
        """The affine transform (6 numbers, GDAL order a, b, c, d, e, f) of the window's origin."""
        a, b, c, d, e, f = grid["transform"][:6]
        return [a, b, c + self.col * a + self.row * b, d, e, f + self.col * d + self.row * e]

    def grown(self, pixels: int) -> Window:
        """The window with ``pixels`` more on each side."""
        return Window(self.col - pixels, self.row - pixels, self.width + 2 * pixels, self.height + 2 * pixels)

    def bounds(self, grid: dict) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in the grid's coordinate system."""
        a, _, c, _, e, f = self.transform(grid)
        xs, ys = (c, c + self.width * a), (f, f + self.height * e)
        return min(xs), min(ys), max(xs), max(ys)


def _north_up(grid: dict) -> tuple[float, float, float, float]:
    a, b, c, d, e, f = grid["transform"][:6]
    if b != 0 or d != 0 or a <= 0 or e >= 0:
        raise OptsarError(f"the export grid {grid['transform']} is not north-up: tiling needs a grid without "
                          "rotation (every optical catalogue band has one)")
    return a, c, e, f


def aoi_window(aoi, grid: dict) -> Window:
    """The pixels of ``grid`` that the AOI's bounding box touches (``aoi``: an AOI in degrees)."""
    from pyproj import Transformer

    a, c, e, f = _north_up(grid)
    west, south, east, north = aoi.bounds
    xmin, ymin, xmax, ymax = Transformer.from_crs("EPSG:4326", grid["crs"], always_xy=True).transform_bounds(
        west, south, east, north, densify_pts=21)
    col0, col1 = math.floor((xmin - c) / a), math.ceil((xmax - c) / a)
    row0, row1 = math.floor((ymax - f) / e), math.ceil((ymin - f) / e)
    return Window(col0, row0, col1 - col0, row1 - row0)


def split(window: Window, max_pixels: int) -> list[tuple[str, Window]]:
    """The window in square tiles of at most ``max_pixels`` (the last row and column smaller),
    each with its name suffix ``_r<row>c<col>``; the window itself (suffix "") when it fits."""
    if window.pixels <= max_pixels:
        return [("", window)]
    side = math.isqrt(max_pixels)
    if side < 1:
        raise OptsarError(f"a tile of at most {max_pixels} pixels is less than one pixel")
    out = []
    for i, row in enumerate(range(0, window.height, side)):
        for j, col in enumerate(range(0, window.width, side)):
            out.append((f"_r{i:02d}c{j:02d}", Window(window.col + col, window.row + row,
                                                     min(side, window.width - col), min(side, window.height - row))))
    return out


def tile_grid(grid: dict, tile: Window) -> dict:
    """The export grid of one tile: the grid's crs, the tile's transform and size."""
    return {"crs": grid["crs"], "transform": tile.transform(grid), "width": tile.width, "height": tile.height}


def tile_region(grid: dict, tile: Window):
    """The tile as an ``ee.Geometry`` rectangle in the grid's coordinate system (planar)."""
    import ee

    xmin, ymin, xmax, ymax = tile.bounds(grid)
    return ee.Geometry.Rectangle([xmin, ymin, xmax, ymax], proj=grid["crs"], geodesic=False)


def mosaic(tiles: list[tuple[Window, Path]], window: Window, grid: dict, path: Path) -> Path:
    """One GeoTIFF of ``window`` from downloaded tile GeoTIFFs (each of its tile's size), written
    atomically; a tile of another size or band count is refused naming it."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window as RasterWindow

    from ..outputs import atomic_path, verify_geotiff

    with rasterio.open(tiles[0][1]) as first:
        profile = {"driver": "GTiff", "count": first.count, "dtype": first.dtypes[0], "nodata": first.nodata}
        descriptions = first.descriptions
    profile.update(width=window.width, height=window.height, crs=grid["crs"],
                   transform=Affine(*window.transform(grid)), tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate")
    with atomic_path(path, overwrite=True) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            if any(descriptions):
                dst.descriptions = descriptions
            for tile, tile_path in tiles:  # the tiles cover the window (split): every block is written
                with rasterio.open(tile_path) as src:
                    if (src.width, src.height, src.count) != (tile.width, tile.height, profile["count"]):
                        raise WriteFailed(f"downloaded tile {tile_path.name} is {src.width} x {src.height} x "
                                          f"{src.count}, not {tile.width} x {tile.height} x {profile['count']}")
                    dst.write(src.read(), window=RasterWindow(tile.col - window.col, tile.row - window.row,
                                                              tile.width, tile.height))
        verify_geotiff(tmp, count=profile["count"], height=window.height, width=window.width,
                       dtype=profile["dtype"], label=path)
    return path
