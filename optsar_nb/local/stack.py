"""Image stacks as xarray DataArrays (time, y, x), and their files.

Files are the seed's format: a multiband GeoTIFF whose band descriptions are the image IDs,
plus a metadata CSV with one row per band (``ID``, ``CollectionTime`` in ms since the epoch,
UTC, and optional further columns). NetCDF cubes (integers with ``scale_factor`` and
``_FillValue``, dims ``timestamp, y, x``) are read too.

A stack carries its grid in ``attrs["crs"]`` (WKT) and ``attrs["transform"]`` (the six affine
coefficients a, b, c, d, e, f of rasterio), the image IDs in the ``id`` coordinate and every
other metadata column as a coordinate along ``time``. Reading is lazy: the data is a dask
array chunked in space, read window by window, and writing goes block by block, so no stack
is ever held whole in memory. Grids and the alignment of one stack onto another's grid are in
:mod:`optsar_nb.local.grid`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import StackMismatch, UnreadableInput
from ..outputs import atomic_path, incomplete_block, refuse_existing, verify_geotiff, write_csv
from ..products import metadata_beside
from ._blocks import lazy_array
from .grid import grid_coords, transform_from_coords

DEFAULT_CHUNK_PX = 512  # spatial chunk edge: a 380-image float32 block is ~400 MB at most
TILE_PX = 256  # tile edge of the GeoTIFFs written here
# Bytes of one window (all bands) computed and written at a time. Windows are whole tiles, so
# that every tile is compressed once: a window cutting a tile makes GDAL decompress and
# recompress it for each piece, which cost minutes on a 437-band stack.
WRITE_WINDOW_BYTES = 128 * 2**20
# zlib level of the deflate compression. Level 1 writes float stacks ~2.4x faster than the
# default 6 for files ~4 % larger (measured on a simulated 437 x 500 x 414 NDVI stack);
# PREDICTOR=3 was slower and larger on such noisy floats.
DEFLATE_LEVEL = 1
# Threads GDAL compresses a file's tiles with (its NUM_THREADS creation option): deflate is the
# bulk of writing a stack, and tiles are compressed independently, so the file is the same
# byte for byte whatever the count.
COMPRESS_THREADS = os.cpu_count() or 1
# Bytes of one read window (all bands, as stored) when the caller leaves the window to the
# reader: windows of whole tiles of the file, as large as this allows (at least one tile), so
# that each tile is decompressed once per pass over the file.
READ_WINDOW_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------------
# metadata
def ms_to_datetime(ms) -> pd.DatetimeIndex:
    return pd.to_datetime(np.asarray(ms, dtype="int64"), unit="ms", utc=True).tz_localize(None)


def datetime_to_ms(times) -> np.ndarray:
    t = pd.DatetimeIndex(times)
    if t.tz is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return (t.as_unit("ns").asi8 // 1_000_000).astype("int64")


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read a metadata CSV; it must have ``ID`` and ``CollectionTime`` (ms since epoch, UTC)."""
    path = Path(path)
    if not path.exists():
        raise StackMismatch(f"metadata CSV {path} does not exist: every stack needs its metadata table")
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UnreadableInput(f"metadata CSV {path} cannot be read ({str(exc).splitlines()[0]}): the file is empty "
                              "or damaged; export or copy it again") from None
    missing = {"ID", "CollectionTime"} - set(table.columns)
    if missing:
        raise StackMismatch(
            f"metadata CSV {path} lacks column(s) {sorted(missing)}: it needs ID and CollectionTime (ms UTC)"
        )
    table["ID"] = table["ID"].astype(str)
    return table


def metadata_of(stack: xr.DataArray) -> pd.DataFrame:
    """The metadata table of a stack: ID, CollectionTime and every other coordinate along time."""
    cols = {"ID": [str(v) for v in stack["id"].values], "CollectionTime": datetime_to_ms(stack.time.values)}
    for name, coord in stack.coords.items():
        if name not in ("time", "id", "x", "y", "spatial_ref") and coord.dims == ("time",):
            cols[name] = coord.values
    return pd.DataFrame(cols)


