"""Writing (band|time, y, x) DataArrays as tiled, compressed GeoTIFFs, window by window.

The writer of :mod:`optsar_nb.local.stack`'s files. GDAL writes a file's header and tags (grid,
CRS, band names, no-data, scales) with no tile in it; the tiles are then compressed by the dask
tasks that compute them (on whatever scheduler is active: on a cluster the workers compress,
and only compressed bytes travel to the writing process), appended to the file, and their
offsets and lengths filled into the file's tile index. Several files of one grid can be
written together so that the work their graphs share is done once (:func:`write_geotiffs`). A
file is written under a temporary name, checked, then moved into place
(``outputs.atomic_path``, ``outputs.verify_geotiff``).
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import dask
import dask.array as da
import deflate
import numpy as np
import xarray as xr

from ..errors import StackMismatch, WriteFailed
from ..outputs import atomic_path, free_space, verify_geotiff
from ._blocks import lazy_array
from .grid import transform_from_coords

TILE_PX = 256  # tile edge of the GeoTIFFs written here (smaller images: one tile, rounded up to 16 px)
# Bytes of one window (all bands of every file written together; at least a tile); WINDOWS_IN_FLIGHT
# windows are computed at a time, so that workers are not left idle while a window's last tile is
# finished, nor between groups of files (:func:`write_geotiff_groups`): with 6 rather than 4, the
# next group's first windows run beside the last ones of a group of one-tile windows (a 400-image
# stack's gap-free pair is 230 MB a tile). Case 3's outputs, 256 rows: 56 s instead of 62 s, the
# job's peak memory 3.0 GB instead of 2.1 GB.
WRITE_WINDOW_BYTES = 64 * 2**20
WINDOWS_IN_FLIGHT = 6
# Level of the deflate compression (libdeflate). Level 1 writes float stacks ~2.4x faster than
# the default 6 for files ~4 % larger (measured on a simulated 437 x 500 x 414 NDVI stack);
# PREDICTOR=3 was slower and larger on such noisy floats.
DEFLATE_LEVEL = 1
# GeoTIFFs up to this many bytes of (uncompressed, padded) tiles are classic TIFF, larger ones
# BigTIFF: compressed tiles can grow a little beyond their raw size, and a classic TIFF's offsets
# end at 4 GiB.
CLASSIC_TIFF_BYTES = 2**32 - 2**28


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
    return write_geotiff_groups([items], overwrite=overwrite, **options)[0]


def write_geotiff_groups(groups: list[list[tuple[xr.DataArray, str | Path]]], *, overwrite: bool = False,
                         done: list | None = None, **options) -> list[list[Path]]:
    """Groups of files, each written as :func:`write_geotiffs` writes its items, one group after
    the other in one stream of windows: a group's first windows are computed while the last of
    the group before are finished, so that the workers are not left idle between groups.
    ``done[i]`` (a callable, or None) is called once group i's files are written, checked and in
    place. Every file is refused before anything is written if it exists (unless ``overwrite``).
    Returns each group's paths."""
    specs = [[_geotiff_spec(data, **options) for data, _ in items] for items in groups]
    first = specs[0][0]["profile"]
    tile = specs[0][0]["tile"]
    if any((s["profile"]["height"], s["profile"]["width"]) != (first["height"], first["width"])
           for group in specs for s in group):
        raise StackMismatch("the files written together must share their grid")
    done = done or [None] * len(groups)
    with ExitStack() as stack:
        written = []
        for items, group_specs in zip(groups, specs, strict=True):
            group = stack.enter_context(ExitStack())  # closed (files moved into place) when written
            tmps = [group.enter_context(atomic_path(path, overwrite=overwrite)) for _, path in items]
            files = [_TiledFile(tmp, spec, Path(path)) for tmp, spec, (_, path) in zip(tmps, group_specs, items,
                                                                                      strict=True)]
            for file in files:
                group.callback(file.file.close)  # on failure too (closing twice is harmless)
            rows, cols = _write_windows(sum(s["profile"]["count"] * s["dtype"].itemsize for s in group_specs), tile)
            written.append(_Group(files, _encoded_tiles(group_specs, tile), rows, cols, group))

        def finish(g):
            for file in written[g].files:
                file.close()
                p = file.spec["profile"]
                verify_geotiff(file.path, count=p["count"], height=p["height"], width=p["width"], dtype=p["dtype"],
                               names=file.spec["band_names"], label=file.label)
            written[g].context.close()
            if done[g] is not None:
                done[g]()

        _write_windows_of(written, tile, (first["height"], first["width"]), finish)
    return [[Path(path) for _, path in items] for items in groups]


