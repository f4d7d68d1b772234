"""Writing (band|time, y, x) DataArrays as tiled, compressed GeoTIFFs, window by window.

The writer of :mod:`optsar_nb.local.stack`'s files: every window is whole tiles of the file,
computed (dask) while the previous one is compressed and written, and several files of one grid
can be written together so that the work their graphs share is done once
(:func:`write_geotiffs`). A file is written under a temporary name, checked, then moved into
place (``outputs.atomic_path``, ``outputs.verify_geotiff``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import StackMismatch
from ..outputs import atomic_path, verify_geotiff
from ._blocks import lazy_array
from .grid import transform_from_coords

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