def with_metadata(data: xr.DataArray, table: pd.DataFrame, source: str = "stack") -> xr.DataArray:
    """Attach a metadata table to a (band, y, x) or (time, y, x) array, checking that they agree."""
    dim = data.dims[0]
    if len(table) != data.sizes[dim]:
        raise StackMismatch(
            f"{source} has {data.sizes[dim]} bands but its metadata table has {len(table)} rows: "
            "they must describe the same images in the same order (re-export both together)"
        )
    times = ms_to_datetime(table["CollectionTime"].to_numpy())
    coords = {"time": times, "id": ("time", table["ID"].astype(str).to_numpy())}
    for col in table.columns:
        if col not in ("ID", "CollectionTime"):
            coords[col] = ("time", table[col].to_numpy())
    return data.rename({dim: "time"}).assign_coords(coords)


def empty_stack_like(template: xr.DataArray, data, *, name: str | None = None) -> xr.DataArray:
    """A DataArray on ``template``'s grid and time axis with new data."""
    return xr.DataArray(data, dims=template.dims, coords=template.coords, attrs=dict(template.attrs), name=name)


# --------------------------------------------------------------------------------------------
# GeoTIFF
class _RasterioWindows:
    """Array-like over a GeoTIFF whose slicing reads only the requested window (for dask)."""

    def __init__(self, path: str, count: int, height: int, width: int, dtype):
        self.path, self.shape, self.dtype, self.ndim = path, (count, height, width), np.dtype(dtype), 3

    def __getitem__(self, key):
        import rasterio
        from rasterio.windows import Window

        bands, rows, cols = (np.arange(n)[k] for k, n in zip(key, self.shape))
        bands, rows, cols = (np.atleast_1d(v) for v in (bands, rows, cols))
        if rows.size == 0 or cols.size == 0 or bands.size == 0:
            return np.empty((bands.size, rows.size, cols.size), self.dtype)
        window = Window(int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
        with rasterio.open(self.path) as src:
            block = src.read([int(b) + 1 for b in bands], window=window)
        if rows.size != window.height or cols.size != window.width:  # a strided selection (a window as read)
            block = block[:, rows - rows[0]][:, :, cols - cols[0]]
        squeeze = tuple(i for i, k in enumerate(key) if isinstance(k, (int, np.integer)))
        return block.squeeze(axis=squeeze) if squeeze else block


def read_geotiff(path: str | Path, *, chunk_px: int | None = None) -> xr.DataArray:
    """A multiband GeoTIFF as a lazy (band, y, x) DataArray; band descriptions in ``band``.

    ``chunk_px``: spatial edge of the read windows (every window holds all bands); by default
    whole tiles of the file within READ_WINDOW_BYTES.
    """
    import rasterio

    path = Path(path)
    if not path.exists():
        raise StackMismatch(f"GeoTIFF {path} does not exist: check the path")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise UnreadableInput(f"{path} is not a readable GeoTIFF ({exc}): the file is damaged, empty or of another "
                              "format; export or copy it again") from None
    with src:
        bad = incomplete_block(src, path.stat().st_size)
        if bad is not None:
            raise UnreadableInput(f"{path} is truncated (band {bad[0]} is cut off): the file was not completely "
                                  "written or copied; export or copy it again")
        count, height, width, dtype = src.count, src.height, src.width, src.dtypes[0]
        names = [d if d else f"b{i + 1}" for i, d in enumerate(src.descriptions)]
        crs = src.crs.to_wkt() if src.crs else None
        transform = tuple(src.transform)[:6]
        nodata = src.nodata
        scale, offset = src.scales[0], src.offsets[0]
        block_rows, block_cols = src.block_shapes[0]
    if chunk_px is None:
        chunk_px = _read_edge(count * np.dtype(dtype).itemsize, block_rows, block_cols)
    lazy = da.from_array(
        _RasterioWindows(str(path), count, height, width, dtype),
        chunks=(-1, chunk_px, chunk_px),
        name=f"read-{path.name}-{os.stat(path).st_mtime_ns}-{chunk_px}",
    )
    y, x = grid_coords(transform, height, width)
    attrs = {"crs": crs, "transform": transform}
    if scale != 1.0 or offset != 0.0:
        # packed integers: unpack to float32 with no-data as NaN
        values = lazy.astype("float32") * np.float32(scale) + np.float32(offset)
        lazy = da.where(lazy == nodata, np.float32(np.nan), values) if nodata is not None else values
        attrs["packing"] = (float(scale), float(offset))  # how the values were stored: the job may stage them so
    elif nodata is not None:
        attrs["nodata"] = nodata
    return xr.DataArray(lazy, dims=("band", "y", "x"), coords={"band": names, "y": y, "x": x}, attrs=attrs, name=None)


def _read_edge(bytes_per_pixel: int, block_rows: int, block_cols: int) -> int:
    """Default read window edge: a multiple of the file's tile within READ_WINDOW_BYTES (>= 1 tile).

    Striped files (blocks of a few full-width rows) get a square window of the budget's size.
    """
    edge = int(np.sqrt(READ_WINDOW_BYTES / max(bytes_per_pixel, 1)))
    tile = block_rows if block_rows == block_cols else 1
    return max(tile, edge // tile * tile, 1)


def read_stack(
    tif_path: str | Path, metadata_csv: str | Path | None = None, *, chunk_px: int | None = None
) -> xr.DataArray:
    """Read a seed-format stack: GeoTIFF + metadata CSV -> lazy (time, y, x) DataArray.

    ``metadata_csv`` defaults to the CSV beside the GeoTIFF with the same stem. The band
    descriptions must equal the CSV's IDs, in order, when the GeoTIFF has them.
    """
    tif_path = Path(tif_path)
    metadata_csv = Path(metadata_csv) if metadata_csv else metadata_beside(tif_path)
    raw = read_geotiff(tif_path, chunk_px=chunk_px)
    table = read_metadata(metadata_csv)
    stack = with_metadata(raw, table, source=str(tif_path))
    described = [str(b) for b in raw.band.values]
    if any(not d.startswith("b") or not d[1:].isdigit() for d in described):
        ids = list(table["ID"])
        if described != ids:
            first = next(i for i, (p, q) in enumerate(zip(described, ids)) if p != q)
            raise StackMismatch(
                f"{tif_path} band {first + 1} is {described[first]!r} but {metadata_csv} row {first + 1} "
                f"is {ids[first]!r}: the CSV rows must list the bands' image IDs in band order"
            )
    return stack.drop_vars("band", errors="ignore").sortby("time")


def write_geotiff(
    data: xr.DataArray,
    path: str | Path,
    *,
    band_names: list[str] | None = None,
    overwrite: bool = False,
    nodata: float | None = None,
    scale: float | None = None,
) -> Path:
    """Write a (band|time, y, x) DataArray as a multiband GeoTIFF, block by block.

    Band descriptions are ``band_names`` (default: the ``id`` coordinate, else the first
    dimension's labels). Float data keeps NaN as its no-data value. With ``scale``, float data
    is packed as int16 (value = stored x scale, NaN stored as -32768), which readers unpack.
    Returns the path.
    """
    return write_geotiffs([(data, path)], band_names=band_names, overwrite=overwrite, nodata=nodata,
                          scale=scale)[0]


def write_geotiffs(items: list[tuple[xr.DataArray, str | Path]], *, overwrite: bool = False, **options) -> list[Path]:
    """Write several (band|time, y, x) DataArrays of one grid, each as :func:`write_geotiff` does
    (``options`` apply to each), window by window together: a window of every file is computed
    in one pass, so the work their graphs share (a block function returning several outputs) is
    done once. Returns the paths."""
    specs = [_geotiff_spec(data, **options) for data, _ in items]
    height, width = specs[0]["profile"]["height"], specs[0]["profile"]["width"]
    if any((s["profile"]["height"], s["profile"]["width"]) != (height, width) for s in specs):
        raise StackMismatch("the files written together must share their grid")
    rows, cols = _write_windows(sum(s["profile"]["count"] * s["dtype"].itemsize for s in specs), height, width,
                                tiled=specs[0]["profile"]["tiled"])
    windows = [(r, c) for r in range(0, height, rows) for c in range(0, width, cols)]
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(path, overwrite=overwrite)) for _, path in items]
        _write_windows_of([s["arr"].rechunk((-1, rows, cols)) for s in specs], tmps, specs, rows, cols, windows)
        for tmp, spec, (_, path) in zip(tmps, specs, items, strict=True):
            p = spec["profile"]
            verify_geotiff(tmp, count=p["count"], height=height, width=width, dtype=p["dtype"],
                           names=spec["band_names"], label=Path(path))
    return [Path(path) for _, path in items]


