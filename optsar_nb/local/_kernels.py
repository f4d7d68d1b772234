"""Numpy kernels of the infilling's neighbourhood and time-window steps (docs/method.md B.3, B.4, B.10).

Every function works on plain arrays whose last two axes are (y, x), with NaN as "masked".
Neighbourhoods follow Earth Engine: only neighbours inside the array and unmasked take part,
and the output is masked where the centre pixel is masked (``reduceNeighborhood``'s default
``skipMasked=True``). The dask wrappers in ``steps.py`` call these per block with an explicit
halo, so a block edge inside the image sees its true neighbours and only the image edge is an
edge.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def circle_offsets(radius_px: float) -> np.ndarray:
    """(n, 2) integer (dy, dx) offsets of a circular kernel: ``dy**2 + dx**2 <= radius**2``.

    The rule of ``ee.Kernel.circle`` (a radius-3 circle has 29 cells); radius 1.5 is the full
    3 x 3 square because the diagonal neighbours lie at sqrt(2) < 1.5.
    """
    r = int(np.floor(radius_px))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius_px**2 + 1e-12
    return np.stack([dy[keep], dx[keep]], axis=1)


def circle_footprint(radius_px: float) -> np.ndarray:
    """Boolean 2-D footprint of :func:`circle_offsets`."""
    off = circle_offsets(radius_px)
    r = int(np.abs(off).max()) if len(off) else 0
    fp = np.zeros((2 * r + 1, 2 * r + 1), bool)
    fp[off[:, 0] + r, off[:, 1] + r] = True
    return fp


def _median_of_rows(values: np.ndarray) -> np.ndarray:
    """NaN-aware median along the last axis (mean of the two middle values for even counts)."""
    ordered = np.sort(values, axis=-1)  # NaN sorts last
    n = np.sum(~np.isnan(values), axis=-1)
    lo = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0]
    hi = np.take_along_axis(ordered, np.maximum(n // 2, 0)[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, (lo + hi) / 2, np.nan)


# Images per slab of the 3 x 3 median are chosen so that a slab holds about this many pixels:
# its dozen temporaries then stay in the CPU cache instead of streaming whole stacks through
# memory once per min/max.
MEDIAN_SLAB_PIXELS = 1 << 15


# Pixels per slab of the box mean (float64 values and float32 counts plus their partial sums).
BOX_SLAB_PIXELS = 1 << 15


def _med3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Elementwise median of three arrays (NaN in any input gives NaN)."""
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _median3x3(padded: np.ndarray) -> np.ndarray:
    """Median of every 3 x 3 window: (n, h + 2, w + 2) -> (n, h, w).

    Each column of three is sorted once (low, mid, high) and shared by the three windows that
    contain it; the window's median is then med3(max of the lows, med3 of the mids, min of the
    highs), an exact identity (Paeth, Graphics Gems 1990; the same selection as Devillard's
    19-exchange "opt_med9" network, with the column sorts shared) that costs about half the
    min/max passes. np.minimum/np.maximum propagate NaN, so a window holding any NaN yields
    NaN: the caller recognises incomplete windows by that.
    """
    n, hp, wp = padded.shape
    out = np.empty((n, hp - 2, wp - 2), dtype=padded.dtype)
    step = max(1, MEDIAN_SLAB_PIXELS // max(hp * wp, 1))
    for s in range(0, n, step):
        p = padded[s : s + step]
        a, b, c = p[:, :-2], p[:, 1:-1], p[:, 2:]  # rows y - 1, y, y + 1 of every column
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        mid = np.minimum(hi, c)
        np.maximum(hi, c, out=hi)
        low = np.minimum(lo, mid)
        np.maximum(lo, mid, out=mid)
        left, centre, right = (..., slice(0, -2)), (..., slice(1, -1)), (..., slice(2, None))
        max_low = np.maximum(np.maximum(low[left], low[centre]), low[right])
        min_high = np.minimum(np.minimum(hi[left], hi[centre]), hi[right])
        out[s : s + step] = _med3(max_low, _med3(mid[left], mid[centre], mid[right]), min_high)
    return out


def focal_median(a: np.ndarray, radius_px: float, *, inset: int = 0) -> np.ndarray:
    """NaN-aware circular focal median over the last two axes of ``a`` (any leading axes).

    Output pixel = median of the in-array, non-NaN values under the circle centred on it;
    NaN where the centre is NaN. Pixels whose whole neighbourhood is valid take a vectorised
    path (shared column sorts for the 3 x 3 kernel, a sort otherwise); the few others (image
    edges, next to masked pixels) are gathered and reduced with the NaN-aware median, so the
    result is exact everywhere. With ``inset`` >= the kernel's radius the array's border of
    ``inset`` pixels is a halo (as in :func:`box_mean`): the result covers only the inner
    region, with no padding and none of the halo's edge pixels taking the slow path.
    """
    a = np.asarray(a)
    if radius_px <= 0 or a.size == 0:
        return a[..., inset : a.shape[-2] - inset, inset : a.shape[-1] - inset].copy()
    offsets = circle_offsets(radius_px)
    r = int(np.abs(offsets).max())
    if inset >= r:  # the halo beyond the kernel's reach is not needed
        cut = inset - r
        padded = a[..., cut : a.shape[-2] - cut, cut : a.shape[-1] - cut]
    else:
        pad = [(0, 0)] * (a.ndim - 2) + [(r - inset, r - inset)] * 2
        padded = np.pad(a, pad, constant_values=np.nan)
    padded = np.ascontiguousarray(padded)  # the gather below indexes its flat memory
    h, w = padded.shape[-2] - 2 * r, padded.shape[-1] - 2 * r
    shape = (*a.shape[:-2], h, w)
    valid = ~np.isnan(padded[..., r : r + h, r : r + w])
    if len(offsets) == 9:  # the full 3 x 3 square
        out = _median3x3(padded.reshape(-1, h + 2, w + 2)).reshape(shape)
        full = ~np.isnan(out)  # NaN exactly where one of the nine is NaN
    else:
        cells = [padded[..., r + dy : r + dy + h, r + dx : r + dx + w] for dy, dx in offsets]
        count = np.zeros(shape, dtype=np.int16)
        for c in cells:
            count += ~np.isnan(c)
        full = valid & (count == len(offsets))
        out = np.where(full, _median_of_rows(np.stack(cells, axis=-1)), np.nan)
    out = out.astype(a.dtype, copy=False)
    partial = np.nonzero(valid & ~full)
    if partial[0].size:
        # one gather through flat indices: the window's cells lie at fixed offsets in the padded array
        corner = np.ravel_multi_index(partial, padded.shape)  # the pixel's own position shifted by (-r, -r)
        steps = np.asarray(offsets[:, 0] + r) * padded.shape[-1] + (offsets[:, 1] + r)
        gathered = padded.ravel()[corner[:, None] + steps[None, :]]
        out[partial] = _median_of_rows(gathered.astype("float64"))
    return out


def _window_sum(p: np.ndarray, n: int, out_len: int, axis: int) -> np.ndarray:
    """Sums of ``n`` consecutive entries along ``axis``: out[i] = p[i] + ... + p[i + n - 1].

    Built from power-of-two partial sums (n = 21 -> 16 + 4 + 1), so each output is the same
    fixed expression of its inputs wherever the array starts: chunking does not change a bit.
    """
    def take(x, start, length):
        idx = [slice(None)] * x.ndim
        idx[axis] = slice(start, start + length)
        return x[tuple(idx)]

    total, offset = None, 0
    size = p.shape[axis]
    power, block = 1, p
    while power <= n:
        if n & power:
            part = take(block, offset, out_len)
            total = part.copy() if total is None else total + part
            offset += power
        nxt = size - 2 * power + 1
        if 2 * power <= n and nxt > 0:
            block = take(block, 0, nxt) + take(block, power, nxt)
        power *= 2
    return total


def box_mean(a: np.ndarray, radius_px: int, *, inset: int = 0) -> np.ndarray:
    """NaN-aware mean over the (2r+1)^2 square (``ee.Kernel.square(r)``) on the last two axes.

    Only in-array, non-NaN neighbours count; NaN where the centre is NaN. Computed as the ratio
    of two box sums (values and valid counts) in float64. With ``inset`` >= r the array's
    border of ``inset`` pixels is a halo: no padding is needed and the result covers only the
    inner region (shape reduced by 2 x inset), which is what a block with a halo wants.
    """
    a = np.asarray(a, dtype="float64")
    shape = a.shape
    a = a.reshape(-1, *shape[-2:])  # (images, y, x): images are independent
    valid = ~np.isnan(a)
    r = radius_px
    if inset < r:
        pad = [(0, 0), (r - inset, r - inset), (r - inset, r - inset)]
        a, valid, inset = np.pad(a, pad, constant_values=np.nan), np.pad(valid, pad), r
    h, w = a.shape[-2] - 2 * inset, a.shape[-1] - 2 * inset
    src = (slice(None), slice(inset - r, a.shape[-2] - inset + r), slice(inset - r, a.shape[-1] - inset + r))
    centre = (slice(None), slice(inset, inset + h), slice(inset, inset + w))

    def box(x):
        return _window_sum(_window_sum(x[src], 2 * r + 1, h, 1), 2 * r + 1, w, 2)

    # slabs of a few images keep the partial sums in the CPU cache (the values do not change)
    out = np.empty((a.shape[0], h, w))
    step = max(1, BOX_SLAB_PIXELS // (a.shape[-2] * a.shape[-1]))
    for s in range(0, a.shape[0], step):
        x, ok = a[s : s + step], valid[s : s + step]
        if ok.all():  # every window is full (no NaN, no padding): its count is the kernel's size
            out[s : s + step] = box(x) / float((2 * r + 1) ** 2)
            continue
        sums = box(np.where(ok, x, 0.0))
        counts = box(ok.astype("float32"))  # integers: exact in float32
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + step] = np.where(ok[centre] & (counts > 0), sums / np.maximum(counts, 1), np.nan)
    return out.reshape(*shape[:-2], h, w)


def window_weights(optical_times, s1_times, window_days: float) -> np.ndarray:
    """(n_optical, n_s1) 0/1 matrix: S1 image j lies in optical date i's window.

    The window is ``[t - window_days, t + window_days)``, half-open as Earth Engine's
    ``filterDate(t.advance(-w, 'day'), t.advance(w, 'day'))``.
    """
    t_opt = pd.DatetimeIndex(optical_times).as_unit("ns").asi8[:, None]
    t_s1 = pd.DatetimeIndex(s1_times).as_unit("ns").asi8[None, :]
    half = int(round(window_days * 86400e9))
    return ((t_s1 >= t_opt - half) & (t_s1 < t_opt + half)).astype("float64")


def window_mean(s1: np.ndarray, weights: np.ndarray, min_db: float, max_db: float) -> np.ndarray:
    """Per-pixel mean of the S1 images in each optical window: (n_s1, y, x) -> (n_optical, y, x).

    Values below ``min_db`` or above ``max_db``, infinities and NaN are masked and left out of
    the mean; NaN where a window holds no valid value. Each window's images are summed in time
    order, so the result does not depend on the block shape (a matrix product's summation order
    could).
    """
    s1 = np.asarray(s1)
    valid = np.isfinite(s1) & (s1 >= min_db) & (s1 <= max_db)
    values = np.where(valid, s1, s1.dtype.type(0))  # input precision; sums accumulate in float64
    out = np.full((weights.shape[0], *s1.shape[1:]), np.nan)
    done: dict[bytes, int] = {}  # optical dates a few days apart often share their S1 window: reuse it
    for i, row in enumerate(weights):  # one optical date at a time, vectorised over pixels
        sel = np.flatnonzero(row)
        if sel.size == 0:
            continue
        key = sel.tobytes()
        if key in done:
            out[i] = out[done[key]]
            continue
        done[key] = i
        if sel[-1] - sel[0] + 1 == sel.size:  # consecutive images (time-sorted S1): views, no copies
            sel = slice(sel[0], sel[-1] + 1)
        total, count = values[sel].sum(axis=0, dtype="float64"), valid[sel].sum(axis=0, dtype="int16")
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out
