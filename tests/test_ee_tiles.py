"""Exports of large AOIs in tiles aligned to the native grid, and the local mosaic of downloads.

Graph-level: how many tiles the published case 3 extent and the seed's 100 km x 100 km limit
give, that tiles lie on the grid's pixels and cover the AOI window exactly once, and that every
tile's task exports the same image (its AOI-wide reductions are over the whole AOI: tiling adds
no reduction that would need a combine step). The mosaic is checked against pixel coordinates
written into each downloaded tile.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
from ee_support.cubes import flanders_aoi
from ee_support.evaluator import encode
from ee_support.fake_export import FakeClient

from optsar_nb.ee import export, tiles
from optsar_nb.ee import gaps as ee_gaps
from optsar_nb.params import GapParams

PARAMS = GapParams(mission="S2", start="2017-08-01", end="2018-12-01")
GRID = {"crs": "EPSG:32631", "transform": [10.0, 0.0, 499980.0, 0.0, -10.0, 5700000.0]}  # a Sentinel-2 tile's


def coverage(window: tiles.Window, parts) -> np.ndarray:
    """How many tiles cover each pixel of the window."""
    count = np.zeros((window.height, window.width), dtype="uint8")
    for _, t in parts:
        count[t.row - window.row:t.row - window.row + t.height, t.col - window.col:t.col - window.col + t.width] += 1
    return count


def test_case_3_extent_in_download_tiles_of_48_mib():
    """Case 3 (2750 x 4671 px, 380 images): one export task on Drive (below 1e8 pixels); a local
    download of one band per image in requests of at most 48 MiB of float64."""
    window = tiles.Window(col=1234, row=567, width=4671, height=2750)
    assert tiles.split(window, tiles.MAX_TILE_PIXELS) == [("", window)]
    limit = 50_331_648 // (8 * 380)
    parts = tiles.split(window, limit)
    side = math.isqrt(limit)  # 128: square tiles of at most 16,556 pixels
    assert side == 128 and len(parts) == math.ceil(4671 / side) * math.ceil(2750 / side) == 814
    assert all(t.pixels <= limit for _, t in parts)
    assert (coverage(window, parts) == 1).all()  # every pixel in exactly one tile
    assert len({suffix for suffix, _ in parts}) == len(parts) and parts[-1][0] == "_r21c36"


def test_the_seeds_100_km_limit():
    """At 10 m an AOI of 100 km x 100 km is one export; 150 km x 120 km is tiled into four tiles
    of at most 100 km x 100 km."""
    assert len(tiles.split(tiles.Window(0, 0, 10_000, 10_000), tiles.MAX_TILE_PIXELS)) == 1
    window = tiles.Window(0, 0, 15_000, 12_000)
    parts = tiles.split(window, tiles.MAX_TILE_PIXELS)
    assert [(s, t.width, t.height) for s, t in parts] == [("_r00c00", 10_000, 10_000), ("_r00c01", 5_000, 10_000),
                                                          ("_r01c00", 10_000, 2_000), ("_r01c01", 5_000, 2_000)]
    assert (coverage(window, parts) == 1).all()


def test_the_aoi_window_is_on_the_grids_pixels():
    from pyproj import Transformer

    aoi = flanders_aoi()
    window = tiles.aoi_window(aoi, GRID)
    a, _, c, _, e, f = window.transform(GRID)
    assert (a, e) == (10.0, -10.0) and ((c - 499980.0) / 10).is_integer() and ((f - 5700000.0) / 10).is_integer()
    west, south, east, north = aoi.bounds
    to_grid = Transformer.from_crs("EPSG:4326", GRID["crs"], always_xy=True)
    for lon in (west, east):
        for lat in (south, north):
            x, y = to_grid.transform(lon, lat)
            assert c <= x <= c + window.width * a and f + window.height * e <= y <= f


@pytest.fixture(scope="module")
def run(ee_offline):
    return ee_gaps.characterize_gaps(flanders_aoi(), PARAMS)


def test_tiled_drive_export_shares_one_image_and_grid(run):
    """Each tile is its own task (``<name>_r<i>c<j>``) on the same grid and of the same image:
    the AOI-wide graph is not cut by the tiles."""
    import ee

    window = tiles.Window(100, 200, 90, 70)
    client = FakeClient()
    out = export.Output("Gap_Statistics_X", image=run.statistics)
    report = export.export_outputs([out], destination=export.Destination("drive", folder="f"),
                                   region=ee.Geometry.Rectangle([3.0, 50.8, 3.1, 50.9]), grid=GRID, window=window,
                                   max_tile_pixels=40 * 40, client=client, poll_s=0, sleep=lambda s: None)
    assert list(report) == [f"Gap_Statistics_X_r{i:02d}c{j:02d}" for i in range(2) for j in range(3)]
    assert set(report.values()) == {"done"}
    assert all(grid == GRID for *_, grid in client.started)
    graphs = [json.dumps(encode(client.objects[name]), sort_keys=True) for name in report]
    assert set(graphs) == {json.dumps(encode(run.statistics), sort_keys=True)}


def _fake_tile(path, grid):
    """A downloaded tile: band 1 the grid column, band 2 the grid row of each pixel, from the
    tile's own transform."""
    a, _, c, _, e, f = grid["transform"]
    col0, row0 = round((c - GRID["transform"][2]) / a), round((f - GRID["transform"][5]) / e)
    rows, cols = np.mgrid[row0:row0 + grid["height"], col0:col0 + grid["width"]]
    with rasterio.open(path, "w", driver="GTiff", width=grid["width"], height=grid["height"], count=2,
                       dtype="float64", crs=grid["crs"], transform=rasterio.Affine(*grid["transform"])) as dst:
        dst.write(np.stack([cols, rows]).astype("float64"))