def _geotiff_spec(data: xr.DataArray, *, band_names=None, nodata=None, scale=None) -> dict:
    """What :func:`write_geotiffs` writes of ``data``: its dask array (packed as int16 with
    ``scale``), the file's profile, band names and type."""
    import rasterio

    if data.ndim == 2:
        data = data.expand_dims("band")
    first = data.dims[0]
    if band_names is None:
        band_names = [str(v) for v in (data["id"].values if "id" in data.coords else data[first].values)]
    if len(band_names) != data.sizes[first]:
        raise StackMismatch(f"{len(band_names)} band names for {data.sizes[first]} bands")
    crs, transform = data.attrs.get("crs"), data.attrs.get("transform")
    if transform is None:
        transform = transform_from_coords(data.y.values, data.x.values)
    dtype = np.dtype(data.dtype)
    if dtype.kind == "b":
        dtype = np.dtype("uint8")
    count, height, width = data.shape
    arr = data.data if isinstance(data.data, da.Array) else lazy_array(np.asarray(data.values), -1)
    arr = arr.rechunk({0: -1})
    if scale is not None:
        packed_nodata = np.iinfo("int16").min
        packed = da.round(arr / scale)
        arr = da.where(da.isnan(packed), packed_nodata, da.clip(packed, packed_nodata + 1, np.iinfo("int16").max))
        dtype, nodata = np.dtype("int16"), packed_nodata
    if nodata is None and dtype.kind == "f":
        nodata = np.nan
    profile = dict(
        driver="GTiff", count=count, height=height, width=width, dtype=dtype.name, crs=crs,
        transform=rasterio.Affine(*transform), nodata=nodata, compress="deflate", zlevel=DEFLATE_LEVEL,
        tiled=True, blockxsize=TILE_PX, blockysize=TILE_PX, BIGTIFF="IF_SAFER", NUM_THREADS=str(COMPRESS_THREADS),
    )
    if height < TILE_PX or width < TILE_PX:
        profile.update(tiled=False)
        profile.pop("blockxsize"), profile.pop("blockysize")
    if count > 1:
        profile["interleave"] = "band"
    return {"arr": arr, "profile": profile, "band_names": band_names, "scale": scale, "dtype": dtype}


