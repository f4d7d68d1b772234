"""Image stacks as xarray DataArrays (time, y, x), and their files.

Files are the seed's format: a multiband GeoTIFF whose band descriptions are the image IDs,
plus a metadata CSV with one row per band (``ID``, ``CollectionTime`` in ms since the epoch,
UTC, and optional further columns). NetCDF cubes (integers with ``scale_factor`` and
``_FillValue``, dims ``timestamp, y, x``) are read too.

A stack carries its grid in ``attrs["crs"]`` (WKT) and ``attrs["transform"]`` (the six affine
coefficients a, b, c, d, e, f of rasterio), the image IDs in the ``id`` coordinate and every
other metadata column as a coordinate along ``time``. Reading is lazy: the data is a dask
array chunked in space, read window by window, and writing goes block by block
(:mod:`optsar_nb.local.geotiff_writer`), so no stack is ever held whole in memory. Grids and the
alignment of one stack onto another's grid are in :mod:`optsar_nb.local.grid`.
"""

from __future__ import annotations

import os
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import StackMismatch, UnreadableInput
from ..outputs import incomplete_block, refuse_existing, write_csv
from ..products import metadata_beside
from .geotiff_writer import write_geotiff
from .grid import grid_coords, transform_from_coords

DEFAULT_CHUNK_PX = 512  # spatial chunk edge: a 380-image float32 block is ~400 MB at most
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
