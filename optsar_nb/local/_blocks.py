"""Dask plumbing of the local engine: dask arrays over in-memory arrays, the
halos that neighbourhood steps grow around spatial blocks, and the grid attributes
(``crs``, ``transform``) an array derived from a stack keeps.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr


class _Blocks:
    """An array as ``dask.array.from_array`` sees it, without the ``copy`` method through which
    dask copies a numpy array whole when the graph is built: each block is sliced (and copied:
    tasks may change it) when its task runs instead."""

    def __init__(self, values: np.ndarray):
        self.values = values
        self.shape, self.dtype, self.ndim = values.shape, values.dtype, values.ndim

    def __getitem__(self, key):
        return np.array(self.values[key])


class BlockArray:
    """A (lead..., H, W) array whose values are computed when a region is read: ``fn(rows, cols)``
    (slices) returns the region's (lead..., h, w) values. Sliced like numpy (slices of step 1 or
    integers on y and x, any index on the leading axes), it stands for a staged stack that is
    cheaper to recompute than to keep (``dask.array.from_array`` takes it too). With ``edge``, a
    region is computed by the ``edge`` x ``edge`` blocks of the grid it overlaps, one after the
    other: the same values (``fn`` gives a pixel the same value in any region), with a block's
    temporaries, not a large region's, in memory (and in the CPU's caches)."""

    def __init__(self, fn, shape, dtype, edge: int | None = None):
        self.fn, self.shape, self.dtype, self.ndim = fn, tuple(shape), np.dtype(dtype), len(shape)
        self.edge = edge

    def __getitem__(self, key):
        key = (key if isinstance(key, tuple) else (key,)) + (slice(None),) * self.ndim
        key = key[: self.ndim]
        spatial = []
        for k, n in zip(key[-2:], self.shape[-2:]):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:
                    raise IndexError("a BlockArray is read by slices of step 1")
                spatial.append(slice(start, max(start, stop)))
            else:
                k = int(k) + (n if int(k) < 0 else 0)
                spatial.append(slice(k, k + 1))
        out = self._region(*spatial)
        keep = tuple(slice(None) if isinstance(k, slice) else 0 for k in key[-2:])
        return out[(*key[:-2], *keep)]

    def _region(self, rows: slice, cols: slice) -> np.ndarray:
        e = self.edge
        if e is None or (rows.start // e >= (rows.stop - 1) // e and cols.start // e >= (cols.stop - 1) // e):
            return self.fn(rows, cols)
        out = np.empty((*self.shape[:-2], rows.stop - rows.start, cols.stop - cols.start), self.dtype)
        for r0, r1 in _cuts(rows, e):
            for c0, c1 in _cuts(cols, e):
                out[..., r0 - rows.start:r1 - rows.start, c0 - cols.start:c1 - cols.start] = self.fn(slice(r0, r1),
                                                                                                     slice(c0, c1))
        return out


def _cuts(s: slice, edge: int) -> list[tuple[int, int]]:
    """The (start, stop) pieces of ``s`` within the grid's ``edge`` blocks."""
    ends = [s.start, *range((s.start // edge + 1) * edge, s.stop, edge), s.stop]
    return list(zip(ends[:-1], ends[1:]))


def lazy_array(values: np.ndarray, chunks) -> da.Array:
    """A dask array over an in-memory array that holds one block per task, not a copy of the
    whole (``dask.array.from_array`` copies the whole array up front). ``name=False``: the data
    are not hashed."""
    return da.from_array(_Blocks(values), chunks=chunks, name=False)


def _grid_attrs(a: xr.DataArray) -> dict:
    return {k: v for k, v in a.attrs.items() if k in ("crs", "transform")}


def with_halo(arr: da.Array, depth: int, fill) -> da.Array:
    """Blocks of a (lead, y, x) dask array grown by ``depth`` pixels on y and x.

    Beyond the image the halo holds ``fill`` (NaN, or MISSING for states), so image edges
    behave as Earth Engine's: there are no neighbours there, not copies of the edge.
    """
    if depth == 0:
        return arr
    padded = da.pad(arr, ((0, 0), (depth, depth), (depth, depth)), mode="constant", constant_values=fill)

    def grow(chunks):
        chunks = list(chunks)
        chunks[0] += depth
        chunks[-1] += depth
        return tuple(chunks)

    padded = padded.rechunk((arr.chunks[0], grow(arr.chunks[1]), grow(arr.chunks[2])))
    return da.overlap.overlap(padded, depth={0: 0, 1: depth, 2: depth}, boundary="none")


def trim_halo(arr: da.Array, depth: int, chunks) -> da.Array:
    """Undo :func:`with_halo` on a blockwise result whose blocks still carry the halo."""
    if depth == 0:
        return arr
    return arr.map_blocks(lambda b: b[..., depth : b.shape[-2] - depth, depth : b.shape[-1] - depth],
                          chunks=chunks, dtype=arr.dtype)


def _dask(a: xr.DataArray, chunks) -> da.Array:
    data = a.data if isinstance(a.data, da.Array) else lazy_array(np.asarray(a.data), chunks)
    return data.rechunk(chunks)


WHOLE_CHUNK_BYTES = 256 * 2**20  # the largest chunk of its own that :func:`whole_blocks` keeps


def whole_blocks(a: xr.DataArray, edge: int) -> da.Array:
    """A (time, y, x) array as dask chunks of whole time series in whole ``edge`` x ``edge`` blocks.

    Chunks of its own (a reader's windows) that are whole multiples of ``edge`` on y and x and
    within WHOLE_CHUNK_BYTES are kept, one task each from reading to staging, so that no piece of
    a window moves between the workers of a cluster; others are cut into ``edge`` blocks.
    """
    data = a.data if isinstance(a.data, da.Array) else lazy_array(np.asarray(a.data), (-1, edge, edge))
    data = data.rechunk({0: -1})
    whole = all(c % edge == 0 for axis in data.chunks[1:] for c in axis[:-1])
    if whole and np.prod(data.chunksize, dtype=float) * data.dtype.itemsize <= WHOLE_CHUNK_BYTES:
        return data
    return data.rechunk((-1, edge, edge))
