"""Pixel grids of image stacks: coordinates from the affine transform and back, and
nearest-neighbour alignment of one stack onto another's grid (reprojected when their coordinate
systems differ).

A stack's grid is its ``y``/``x`` pixel-centre coordinates with ``attrs["crs"]`` (WKT) and
``attrs["transform"]`` (:mod:`optsar_nb.local.stack`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import StackMismatch


def grid_coords(transform, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of a north-up grid."""
    a, b, c, d, e, f = transform[:6]
    if b != 0 or d != 0:
        raise StackMismatch("rotated grids are not supported: warp the raster to a north-up grid first")
    x = c + (np.arange(width) + 0.5) * a
    y = f + (np.arange(height) + 0.5) * e
    return y, x


def transform_from_coords(y: np.ndarray, x: np.ndarray) -> tuple[float, ...]:
    """Affine coefficients from regularly spaced pixel-centre coordinates."""
    if len(x) < 2 or len(y) < 2:
        raise StackMismatch("a grid needs at least 2 x 2 pixels to define its resolution")
    xres = float(x[1] - x[0])
    yres = float(y[1] - y[0])
    return (xres, 0.0, float(x[0]) - xres / 2, 0.0, yres, float(y[0]) - yres / 2)


def _other_crs(source: xr.DataArray, target: xr.DataArray):
    """(source CRS, target CRS) when both are known and differ, else None."""
    from pyproj import CRS

    crs_s, crs_t = source.attrs.get("crs"), target.attrs.get("crs")
    if crs_s and crs_t and CRS.from_user_input(crs_s) != CRS.from_user_input(crs_t):
        return CRS.from_user_input(crs_s), CRS.from_user_input(crs_t)
    return None


def _check_overlap(source: xr.DataArray, target: xr.DataArray, what: str) -> None:
    """StackMismatch naming ``what`` when ``source`` (in its own coordinate system) does not
    overlap ``target`` at all."""
    xs, ys = np.meshgrid([float(source.x.min()), float(source.x.max())], [float(source.y.min()), float(source.y.max())])
    crs = _other_crs(source, target)
    if crs is not None:
        from pyproj import Transformer

        xs, ys = Transformer.from_crs(crs[0], crs[1], always_xy=True).transform(xs, ys)
    sx0, sx1, sy0, sy1 = np.min(xs), np.max(xs), np.min(ys), np.max(ys)
    tx0, tx1 = float(target.x.min()), float(target.x.max())
    ty0, ty1 = float(target.y.min()), float(target.y.max())
    if sx1 < tx0 or tx1 < sx0 or sy1 < ty0 or ty1 < sy0:
        raise StackMismatch(
            f"{what} does not overlap the optical grid: it covers x {sx0:.0f} to {sx1:.0f}, y {sy0:.0f} to "
            f"{sy1:.0f}, the optical images x {tx0:.0f} to {tx1:.0f}, y {ty0:.0f} to {ty1:.0f} (pixel centres, "
            "in the optical grid's coordinate system): check that both cover the same area")


def _nearest(coords: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest of ``coords`` (monotonic) to each of ``values``, and the distance to it."""
    order = np.argsort(coords)
    c = coords[order]
    i = np.clip(np.searchsorted(c, values), 1, max(len(c) - 1, 1))
    j = np.where(np.abs(values - c[i - 1]) <= np.abs(values - c[np.minimum(i, len(c) - 1)]), i - 1, i)
    j = np.minimum(j, len(c) - 1)
    return order[j], np.abs(c[j] - values)


def _reproject_nearest(source: xr.DataArray, target: xr.DataArray, crs) -> xr.DataArray:
    """``source`` on ``target``'s grid in another coordinate system, by nearest neighbour (lazy):
    each target pixel centre is carried into the source's system and takes the source pixel
    whose centre is nearest; NaN beyond half a source pixel from the source's extent."""
    from pyproj import Transformer

    xx, yy = np.meshgrid(target.x.values, target.y.values)
    sx, sy = Transformer.from_crs(crs[1], crs[0], always_xy=True).transform(xx, yy)
    ix, dx = _nearest(source.x.values, sx)
    iy, dy = _nearest(source.y.values, sy)
    xres = abs(float(source.x[1] - source.x[0])) if source.sizes["x"] > 1 else np.inf
    yres = abs(float(source.y[1] - source.y[0])) if source.sizes["y"] > 1 else np.inf
    picked = source.rename(x="source_x", y="source_y").isel(
        source_x=xr.DataArray(ix, dims=("y", "x")), source_y=xr.DataArray(iy, dims=("y", "x")))
    picked = picked.drop_vars(["source_x", "source_y"]).assign_coords(x=target.x.values, y=target.y.values)
    inside = xr.DataArray((dx <= xres / 2 + 1e-6) & (dy <= yres / 2 + 1e-6), dims=("y", "x"))
    return picked.where(inside).transpose(*source.dims)


def same_grid(a: xr.DataArray, b: xr.DataArray) -> bool:
    return (
        a.sizes["y"] == b.sizes["y"]
        and a.sizes["x"] == b.sizes["x"]
        and np.allclose(a.x.values, b.x.values)
        and np.allclose(a.y.values, b.y.values)
    )


def align_to(source: xr.DataArray, target: xr.DataArray, *, what: str = "the stack") -> xr.DataArray:
    """Nearest-neighbour resampling of ``source`` onto ``target``'s pixel grid (lazy).

    Used for SCL at 20 m onto the 10 m optical grid and for S1 onto the optical grid.
    Nearest neighbour is Earth Engine's default resampling, so both engines agree.
    Target pixels outside the source's extent become NaN (missing). A source on another
    coordinate system is reprojected the same way (each target pixel centre takes the nearest
    source pixel). Raises StackMismatch naming ``what`` when the two do not overlap at all.
    """
    _check_overlap(source, target, what)
    crs = _other_crs(source, target)
    if crs is not None:
        out = _reproject_nearest(source, target, crs)
        out.attrs = {**source.attrs, "crs": target.attrs.get("crs"), "transform": target.attrs.get("transform")}
        return out
    if same_grid(source, target):
        return source
    xres = abs(float(source.x[1] - source.x[0]))
    yres = abs(float(source.y[1] - source.y[0]))
    out = source.sel(x=target.x.values, y=target.y.values, method="nearest", tolerance=None)
    # pixels farther than half a source pixel from any source centre lie outside the source
    inside_x = np.abs(out.x.values - target.x.values) <= xres / 2 + 1e-9
    inside_y = np.abs(out.y.values - target.y.values) <= yres / 2 + 1e-9
    out = out.assign_coords(x=target.x.values, y=target.y.values)
    if not (inside_x.all() and inside_y.all()):
        keep = xr.DataArray(inside_y, dims="y") & xr.DataArray(inside_x, dims="x")
        out = out.where(keep)
    out.attrs = {**source.attrs, "crs": target.attrs.get("crs"), "transform": target.attrs.get("transform")}
    return out