class TileClient(FakeClient):
    def download(self, image, path, *, region, grid):
        self.downloads.append((path, grid))
        _fake_tile(path, grid)
        return path


def test_a_large_download_is_mosaicked_from_aligned_tiles(run, tmp_path):
    import ee

    window = tiles.Window(1000, 2000, 301, 157)
    client = TileClient()
    out = export.Output("Gap_Statistics_X", image=run.statistics, bands=2)
    export.export_outputs([out], destination=export.Destination("local", folder=str(tmp_path)),
                          region=ee.Geometry.Rectangle([3.0, 50.8, 3.1, 50.9]), grid=GRID, window=window,
                          max_tile_pixels=64 * 64, client=client)
    assert len(client.downloads) == math.ceil(301 / 64) * math.ceil(157 / 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Gap_Statistics_X.tif"]  # tiles removed
    with rasterio.open(tmp_path / "Gap_Statistics_X.tif") as src:
        values, transform = src.read(), src.transform
        assert (src.width, src.height, src.crs.to_string()) == (301, 157, "EPSG:32631")
    # each pixel holds its own grid column and row, read off the mosaic's transform
    rows, cols = np.mgrid[0:157, 0:301]
    x, y = transform * (cols + 0.5, rows + 0.5)
    np.testing.assert_array_equal(values[0], np.floor((x - GRID["transform"][2]) / 10))
    np.testing.assert_array_equal(values[1], np.floor((GRID["transform"][5] - y) / 10))


def test_a_tile_of_the_wrong_size_is_refused_by_name(tmp_path):
    from optsar_nb.errors import WriteFailed

    window = tiles.Window(0, 0, 20, 10)
    (left, a), (right, b) = tiles.split(window, 10 * 10)
    _fake_tile(tmp_path / "a.tif", tiles.tile_grid(GRID, a))
    _fake_tile(tmp_path / "b.tif", tiles.tile_grid(GRID, tiles.Window(10, 0, 9, 10)))
    with pytest.raises(WriteFailed, match="b.tif is 9 x 10 x 2, not 10 x 10 x 2"):
        tiles.mosaic([(a, tmp_path / "a.tif"), (b, tmp_path / "b.tif")], window, GRID, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_the_real_client_asks_for_exactly_a_tiles_pixels(run, tmp_path, monkeypatch):
    """``ee.data.computePixels`` takes a PixelGrid (dimensions, affineTransform, crsCode) that lays
    out the computed image; the download of a tile asks for exactly its pixels."""
    import ee

    requests = []
    monkeypatch.setattr(ee.data, "computePixels", lambda request: requests.append(request) or b"GeoTIFF bytes")
    tile = tiles.Window(10, 20, 30, 40)
    path = export.EarthEngineClient().download(run.statistics, tmp_path / "t.tif",
                                               region=ee.Geometry.Rectangle([3.0, 50.8, 3.1, 50.9]),
                                               grid=tiles.tile_grid(GRID, tile))
    assert path.read_bytes() == b"GeoTIFF bytes"
    grid = requests[0]["grid"]
    assert grid["dimensions"] == {"width": 30, "height": 40} and grid["crsCode"] == "EPSG:32631"
    assert grid["affineTransform"] == {"scaleX": 10.0, "shearX": 0.0, "translateX": 499980.0 + 10 * 10,
                                       "shearY": 0.0, "scaleY": -10.0, "translateY": 5700000.0 - 20 * 10}