def _geotiff_spec(data: xr.DataArray, *, band_names=None, nodata=None, scale=None) -> dict:
    """What :func:`write_geotiffs` writes of ``data``: its dask array (packed as int16 with
    ``scale``), the file's profile and tile shape, band names and type."""
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
    # one tile edge for large images; an image smaller than a tile is one tile (TIFF tiles are
    # multiples of 16 px)
    tile = tuple(min(TILE_PX, -(-n // 16) * 16) for n in (height, width))
    raw = count * tile[0] * tile[1] * dtype.itemsize * -(-height // tile[0]) * -(-width // tile[1])
    profile = dict(
        driver="GTiff", count=count, height=height, width=width, dtype=dtype.name, crs=crs,
        transform=rasterio.Affine(*transform), nodata=nodata, compress="deflate", tiled=True,
        blockysize=tile[0], blockxsize=tile[1], BIGTIFF="NO" if raw <= CLASSIC_TIFF_BYTES else "YES",
        SPARSE_OK=True, interleave="band",
    )
    return {"arr": arr, "profile": profile, "band_names": band_names, "scale": scale, "dtype": dtype, "tile": tile}


def _encoded_tiles(specs: list[dict], tile: tuple[int, int]) -> np.ndarray:
    """(tile rows, tile columns) array of dask delayed tasks, each returning the compressed bands
    of one tile of every file ``specs`` describe (files written together).

    A tile's task assembles it from the arrays' blocks within it when they nest in the tiles, and
    compresses every file's: no task makes a tile-sized array for another to compress (on a
    cluster the scheduler moved many such arrays between the workers, ~100 MB each for a
    400-image stack), and files computed by one block function are compressed where it ran."""
    blocks, spans = [], []
    for spec in specs:
        arr = spec["arr"]
        if not all(_nested(chunks, t) for chunks, t in zip(arr.chunks[1:], tile, strict=True)):
            arr = arr.rechunk((-1, *tile))
        # unoptimized: the files written together then name the blocks they share alike
        blocks.append(arr.to_delayed(optimize_graph=False)[0])
        spans.append([_spans(chunks, t) for chunks, t in zip(arr.chunks[1:], tile, strict=True)])
    encode = dask.delayed(_encode_tiles, pure=True)
    dtypes = [spec["dtype"].newbyteorder("<") for spec in specs]
    out = np.empty((len(spans[0][0]), len(spans[0][1])), dtype=object)
    for i, j in np.ndindex(out.shape):
        out[i, j] = encode([b[rows[i], cols[j]].tolist() for b, (rows, cols) in zip(blocks, spans, strict=True)],
                           dtypes, tile)
    return out


def _nested(chunks: tuple[int, ...], t: int) -> bool:
    """Whether every edge between tiles of ``t`` px is an edge between ``chunks``."""
    return set(range(t, sum(chunks), t)) <= set(np.cumsum(chunks).tolist())


def _spans(chunks: tuple[int, ...], t: int) -> list[slice]:
    """For each tile of ``t`` px along an axis, the slice of the (nested) chunks within it."""
    starts = np.cumsum((0, *chunks))[:-1]
    first = np.searchsorted(starts, np.arange(0, sum(chunks), t)).tolist()  # each tile's first chunk
    return [slice(a, b) for a, b in zip(first, [*first[1:], len(chunks)], strict=True)]


def _encode_tiles(blocks: list, dtypes: list, tile: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_encode_tile` of each file's blocks of a tile."""
    return [_encode_tile(b, dtype, tile) for b, dtype in zip(blocks, dtypes, strict=True)]


def _encode_tile(blocks: list[list[np.ndarray]], dtype: np.dtype,
                 tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The deflate-compressed tiles (one per band, as ``dtype``, padded with zeros to ``tile`` at
    the image's edges) of the (bands, rows, columns) blocks that make up a tile (rows of blocks):
    the bands' compressed bytes one after the other (uint8: an array travels between processes
    without being copied into a pickle, and is appended by one write) and each band's length."""
    blocks = [[np.asarray(b) for b in row] for row in blocks]
    bands = blocks[0][0].shape[0]
    h, w = sum(row[0].shape[1] for row in blocks), sum(b.shape[2] for b in blocks[0])
    if (h, w) == tile and len(blocks) == len(blocks[0]) == 1:
        full = np.ascontiguousarray(blocks[0][0], dtype)  # no copy when it is one already
    else:
        full = (np.empty if (h, w) == tile else np.zeros)((bands, *tile), dtype)
        r = 0
        for row in blocks:
            c = 0
            for b in row:
                full[:, r:r + b.shape[1], c:c + b.shape[2]] = b
                c += b.shape[2]
            r += row[0].shape[1]
    parts = [deflate.zlib_compress(band, DEFLATE_LEVEL) for band in full]
    return np.frombuffer(b"".join(parts), np.uint8), np.array([len(p) for p in parts], np.uint64)


class _TiledFile:
    """A GeoTIFF whose header and tags GDAL wrote with no tile in it (SPARSE_OK); tiles are
    appended and the tile index (TileOffsets, TileByteCounts) filled when it is closed."""

    def __init__(self, path: Path, spec: dict, label: Path):
        import rasterio

        self.path, self.spec, self.label = path, spec, label
        p = spec["profile"]
        with rasterio.open(path, "w", **p) as dst:
            for i, name in enumerate(spec["band_names"]):
                dst.set_band_description(i + 1, name)
            if spec["scale"] is not None:
                dst.scales = [spec["scale"]] * p["count"]
                dst.offsets = [0.0] * p["count"]
        self.index = _tile_index(path)
        th, tw = spec["tile"]
        self.shape = (p["count"], -(-p["height"] // th), -(-p["width"] // tw))  # band-major, as TIFF orders them
        self.offsets = np.zeros(self.shape, "uint64")
        self.lengths = np.zeros(self.shape, "uint64")
        self.file = open(path, "r+b", buffering=0)  # unbuffered: a failed write fails here, not at close
        self.end = self.file.seek(0, 2)

    def append(self, row: int, col: int, tile: tuple[np.ndarray, np.ndarray]) -> None:
        """Append a tile (tile row and column ``row``, ``col``): its bands' compressed bytes one
        after the other, and their lengths (:func:`_encode_tile`)."""
        data, lengths = tile
        try:
            self._write(data)
        except OSError as exc:
            raise WriteFailed(f"{self.label} is incomplete: writing its tiles failed ({exc.strerror}; "
                              f"{free_space(self.path)})") from None
        self.offsets[:, row, col] = self.end + np.cumsum(lengths) - lengths
        self.lengths[:, row, col] = lengths
        self.end += data.size

    def _write(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:  # an unbuffered write may write part of what it is given
            view = view[self.file.write(view):]

    def close(self) -> None:
        """Fill in the tile index and close the file."""
        try:
            with self.file:
                for (where, kind, count), values in zip(self.index, (self.offsets, self.lengths), strict=True):
                    if count != values.size or values.max(initial=0) > np.iinfo(kind).max:
                        raise WriteFailed(f"{self.label}: the tile index cannot hold the tiles written")
                    self.file.seek(where)
                    self._write(values.ravel().astype(kind).tobytes())
        except OSError as exc:
            raise WriteFailed(f"{self.label} is incomplete: writing its tile index failed ({exc.strerror}; "
                              f"{free_space(self.path)})") from None


_FIELD = {3: "<u2", 4: "<u4", 16: "<u8"}  # TIFF field types: SHORT, LONG, LONG8


def _tile_index(path: Path) -> list[tuple[int, str, int]]:
    """Where a little-endian (Big)TIFF's first directory keeps its TileOffsets and TileByteCounts:
    for each, (file offset of the values, their numpy type, their count)."""
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:2] != b"II" or struct.unpack_from("<H", head, 2)[0] not in (42, 43):
            raise WriteFailed(f"{path}: GDAL wrote no little-endian TIFF header")
        big = struct.unpack_from("<H", head, 2)[0] == 43
        # BigTIFF: 8-byte counts and offsets, 20-byte entries; classic: 2-byte entry count, 4-byte
        # counts and offsets, 12-byte entries. An entry: tag, type, count, then value or offset.
        offset, count_size, entry, entry_head = ("<Q", 8, 20, "<HHQ") if big else ("<I", 2, 12, "<HHI")
        ifd = struct.unpack_from(offset, head, 8 if big else 4)[0]
        f.seek(ifd)
        n = struct.unpack("<Q" if big else "<H", f.read(count_size))[0]
        data = f.read(n * entry)
    value_field = struct.calcsize(entry_head)  # where an entry's value (or offset to it) begins
    found = {}
    for i in range(n):
        tag, kind, count = struct.unpack_from(entry_head, data, i * entry)
        if tag in (324, 325):  # TileOffsets, TileByteCounts
            inline = np.dtype(_FIELD[kind]).itemsize * count <= entry - value_field
            where = (ifd + count_size + i * entry + value_field if inline
                     else struct.unpack_from(offset, data, i * entry + value_field)[0])
            found[tag] = (where, _FIELD[kind], count)
    return [found[324], found[325]]


class _Group(NamedTuple):
    """Files :func:`write_geotiff_groups` writes together: their encoding tasks (tile rows x
    tile columns, each of every file), the windows' rows and columns, and the context that moves
    them into place."""

    files: list
    tasks: np.ndarray
    rows: int
    cols: int
    context: ExitStack


def _write_windows_of(groups: list[_Group], tile, shape, finish) -> None:
    """The writing loop of :func:`write_geotiff_groups`: each window's tiles of every file of a
    group computed and compressed by dask tasks (WINDOWS_IN_FLIGHT windows at a time, across the
    groups), appended in window order; ``finish(g)`` once group g's last window is appended."""
    th, tw = tile
    windows = [(g, r0, c0) for g, group in enumerate(groups)
               for r0 in range(0, shape[0], group.rows) for c0 in range(0, shape[1], group.cols)]
    left = Counter(g for g, _, _ in windows)

    def window(g, r0, c0):
        group = groups[g]
        rs, cs = slice(r0 // th, (r0 + group.rows) // th), slice(c0 // tw, (c0 + group.cols) // tw)
        tasks = group.tasks[rs, cs]
        where = list(np.ndindex(tasks.shape))  # row-major, as tasks.flat
        done = dask.compute(*tasks.flat)
        return g, [(t, rs.start + i, cs.start + j, encoded) for (i, j), files in zip(where, done, strict=True)
                   for t, encoded in enumerate(files)]

    def append(done):
        g, tiles = done.result()
        for t, i, j, encoded in tiles:
            groups[g].files[t].append(i, j, encoded)
        left[g] -= 1
        if left[g] == 0:
            finish(g)

    with ThreadPoolExecutor(max_workers=WINDOWS_IN_FLIGHT) as computing:
        pending = deque()
        for g, r0, c0 in windows:
            pending.append(computing.submit(window, g, r0, c0))
            if len(pending) == WINDOWS_IN_FLIGHT:
                append(pending.popleft())
        while pending:
            append(pending.popleft())


def _write_windows(bytes_per_pixel: int, tile: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the windows :func:`write_geotiffs` computes at a time: square groups of
    whole tiles within WRITE_WINDOW_BYTES (at least one tile)."""
    pixels = max(1, WRITE_WINDOW_BYTES // max(bytes_per_pixel, 1))
    tiles = max(1, int(np.sqrt(pixels / (tile[0] * tile[1]))))
    return tiles * tile[0], tiles * tile[1]
