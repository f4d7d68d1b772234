"""Seed-format stacks: GeoTIFF + metadata CSV round trip, NetCDF cubes, mismatches, overwrite."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr

from optsar_nb.errors import OutputExists, StackMismatch
from optsar_nb.local.geotiff_writer import write_geotiff, write_geotiff_groups, write_geotiffs
from optsar_nb.local.stack import read_netcdf, read_stack, write_stack
from optsar_nb.outputs import write_csv


def _stack(n=3, ny=40, nx=30, dtype="float32") -> xr.DataArray:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(n, ny, nx)).astype(dtype)
    times = pd.to_datetime(["2021-01-05T00:11:09", "2021-01-10T00:11:09", "2021-01-10T00:11:21"][:n])
    return xr.DataArray(
        data,
        dims=("time", "y", "x"),
        coords={
            "time": times,
            "id": ("time", ["20210105T001109_T55HEB", "20210110T001109_T55HEB", "20210110T001121_T55HEA"][:n]),
            "y": 6_530_000 - 10 * (np.arange(ny) + 0.5),
            "x": 600_000 + 10 * (np.arange(nx) + 0.5),
        },
        attrs={"crs": "EPSG:32755", "transform": (10.0, 0.0, 600_000.0, 0.0, -10.0, 6_530_000.0)},
    )


def test_geotiff_round_trip_keeps_names_crs_transform_values(tmp_path):
    stack = _stack()
    stack[1, 3, 4] = np.nan
    tif, csv = write_stack(stack, tmp_path / "NDVI_Input_S2_2021-01-01_2022-01-01.tif")
    with rasterio.open(tif) as src:  # read independently of the package
        assert src.descriptions == tuple(stack["id"].values)
        assert src.crs.to_epsg() == 32755
        assert tuple(src.transform)[:6] == stack.attrs["transform"]
        np.testing.assert_array_equal(src.read(2), stack.values[1])
    table = pd.read_csv(csv)
    assert list(table.ID) == list(stack["id"].values)
    assert table.CollectionTime[0] == 1609805469000  # 2021-01-05T00:11:09Z in ms, by hand
    back = read_stack(tif, chunk_px=16)
    assert back.chunks[1] == (16, 16, 8)
    np.testing.assert_array_equal(back.values, stack.values)
    np.testing.assert_array_equal(back.time.values, stack.time.values)
    np.testing.assert_array_equal(back.x.values, stack.x.values)
    np.testing.assert_array_equal(back.y.values, stack.y.values)
    assert back.attrs["transform"] == stack.attrs["transform"]


def test_packed_int16_round_trip(tmp_path):
    stack = _stack() / 10
    stack[0, 0, 0] = np.nan
    write_geotiff(stack, tmp_path / "p.tif", scale=1e-4)
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.dtypes[0] == "int16" and src.scales[0] == 1e-4
    back = read_stack(tmp_path / "p.tif", _metadata(tmp_path, stack))
    finite = np.isfinite(stack.values)
    assert np.abs(back.values[finite] - stack.values[finite]).max() <= 0.5e-4 + 1e-7
    assert np.isnan(back.values[0, 0, 0])


def test_files_written_together_compute_their_shared_blocks_once(tmp_path):
    """Two stacks cut from one block function (as NDVI_gapfree and its SE) are written window by
    window together: every block is computed once, and each file holds its own half."""
    import threading

    import dask.array as da

    template = _stack(ny=300, nx=280)  # 5 x 5 blocks of up to 64 px
    calls, lock = [], threading.Lock()

    def pair(block_info=None):
        (_, _), (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
        with lock:
            calls.append((r0, c0))
        return np.stack([template.values[:, r0:r1, c0:c1], -template.values[:, r0:r1, c0:c1]])

    both = da.map_blocks(pair, chunks=((2,), (3,), (64,) * 4 + (44,), (64,) * 4 + (24,)), dtype="float32")
    a, b = (template.copy(data=both[i]) for i in range(2))
    write_geotiffs([(a, tmp_path / "a.tif"), (b, tmp_path / "b.tif")])
    assert sorted(calls) == sorted({(r, c) for r in range(0, 300, 64) for c in range(0, 280, 64)})
    for name, sign in (("a.tif", 1), ("b.tif", -1)):
        with rasterio.open(tmp_path / name) as src:
            np.testing.assert_array_equal(src.read(), sign * template.values)
            assert src.descriptions == tuple(template["id"].values)


def test_groups_of_files_are_written_in_one_stream_of_windows(tmp_path):
    """Groups of files written one after the other (the job's gap-free pair, then its mask,
    prediction and observations): the next group's blocks are computed while the group before is
    still being computed (no idle workers between them), and a group's files are in place, its
    ``done`` called, before the next group's are."""
    import threading

    import dask.array as da

    stack = _stack(ny=40, nx=30)  # one window each
    started, waited, seen = threading.Event(), [], []

    def first(block):  # the first group's block waits for the second group's to start
        waited.append(started.wait(30))
        return block

    def second(block):
        started.set()
        return -block

    one = stack.copy(data=da.from_array(stack.values, chunks=-1).map_blocks(first, meta=stack.values[:0]))
    two = stack.copy(data=da.from_array(stack.values, chunks=-1).map_blocks(second, meta=stack.values[:0]))
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_geotiff_groups([[(one, a)], [(two, b)]], done=[lambda: seen.append((a.exists(), b.exists())), None])
    assert waited == [True] and seen == [(True, False)]
    for path, sign in ((a, 1), (b, -1)):
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(src.read(), sign * stack.values)


