"""Kernels of the infilling's neighbourhood and time-window steps (docs/method.md B.3, B.4, B.10).

The window means, box means and 3 x 3 medians, and the covariates built from them, are compiled
with numba (image by image, in scratch that stays in the CPU cache); other circular medians are
numpy. ``cache=True``: worker processes load the compiled code from disk.

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
from numba import njit


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


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _med3(a, b, c):
    """Median of three (not NaN)."""
    return max(min(a, b), min(max(a, b), c))


@njit(cache=True, error_model="numpy", nogil=True)
def _median3x3(padded: np.ndarray) -> np.ndarray:
    """NaN-aware median of every 3 x 3 window: (n, h + 2, w + 2) -> (n, h, w); NaN where the
    centre is NaN (:func:`_median3x3_image` on each image)."""
    n, hp, wp = padded.shape
    out = np.empty((n, hp - 2, wp - 2), dtype=padded.dtype)
    scratch = np.empty((3, wp), padded.dtype)
    for i in range(n):
        _median3x3_image(padded[i], out[i], scratch)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def _median3x3_image(padded, out, scratch):
    """The NaN-aware 3 x 3 median of one image: (h + 2, w + 2) ``padded`` -> (h, w) ``out``
    (``scratch``: (3, >= w + 2) of the padded's type); NaN where the centre is NaN.

    One image row at a time: each column of three is sorted once (low, mid, high) and shared by
    the three windows that contain it; a full window's median is then med3(max of the lows,
    med3 of the mids, min of the highs), an exact identity (Paeth, Graphics Gems 1990; the same
    selection as Devillard's 19-exchange "opt_med9" network, with the column sorts shared). A
    window holding NaN (the image's edge, masked pixels) sorts its valid values: the median, or
    the mean of the two middle ones (in float64) for an even count, as :func:`_median_of_rows`.
    """
    hp, wp = padded.shape
    low, mid, high = scratch[0], scratch[1], scratch[2]
    values = np.empty(9)
    for y in range(hp - 2):
        bad_prev2 = bad_prev = False
        for c in range(wp):
            a, b, d = padded[y, c], padded[y + 1, c], padded[y + 2, c]
            bad = np.isnan(a) or np.isnan(b) or np.isnan(d)
            lo, hi = min(a, b), max(a, b)
            m = min(hi, d)
            high[c] = max(hi, d)
            low[c], mid[c] = min(lo, m), max(lo, m)
            if c >= 2:
                x = c - 2
                if not (bad or bad_prev or bad_prev2):
                    max_low = max(max(low[x], low[x + 1]), low[x + 2])
                    min_high = min(min(high[x], high[x + 1]), high[x + 2])
                    out[y, x] = _med3(max_low, _med3(mid[x], mid[x + 1], mid[x + 2]), min_high)
                elif np.isnan(padded[y + 1, x + 1]):
                    out[y, x] = np.nan
                else:
                    count = 0
                    for dy in range(3):
                        for dx in range(3):
                            v = padded[y + dy, x + dx]
                            if not np.isnan(v):
                                values[count] = v
                                count += 1
                    ordered = np.sort(values[:count])
                    out[y, x] = (ordered[(count - 1) // 2] + ordered[count // 2]) / 2
            bad_prev2, bad_prev = bad_prev, bad


def focal_median(a: np.ndarray, radius_px: float, *, inset: int = 0) -> np.ndarray:
    """NaN-aware circular focal median over the last two axes of ``a`` (any leading axes).

    Output pixel = median of the in-array, non-NaN values under the circle centred on it;
    NaN where the centre is NaN. The 3 x 3 kernel (radius 1.5, the method's) is compiled
    (:func:`_median3x3`); other circles take a vectorised sort where the whole neighbourhood is
    valid, and gather the few others (image edges, next to masked pixels) for the NaN-aware
    median, so the result is exact everywhere. With ``inset`` >= the kernel's radius the array's border of
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
    if len(offsets) == 9:  # the full 3 x 3 square: compiled, exact everywhere
        return _median3x3(padded.reshape(-1, h + 2, w + 2)).reshape(shape).astype(a.dtype, copy=False)
    cells = [padded[..., r + dy : r + dy + h, r + dx : r + dx + w] for dy, dx in offsets]
    count = np.zeros(shape, dtype=np.int16)
    for c in cells:
        count += ~np.isnan(c)
    valid = ~np.isnan(padded[..., r : r + h, r : r + w])
    full = valid & (count == len(offsets))
    out = np.where(full, _median_of_rows(np.stack(cells, axis=-1)), np.nan).astype(a.dtype, copy=False)
    partial = np.nonzero(valid & ~full)
    if partial[0].size:
        # one gather through flat indices: the window's cells lie at fixed offsets in the padded array
        corner = np.ravel_multi_index(partial, padded.shape)  # the pixel's own position shifted by (-r, -r)
        steps = np.asarray(offsets[:, 0] + r) * padded.shape[-1] + (offsets[:, 1] + r)
        gathered = padded.ravel()[corner[:, None] + steps[None, :]]
        out[partial] = _median_of_rows(gathered.astype("float64"))
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def _window_sums(x, n, out, scratch_a, scratch_b):
    """Sums of ``n`` consecutive rows of the 2-D ``x``: out[i] = x[i] + ... + x[i + n - 1] for
    i < len(out), vectorised along the rows; ``scratch_*``: arrays shaped as ``x``.

    Built from power-of-two partial sums (n = 21 -> 1 + 4 + 16, added in that order), so each
    output is the same fixed expression of its inputs wherever the array starts: chunking does
    not change a bit.
    """
    size, m = x.shape
    cur, first, offset, power, into_a = x, True, 0, 1, True
    while power <= n:
        if n & power:
            for i in range(out.shape[0]):
                for c in range(m):
                    out[i, c] = cur[offset + i, c] if first else out[i, c] + cur[offset + i, c]
            first = False
            offset += power
        if 2 * power <= n:  # the partial sums of 2 * power rows
            nxt = scratch_a if into_a else scratch_b
            into_a = not into_a
            for j in range(size - 2 * power + 1):
                for c in range(m):
                    nxt[j, c] = cur[j, c] + cur[j + power, c]
            cur = nxt
        power *= 2


@njit(cache=True, error_model="numpy", nogil=True)
def _box_sums(x, k, scratch, col, col_t, out_t):
    """(w, h) box sums, transposed, of the (h + k - 1, w + k - 1) ``x``: down the columns, then
    (transposed, so again down the columns) along the rows."""
    _window_sums(x, k, col, scratch[0], scratch[1])
    col_t[:, :] = col.T
    _window_sums(col_t, k, out_t, scratch[2], scratch[3])


@njit(cache=True, error_model="numpy", nogil=True)
def _box_mean(a, r, inset):
    """:func:`box_mean` of a (n, H, W) float64 array whose halo ``inset`` >= r, one image at a
    time (:func:`_box_mean_image`)."""
    n, H, W = a.shape
    out = np.empty((n, H - 2 * inset, W - 2 * inset))
    scratch = _box_scratch(H - 2 * inset, W - 2 * inset, r)
    for i in range(n):
        _box_mean_image(a[i], r, inset, out[i], scratch)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def _box_scratch(h, w, r):
    """Scratch arrays of :func:`_box_mean_image` for an (h, w) output of radius ``r``."""
    hs, ws = h + 2 * r, w + 2 * r
    return (np.empty((hs, ws)), np.empty((hs, ws)), np.empty((4, max(hs, ws), max(hs, ws))),
            np.empty((h, ws)), np.empty((ws, h)), np.empty((w, h)), np.empty((w, h)))


@njit(cache=True, error_model="numpy", nogil=True)
def _box_mean_image(a, r, inset, out, scratch):
    """The box mean of one (H, W) float64 image whose halo ``inset`` >= r into (H - 2 inset,
    W - 2 inset) ``out``; its partial sums stay in the CPU cache (``scratch``: :func:`_box_scratch`)."""
    vals, counts, partial, col, col_t, sums, n_valid = scratch
    H, W = a.shape
    h, w, k, o = H - 2 * inset, W - 2 * inset, 2 * r + 1, inset - r
    hs, ws = h + 2 * r, w + 2 * r  # the rows and columns the windows read
    window = a[o : o + hs, o : o + ws]
    full = True
    for y in range(hs):
        for c in range(ws):
            full &= not np.isnan(window[y, c])
    if full:  # every window holds k * k values
        vals[:, :] = window
    else:
        for y in range(hs):
            for c in range(ws):
                v = window[y, c]
                ok = not np.isnan(v)
                vals[y, c], counts[y, c] = (v, 1.0) if ok else (0.0, 0.0)
    _box_sums(vals, k, partial, col, col_t, sums)
    if full:
        for y in range(h):
            for x in range(w):
                out[y, x] = sums[x, y] / (k * k)
        return
    _box_sums(counts, k, partial, col, col_t, n_valid)
    for y in range(h):
        for x in range(w):
            ok = not np.isnan(a[inset + y, inset + x]) and n_valid[x, y] > 0
            out[y, x] = sums[x, y] / n_valid[x, y] if ok else np.nan


def box_mean(a: np.ndarray, radius_px: int, *, inset: int = 0) -> np.ndarray:
    """NaN-aware mean over the (2r+1)^2 square (``ee.Kernel.square(r)``) on the last two axes.

    Only in-array, non-NaN neighbours count; NaN where the centre is NaN. Computed as the ratio
    of two box sums (values and valid counts) in float64, compiled, one image at a time (its
    partial sums stay in the CPU cache). With ``inset`` >= r the array's border of ``inset``
    pixels is a halo: no padding is needed and the result covers only the inner region (shape
    reduced by 2 x inset), which is what a block with a halo wants.
    """
    a = np.asarray(a, dtype="float64")
    shape = a.shape
    a = a.reshape(-1, *shape[-2:])  # (images, y, x): images are independent
    r = int(radius_px)
    if inset < r:
        pad = [(0, 0), (r - inset, r - inset), (r - inset, r - inset)]
        a, inset = np.pad(a, pad, constant_values=np.nan), r
    out = _box_mean(np.ascontiguousarray(a), r, inset)
    return out.reshape(*shape[:-2], *out.shape[-2:])


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
    order (float64), so the result does not depend on the block shape (a matrix product's
    summation order could).
    """
    s1 = np.ascontiguousarray(s1)
    if s1.dtype.kind != "f":
        s1 = s1.astype("float64")
    sel = [np.flatnonzero(row) for row in weights]
    starts = np.cumsum([0] + [len(s) for s in sel])
    # optical dates a few days apart often share their S1 window: computed once
    first: dict[bytes, int] = {}
    source = np.array([first.setdefault(s.tobytes(), i) for i, s in enumerate(sel)], dtype=np.intp)
    index = np.concatenate(sel).astype(np.intp) if sel else np.zeros(0, np.intp)
    return _window_mean(s1, starts.astype(np.intp), index, source, float(min_db), float(max_db))


@njit(cache=True, error_model="numpy", nogil=True)
def _window_mean(s1, starts, index, source, min_db, max_db):
    """:func:`window_mean` with date i's images ``index[starts[i]:starts[i + 1]]``; a date whose
    ``source`` is an earlier date with the same images copies it."""
    T, (_, H, W) = starts.shape[0] - 1, s1.shape
    out = np.full((T, H, W), np.nan)
    total, count = np.empty((H, W)), np.empty((H, W), np.int32)
    for i in range(T):
        if source[i] != i:
            out[i] = out[source[i]]
            continue
        if starts[i] == starts[i + 1]:
            continue
        for k in range(starts[i], starts[i + 1]):
            j = index[k]
            for y in range(H):
                for x in range(W):
                    v = s1[j, y, x]
                    ok = np.isfinite(v) and v >= min_db and v <= max_db
                    value = np.float64(v) if ok else 0.0
                    if k == starts[i]:
                        total[y, x], count[y, x] = value, ok
                    else:
                        total[y, x] += value
                        count[y, x] += ok
        for y in range(H):
            for x in range(W):
                if count[y, x] > 0:
                    out[i, y, x] = total[y, x] / count[y, x]
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def covariates_3x3(vv_win, vh_win, vv_mean, vh_mean, r_n, m, fusion_only, out):
    """B.3 + B.4 on one block with the 3 x 3 focal median (``steps.covariate_block``, which
    documents the covariates), compiled: image by image, each band's box mean and medians in
    scratch that stays in the CPU cache, written into ``out`` (float32, rounded once).

    ``*_win``: (T, h + 2 d, w + 2 d) float64 window means with their halo d = r_n + m (m: the
    median's halo); ``*_mean``: (T,) AOI means; ``out``: (8, T, h, w), or (2, T, h, w) when
    ``fusion_only``. The same operations on the same values as the numpy composition of
    :func:`box_mean` and :func:`focal_median`.
    """
    T, hh, wh = vv_win.shape
    depth = r_n + m
    h, w = hh - 2 * depth, wh - 2 * depth
    nh, nw = h + 2 * m, w + 2 * m  # the box mean over the core and the median's halo
    nmean, diff, med = np.empty((nh, nw)), np.empty((nh, nw)), np.empty((h, w))
    box_scratch, med_scratch = _box_scratch(nh, nw, r_n), np.empty((3, max(nw, w + 2)))
    c0 = m - 1  # where the median's 3 x 3 windows start in an array with the median's halo
    for t in range(T):
        for k in range(2):
            win = vv_win[t] if k == 0 else vh_win[t]
            mean = vv_mean[t] if k == 0 else vh_mean[t]
            _box_mean_image(win, r_n, r_n, nmean, box_scratch)
            _median3x3_image(nmean[c0 : c0 + h + 2, c0 : c0 + w + 2], med, med_scratch)
            nmean_out = k if fusion_only else 4 + k
            for y in range(h):
                for x in range(w):
                    out[nmean_out, t, y, x] = med[y, x]
            if fusion_only:
                continue
            for y in range(h):
                for x in range(w):
                    out[k, t, y, x] = mean if np.isfinite(win[depth + y, depth + x]) else np.nan
            _median3x3_image(win[depth - 1 : depth + h + 1, depth - 1 : depth + w + 1], med, med_scratch)
            for y in range(h):
                for x in range(w):
                    out[2 + k, t, y, x] = med[y, x] - mean
            for y in range(nh):
                for x in range(nw):
                    diff[y, x] = win[depth - m + y, depth - m + x] - nmean[y, x]
            _median3x3_image(diff[c0 : c0 + h + 2, c0 : c0 + w + 2], med, med_scratch)
            for y in range(h):
                for x in range(w):
                    out[6 + k, t, y, x] = med[y, x]