def _write_windows_of(arrs, tmps, specs, rows, cols, windows) -> None:
    """The writing loop of :func:`write_geotiffs`: window (row, col) offsets ``windows`` of the
    dask arrays ``arrs`` (chunked by the windows) into the files ``tmps``."""
    import dask
    import rasterio
    from rasterio.windows import Window

    with ExitStack() as files, ThreadPoolExecutor(max_workers=1) as writer:
        dsts = [files.enter_context(rasterio.open(tmp, "w", **spec["profile"])) for tmp, spec in zip(tmps, specs)]
        for dst, spec in zip(dsts, specs):
            for i, name in enumerate(spec["band_names"]):
                dst.set_band_description(i + 1, name)
            if spec["scale"] is not None:
                dst.scales = [spec["scale"]] * len(spec["band_names"])
                dst.offsets = [0.0] * len(spec["band_names"])

        def write(blocks, r0, c0):
            for dst, block in zip(dsts, blocks):
                dst.write(block, window=Window(c0, r0, block.shape[2], block.shape[1]))

        # one thread compresses and writes window k (GDAL releases the GIL) while the next is
        # computed (dask spreads a window's chunks over its threads); at most two windows wait
        pending = None
        for r0, c0 in windows:
            parts = dask.compute(*[a.blocks[0, r0 // rows, c0 // cols] for a in arrs])
            blocks = [np.asarray(b).astype(spec["dtype"], copy=False) for b, spec in zip(parts, specs)]
            if pending is not None:
                pending.result()
            pending = writer.submit(write, blocks, r0, c0)
        if pending is not None:
            pending.result()


def _write_windows(bytes_per_pixel: int, height: int, width: int, *, tiled: bool) -> tuple[int, int]:
    """(rows, cols) of the windows :func:`write_geotiff` writes: whole tiles within WRITE_WINDOW_BYTES.

    A tiled file gets square windows of whole tiles (at least one tile); a striped one (small
    images) full-width row bands, so that no strip is written in pieces either.
    """
    pixels = max(1, WRITE_WINDOW_BYTES // max(bytes_per_pixel, 1))
    if not tiled:
        return int(np.clip(pixels // width, 1, height)), width
    tiles = max(1, int(np.sqrt(pixels / TILE_PX**2)))
    return min(tiles * TILE_PX, height), min(tiles * TILE_PX, width)


def write_stack(
    stack: xr.DataArray, tif_path: str | Path, *, metadata_csv: str | Path | None = None, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write a (time, y, x) stack in the seed's format: GeoTIFF (bands = IDs) + metadata CSV."""
    tif_path = Path(tif_path)
    metadata_csv = Path(metadata_csv) if metadata_csv else metadata_beside(tif_path)
    if not overwrite:
        refuse_existing((tif_path, metadata_csv))
    write_geotiff(stack, tif_path, overwrite=overwrite)
    write_csv(metadata_of(stack), metadata_csv, overwrite=overwrite)
    return tif_path, metadata_csv


# --------------------------------------------------------------------------------------------
# NetCDF cubes
def read_netcdf(path: str | Path, variables: list[str] | str, *, chunk_px: int = DEFAULT_CHUNK_PX) -> xr.Dataset:
    """Read variables of a NetCDF cube (dims ``timestamp|time, y, x``) as a lazy Dataset.

    Integer variables with ``scale_factor`` become float32 with NaN where they equal
    ``_FillValue``; integer variables without a scale factor (class and QA bands) keep their
    integer type and their fill value (the mask rules treat it as missing). Each image gets an
    ``id`` (``<file name prefix>_<YYYYMMDDTHHMMSS>``), and the grid goes into attrs.
    """
    path = Path(path)
    if not path.exists():
        raise StackMismatch(f"NetCDF cube {path} does not exist: check the path")
    variables = [variables] if isinstance(variables, str) else list(variables)
    try:
        ds = xr.open_dataset(path, engine="h5netcdf", mask_and_scale=False, chunks={"y": chunk_px, "x": chunk_px})
    except (OSError, ValueError) as exc:
        raise UnreadableInput(f"NetCDF cube {path} cannot be read ({str(exc).splitlines()[0]}): the file is damaged, "
                              "empty, truncated or not NetCDF-4; download or copy it again") from None
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise StackMismatch(f"{path} has no variable(s) {missing}: it has {sorted(ds.data_vars)}")
    if "timestamp" in ds.dims:
        ds = ds.rename({"timestamp": "time"})
    epsg = ds.attrs.get("epsg")
    from pyproj import CRS

    crs = CRS.from_epsg(int(epsg)).to_wkt() if epsg is not None else None
    out = {}
    for name in variables:
        var = ds[name]
        fill = var.attrs.get("_FillValue")
        scale = var.attrs.get("scale_factor")
        offset = var.attrs.get("add_offset", 0)
        if scale is not None and (float(scale) != 1.0 or float(offset) != 0.0 or var.dtype.kind == "f"):
            data = var.astype("float32")
            if fill is not None:
                data = data.where(var != fill)
            data = data * np.float32(scale) + np.float32(offset)
        elif var.dtype.kind == "f" and fill is not None:
            data = var.where(var != fill)
        else:
            data = var
        data.attrs = {"crs": crs, "transform": transform_from_coords(ds.y.values, ds.x.values)}
        if fill is not None and data.dtype.kind in "iu":
            data.attrs["nodata"] = int(fill)
        out[name] = data.drop_vars("spatial_ref", errors="ignore")
    result = xr.Dataset(out)
    if "time" in result.dims:
        prefix = str(ds.attrs.get("name", path.stem)).split("_0000")[0]
        stamps = pd.DatetimeIndex(result.time.values).strftime("%Y%m%dT%H%M%S")
        result = result.assign_coords(id=("time", [f"{prefix}_{s}" for s in stamps]))
    result.attrs = {"crs": crs, "transform": transform_from_coords(ds.y.values, ds.x.values), "source": str(path)}
    return result