def test_a_tile_is_assembled_from_its_blocks_and_compressed_by_one_task(tmp_path):
    """Blocks that nest in the tiles go straight to the task that compresses a tile (no task makes
    a tile-sized array for another to compress), one task for every file of a group; blocks that
    straddle tiles are cut into tiles first. GDAL reads every value back."""
    import dask.array as da
    from dask.core import get_dependencies

    from optsar_nb.local import geotiff_writer

    stack = _stack(ny=300, nx=280)  # 2 x 2 tiles of up to 256 px
    blocks = stack.copy(data=da.from_array(stack.values, chunks=(-1, 64, 64)))
    other = stack.copy(data=-blocks.data)
    specs = [geotiff_writer._geotiff_spec(a) for a in (blocks, other)]
    tasks = geotiff_writer._encoded_tiles(specs, (256, 256))
    assert tasks.shape == (2, 2)
    needs = get_dependencies(dict(tasks[0, 0].dask), tasks[0, 0].key)  # what the first tile's task reads
    assert sorted(k[1:] for k in needs) == sorted([(0, i, j) for i in range(4) for j in range(4)] * 2)
    assert {k[0] for k in needs} == {blocks.data.name, other.data.name}  # its 4 x 4 blocks of each file
    straddling = stack.copy(data=da.from_array(stack.values, chunks=(-1, 100, 100)))
    write_geotiffs([(blocks, tmp_path / "a.tif"), (other, tmp_path / "b.tif"), (straddling, tmp_path / "c.tif")])
    for name, sign in (("a.tif", 1), ("b.tif", -1), ("c.tif", 1)):
        with rasterio.open(tmp_path / name) as src:
            assert src.block_shapes[0] == (256, 256)
            np.testing.assert_array_equal(src.read(), sign * stack.values, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "bool"])
@pytest.mark.parametrize("bigtiff", [False, True])
def test_tiles_compressed_by_the_tasks_are_read_back_by_gdal(tmp_path, monkeypatch, dtype, bigtiff):
    """The writer compresses each tile in the task that computes it and fills the tile index
    itself; GDAL (an independent reader) reads every value back, edge tiles included, from a
    classic TIFF or, above the size limit of one, a BigTIFF."""
    from optsar_nb.local import geotiff_writer

    if bigtiff:
        monkeypatch.setattr(geotiff_writer, "CLASSIC_TIFF_BYTES", 0)
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 300, 520)) * (1 if dtype.startswith("float") else 40)
    data = (values > 0) if dtype == "bool" else values.astype(dtype)
    if dtype.startswith("float"):
        data[0, 299, 519] = np.nan
    stack = _stack(n=2, ny=300, nx=520).copy(data=data)
    write_geotiff(stack, tmp_path / "t.tif")
    with rasterio.open(tmp_path / "t.tif") as src:
        assert src.block_shapes == [(256, 256)] * 2 and src.compression.value == "DEFLATE"
        assert src.dtypes[0] == ("uint8" if dtype == "bool" else dtype)
        np.testing.assert_array_equal(src.read(), data.astype(src.dtypes[0]))
    assert (tmp_path / "t.tif").read_bytes()[2] == (43 if bigtiff else 42)
    small = _stack(n=2, ny=40, nx=30)  # smaller than a tile: one tile, rounded up to 16 px
    write_geotiff(small, tmp_path / "small.tif")
    with rasterio.open(tmp_path / "small.tif") as src:
        assert src.block_shapes == [(48, 32)] * 2
        np.testing.assert_array_equal(src.read(), small.values)


