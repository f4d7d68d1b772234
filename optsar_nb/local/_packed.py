"""Stacks staged as the int16 their input files stored (value = stored x scale + offset): half
the size of float32, read back bit for bit as the file's reader unpacked them."""

from __future__ import annotations

import numpy as np
import zarr
from numba import njit

PACKED_NODATA = np.iinfo("int16").min  # NaN, in a packed stack


class Packed:
    """A float32 stack staged as the int16 its input file stored (value = stored x scale + offset,
    NaN as PACKED_NODATA): sliced like the Zarr array it holds, it reads float32 values computed
    as the input's reader computed them (``stack.read_geotiff``), hence identical."""

    def __init__(self, z: zarr.Array, scale: float, offset: float):
        self.z, self.scale, self.offset = z, np.float32(scale), np.float32(offset)
        self.shape, self.ndim, self.dtype = z.shape, z.ndim, np.dtype("float32")
        self.chunks = z.chunks

    def decode(self, q: np.ndarray) -> np.ndarray:
        return np.where(q == PACKED_NODATA, np.float32(np.nan), q.astype("float32") * self.scale + self.offset)

    def __getitem__(self, key) -> np.ndarray:
        return self.decode(np.asarray(self.z[key]))

    def put(self, values: np.ndarray, block_info=None) -> np.ndarray:
        """Stage one block of float values at its place (whole chunks); returns whether it is
        exactly representable (a (1, ...) bool array: a dask block)."""
        where = tuple(slice(*loc) for loc in block_info[0]["array-location"])
        q = np.empty(values.shape, "int16")
        exact = _pack(np.ascontiguousarray(values), self.scale, self.offset, q)
        if exact:
            self.z[where] = q
        return np.full((1,) * values.ndim, exact)


@njit(cache=True, error_model="numpy", nogil=True)
def _pack(values, scale32, offset32, out) -> bool:
    """Each value v of ``values`` (C-contiguous floats) as the int16 q = round((v - offset) / scale)
    (in float64) into ``out`` (PACKED_NODATA for NaN), in one pass; False as soon as one does not
    come back identical by :meth:`Packed.decode`'s formula, float32(q) x scale32 + offset32
    (infinite, out of the int16 range, not a whole multiple)."""
    scale, offset = np.float64(scale32), np.float64(offset32)
    flat, q = values.ravel(), out.ravel()
    for i in range(flat.size):
        v = flat[i]
        if np.isnan(v):
            q[i] = PACKED_NODATA
            continue
        r = np.round((np.float64(v) - offset) / scale)
        if not abs(r) <= 32767.0:  # PACKED_NODATA, -32768, is the one below
            return False
        q[i] = np.int16(r)
        if np.float32(q[i]) * scale32 + offset32 != v:
            return False
    return True