def _metadata(tmp_path, stack):
    from optsar_nb.local.stack import metadata_of

    return write_csv(metadata_of(stack), tmp_path / "meta.csv", overwrite=True)


def test_band_count_and_rows_disagree(tmp_path):
    stack = _stack()
    tif, csv = write_stack(stack, tmp_path / "s.tif")
    pd.read_csv(csv).iloc[:2].to_csv(csv, index=False)
    with pytest.raises(StackMismatch, match="3 bands but its metadata table has 2 rows"):
        read_stack(tif)


def test_ids_out_of_order(tmp_path):
    stack = _stack()
    tif, csv = write_stack(stack, tmp_path / "s.tif")
    pd.read_csv(csv).iloc[[1, 0, 2]].to_csv(csv, index=False)
    expected = "band 1 is '20210105T001109_T55HEB' but .* row 1 is '20210110T001109_T55HEB'"
    with pytest.raises(StackMismatch, match=expected):
        read_stack(tif)


def test_missing_columns(tmp_path):
    tif, csv = write_stack(_stack(), tmp_path / "s.tif")
    pd.read_csv(csv).rename(columns={"CollectionTime": "time"}).to_csv(csv, index=False)
    with pytest.raises(StackMismatch, match="lacks column.*CollectionTime"):
        read_stack(tif)


def test_existing_output_is_not_overwritten(tmp_path):
    stack = _stack()
    tif, _ = write_stack(stack, tmp_path / "s.tif")
    before = tif.read_bytes()
    with pytest.raises(OutputExists, match="overwrite=True"):
        write_stack(stack * 2, tif)
    assert tif.read_bytes() == before
    write_stack(stack * 2, tif, overwrite=True)
    np.testing.assert_allclose(read_stack(tif).values, stack.values * 2)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_netcdf_scale_and_fill(flanders):
    path = next(flanders.glob("S2_L2A_10m_*.nc"))
    ds = read_netcdf(path, ["B04", "B08"])
    raw = xr.open_dataset(path, engine="h5netcdf", mask_and_scale=False)
    dn = raw["B04"].values
    got = ds["B04"].values
    np.testing.assert_allclose(got[dn != 0], dn[dn != 0].astype("float32") * np.float32(1e-4), rtol=1e-6)
    assert np.isnan(got[dn == 0]).all()
    assert ds["B04"].attrs["transform"] == (10.0, 0.0, 501360.0, 0.0, -10.0, 5629680.0)
    assert ds.sizes == {"time": 118, "y": 64, "x": 64}
    assert str(ds["id"].values[0]).startswith("S2_L2A_10m_2017")
    scl = read_netcdf(next(flanders.glob("S2_L2A_20m_*.nc")), "SCL")["SCL"]
    assert scl.dtype == np.uint8 and scl.attrs["nodata"] == 0


def test_netcdf_missing_variable(flanders):
    with pytest.raises(StackMismatch, match="no variable.*'B99'"):
        read_netcdf(next(flanders.glob("S2_L2A_10m_*.nc")), "B99")


def test_a_stack_elsewhere_is_refused_by_name_and_one_partly_over_is_cut():
    from optsar_nb.local.grid import align_to

    def grid(x0, crs):
        return xr.DataArray(np.zeros((1, 3, 3)), dims=("time", "y", "x"),
                            coords={"y": [25.0, 15.0, 5.0], "x": [x0 + 5.0, x0 + 15.0, x0 + 25.0]}, attrs={"crs": crs})

    optical = grid(500000.0, "EPSG:32631")
    with pytest.raises(StackMismatch, match="does not overlap the optical grid: it covers x 600005 to 600025"):
        align_to(grid(600000.0, "EPSG:32631"), optical, what="the Sentinel-1 VV stack")
    partly = align_to(grid(500020.0, "EPSG:32631").assign_coords(y=[27.0, 17.0, 7.0]), optical)
    assert np.isnan(partly.values[0, :, :2]).all() and not np.isnan(partly.values[0, :, 2]).any()


def test_a_stack_on_another_crs_is_reprojected_by_nearest_neighbour():
    """S1 on the next UTM zone (20 m) onto a 10 m optical grid: each optical pixel takes the value
    of the source pixel whose centre is nearest to its own centre carried into the source's
    system (checked by brute force over every source pixel); far from the source: NaN, and no
    overlap at all: refused."""
    from pyproj import Transformer

    from optsar_nb.local.grid import align_to

    to_32632 = Transformer.from_crs("EPSG:32631", "EPSG:32632", always_xy=True)
    ox = 700_000 + np.arange(12) * 10.0 + 5
    oy = 5_600_000 - np.arange(10) * 10.0 - 5
    optical = xr.DataArray(np.zeros((1, 10, 12)), dims=("time", "y", "x"), coords={"y": oy, "x": ox},
                           attrs={"crs": "EPSG:32631"})
    cx, cy = to_32632.transform(ox.mean(), oy.mean())
    sx = np.round(cx / 20) * 20 + np.arange(-4, 3) * 20.0 + 10  # the source covers most, not all
    sy = np.round(cy / 20) * 20 - np.arange(-3, 4) * 20.0 - 10
    values = np.arange(sy.size * sx.size, dtype=float).reshape(sy.size, sx.size)
    s1 = xr.DataArray(np.stack([values, values + 100]), dims=("time", "y", "x"),
                      coords={"time": [1, 2], "y": sy, "x": sx}, attrs={"crs": "EPSG:32632"}, name="VV")
    out = align_to(s1, optical, what="the Sentinel-1 VV stack")
    assert out.dims == ("time", "y", "x") and out.attrs["crs"] == "EPSG:32631"
    got = out.values
    for r, y in enumerate(oy):
        for c, x in enumerate(ox):
            px, py = to_32632.transform(x, y)
            i, j = np.argmin(np.abs(sy - py)), np.argmin(np.abs(sx - px))
            inside = abs(sy[i] - py) <= 10 and abs(sx[j] - px) <= 10
            expected = values[i, j] if inside else np.nan
            np.testing.assert_array_equal(got[:, r, c], [expected, expected + 100])
    assert np.isnan(got).any() and np.isfinite(got).mean() > 0.5
    with pytest.raises(StackMismatch, match="does not overlap"):
        align_to(s1.assign_coords(x=sx + 50_000), optical)


def test_damaged_inputs_are_named_in_one_line(tmp_path, capsys):
    """Empty, truncated or foreign files: an error naming the file and the fix, no traceback."""
    from optsar_nb.cli import main
    from optsar_nb.errors import UnreadableInput
    from optsar_nb.local.stack import read_geotiff, read_metadata

    stack = xr.DataArray(np.random.default_rng(0).random((3, 300, 300)).astype("float32"), dims=("band", "y", "x"),
                         coords={"y": np.arange(300)[::-1] * 10.0 + 5, "x": np.arange(300) * 10.0 + 5})
    good = write_geotiff(stack, tmp_path / "good.tif", band_names=["a", "b", "c"])
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    with pytest.raises(UnreadableInput, match=f"{cut} is truncated"):
        read_geotiff(cut)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(UnreadableInput, match="empty.tif is not a readable GeoTIFF"):
        read_geotiff(tmp_path / "empty.tif")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UnreadableInput, match="metadata CSV .*empty.csv cannot be read"):
        read_metadata(tmp_path / "empty.csv")
    (tmp_path / "cube.nc").write_bytes(b"not a netcdf file at all")
    with pytest.raises(UnreadableInput, match="NetCDF cube .*cube.nc cannot be read"):
        read_netcdf(tmp_path / "cube.nc", ["SCL"])
    write_csv(pd.DataFrame({"ID": ["a", "b", "c"], "CollectionTime": [1.6e12, 1.61e12, 1.62e12]}),
              tmp_path / "cut.csv")
    code = main(["gaps", "--qa", str(cut), "--start", "2020-01-01", "--end", "2022-01-01",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "cut.tif is truncated" in err and "Traceback" not in err
