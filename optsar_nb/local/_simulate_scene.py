"""The simulated scene that the optical and the radar generators share (:mod:`optsar_nb.local.simulate`).

Its grid and period (:class:`Scene`), counter-based random numbers (a hash of integer keys, so
that every value is a deterministic function of seed, global pixel position and date), and its
fields: Voronoi parcels of a few land covers, each with a seasonal NDVI curve.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------
# the scene
DEMO_SEED = 20210115  # chosen among nearby seeds: all six covers present, ~40 % cloudy
EPSG = 32755  # WGS 84 / UTM zone 55S
# Centroid of the published 'Central West NSW' case site, in EPSG:32755 metres
SITE_CENTRE_M = (668390.0, 6533630.0)
PIXEL_M = 10.0
YEAR_DAYS = 365.25


@dataclass(frozen=True)
class Scene:
    """What to simulate: grid size (px), period (start inclusive, end exclusive), seed.

    ``optical_limit`` keeps only the first N optical images (benchmark stacks of a given size).
    """

    height: int = 80
    width: int = 80
    start: str = "2021-01-01"
    end: str = "2022-01-01"
    seed: int = DEMO_SEED
    field_px: tuple[float, float] = (14.0, 26.0)  # parcel spacing (rows, cols): elongated E-W
    optical_limit: int | None = None

    @property
    def transform(self) -> tuple[float, ...]:
        """Affine coefficients of a north-up grid centred on the case site, snapped to 10 m."""
        x0 = round((SITE_CENTRE_M[0] - self.width * PIXEL_M / 2) / PIXEL_M) * PIXEL_M
        y0 = round((SITE_CENTRE_M[1] + self.height * PIXEL_M / 2) / PIXEL_M) * PIXEL_M
        return (PIXEL_M, 0.0, x0, 0.0, -PIXEL_M, y0)

    @property
    def suffix(self) -> str:
        return f"_S2_{self.start}_{self.end}"


DEMO = Scene()


# --------------------------------------------------------------------------------------------
# counter-based random numbers: splitmix64 over integer keys
def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hash(*keys) -> np.ndarray:
    """A uint64 hash of integer keys (broadcast together); equal keys give equal hashes."""
    arrays = np.broadcast_arrays(*[np.asarray(k, dtype=np.int64) for k in keys])
    h = np.full(arrays[0].shape, 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in arrays:
            h = _mix(h ^ k.view(np.uint64))
    return h


def _uniform(h: np.ndarray) -> np.ndarray:
    """Uniform in [0, 1) from the top 53 bits of a hash."""
    return (h >> np.uint64(11)).view(np.int64).astype(np.float64) * 2.0**-53


def _normals(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent standard normals from one hash (Box-Muller on its two 32-bit halves)."""
    u1 = ((h >> np.uint64(32)).view(np.int64).astype(np.float64) + 0.5) * 2.0**-32
    angle = ((h & np.uint64(0xFFFFFFFF)).view(np.int64).astype(np.float64) + 0.5) * (2 * np.pi * 2.0**-32) - np.pi
    radius = np.sqrt(-2.0 * np.log(u1))
    cos = np.cos(angle)
    return radius * cos, radius * np.copysign(np.sqrt(1 - cos * cos), angle)


# streams: one integer per kind of random quantity, so that no two kinds share numbers
SITE, PARCEL, HETEROGENEITY, PIXEL, CLOUD, OPTICAL_DATE, RADAR_DATE, RAIN, WIND, SPECKLE = range(1, 11)


def _value_noise(seed, key, rows, cols, spacing_px: float) -> np.ndarray:
    """Smooth Gaussian random field, N(0, 1) at every pixel, correlation length ~spacing_px.

    Gaussian values on a lattice of ``spacing_px`` (hashed from the global lattice node),
    interpolated with smoothstep weights and renormalised to unit variance. ``rows`` (r,)
    and ``cols`` (c,) are global pixel indices; returns (r, c).
    """
    gy, gx = (rows + 0.5) / spacing_px, (cols + 0.5) / spacing_px
    iy, ix = np.floor(gy).astype(np.int64), np.floor(gx).astype(np.int64)
    wy, wx = (lambda f: f * f * (3 - 2 * f))(gy - iy), (lambda f: f * f * (3 - 2 * f))(gx - ix)
    ly, lx = np.arange(iy.min(), iy.max() + 2), np.arange(ix.min(), ix.max() + 2)
    lattice = _normals(_hash(seed, *key, ly[:, None], lx[None, :]))[0]
    jx, jy = ix - lx[0], iy - ly[0]
    along_x = lattice[:, jx] * (1 - wx) + lattice[:, jx + 1] * wx
    field = along_x[jy] * (1 - wy)[:, None] + along_x[jy + 1] * wy[:, None]
    norm = np.sqrt((1 - wy) ** 2 + wy**2)[:, None] * np.sqrt((1 - wx) ** 2 + wx**2)[None, :]
    return field / norm


def _fbm(seed, key, rows, cols, spacing_px: float, octaves: int = 3) -> np.ndarray:
    """Sum of value-noise octaves (spacing halves, weight halves), N(0, 1) at every pixel."""
    weights = 0.5 ** np.arange(octaves)
    total = sum(w * _value_noise(seed, (*key, o), rows, cols, spacing_px / 2**o) for o, w in enumerate(weights))
    return total / np.sqrt((weights**2).sum())


# --------------------------------------------------------------------------------------------
# land cover: a double-logistic NDVI season per class (southern hemisphere calendar)
@dataclass(frozen=True)
class LandCover:
    name: str
    share: float  # probability that a parcel has this cover
    base_ndvi: float  # dormant-season NDVI
    amplitude: float  # NDVI rise at the peak of the season
    sos_doy: float  # start of season, day of year
    season_days: float  # start to end of season
    rise_days: float  # logistic time scale of green-up
    fall_days: float  # logistic time scale of senescence
    volume_db: float  # radar volume scattering at full cover, relative to a crop canopy


LAND_COVERS = (
    LandCover("winter crop", 0.34, 0.16, 0.66, 160, 140, 10, 9, 0.0),
    LandCover("summer crop", 0.15, 0.15, 0.68, 335, 110, 9, 10, 1.0),
    LandCover("pasture", 0.25, 0.28, 0.34, 95, 190, 20, 18, -1.0),
    LandCover("woodland", 0.12, 0.60, 0.10, 230, 130, 25, 25, 5.0),
    LandCover("bare/fallow", 0.10, 0.13, 0.07, 190, 50, 8, 12, -4.0),
    LandCover("water", 0.04, -0.25, 0.05, 300, 60, 15, 15, 0.0),
)
WATER = len(LAND_COVERS) - 1
SOS_SD_DAYS, SEASON_SD_DAYS = 10.0, 8.0  # field-to-field variation of timing
AMPLITUDE_RANGE = (0.8, 1.1)  # field-to-field factor on the amplitude
BASE_SD = 0.02  # field-to-field NDVI offset
HETEROGENEITY_PX, HETEROGENEITY_SD = 6.0, 0.06  # within-field variation (relative amplitude)
PIXEL_NOISE_SD = 0.015  # NDVI, independent per pixel and date
VEGETATION_NDVI = 0.35  # SCL 4 (vegetation) above, SCL 5 (bare soil) below


def _parcels(seed, rows, cols, field_px) -> np.ndarray:
    """Parcel id per pixel (r, c): nearest jittered seed point (a Voronoi tessellation)."""
    py, px = (rows[:, None] + 0.5) / field_px[0], (cols[None, :] + 0.5) / field_px[1]
    ci, cj = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
    best = np.full(np.broadcast_shapes(py.shape, px.shape), np.inf)
    parcel = np.zeros(best.shape, np.int64)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            h = _hash(seed, SITE, ci + di, cj + dj)
            jitter_y = 0.15 + 0.7 * _uniform(h)
            jitter_x = 0.15 + 0.7 * _uniform(_mix(h))
            d2 = (py - (ci + di + jitter_y)) ** 2 + (px - (cj + dj + jitter_x)) ** 2
            closer = d2 < best
            best = np.where(closer, d2, best)
            parcel = np.where(closer, ((ci + di) << 32) + (cj + dj), parcel)
    return parcel


def _parcel_traits(seed, parcel_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Cover class and seasonal parameters of each parcel id (1-D), from its hash."""
    u = [_uniform(_hash(seed, PARCEL, parcel_ids, k)) for k in range(4)]
    z = [_normals(_hash(seed, PARCEL, parcel_ids, 10 + k)) for k in range(2)]
    cover = np.searchsorted(np.cumsum([c.share for c in LAND_COVERS]), u[0] * sum(c.share for c in LAND_COVERS))
    cover = np.minimum(cover, WATER)
    attr = {f.name: np.array([getattr(c, f.name) for c in LAND_COVERS])[cover]
            for f in dataclasses.fields(LandCover) if f.name not in ("name", "share")}
    water = cover == WATER
    return {
        **attr,
        "cover": cover,
        "sos_doy": attr["sos_doy"] + SOS_SD_DAYS * z[0][0],
        "season_days": attr["season_days"] + SEASON_SD_DAYS * z[0][1],
        "amplitude": attr["amplitude"] * (AMPLITUDE_RANGE[0] + np.diff(AMPLITUDE_RANGE)[0] * u[1]),
        "base_ndvi": attr["base_ndvi"] + np.where(water, 0, BASE_SD * z[1][0]),
        "roughness_db": np.where(water, 0.0, 1.5 * z[1][1]),  # soil roughness, radar
        "moisture_gain": 0.7 + 0.6 * u[2],  # soil texture: how wet the field gets after rain
    }


def _season(traits, days: np.ndarray) -> np.ndarray:
    """Seasonal fraction (0..1) per date (T,) and parcel (P,): a double logistic each year."""
    doy = days[:, None] % YEAR_DAYS
    # phase since start of season, in (-120, 245]: one season per year, no overlap
    phase = (doy - traits["sos_doy"][None, :] + 120.0) % YEAR_DAYS - 120.0
    rise = 1 / (1 + np.exp(-phase / traits["rise_days"]))
    fall = 1 / (1 + np.exp(-(phase - traits["season_days"]) / traits["fall_days"]))
    return rise - fall


def _days(times) -> np.ndarray:
    """Fractional days since 1970-01-01 (UTC)."""
    return (pd.DatetimeIndex(times) - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)


class _Fields:
    """The fields of a block: noise-free NDVI per date on demand, cover and traits per pixel."""

    def __init__(self, seed, rows, cols, field_px, days):
        ids, inverse = np.unique(_parcels(seed, rows, cols, field_px), return_inverse=True)
        traits = _parcel_traits(seed, ids)
        self.inverse = inverse.reshape(len(rows), len(cols))
        self.heterogeneity = 1 + HETEROGENEITY_SD * _value_noise(seed, (HETEROGENEITY,), rows, cols, HETEROGENEITY_PX)
        self.seasonal = traits["amplitude"] * _season(traits, np.asarray(days, np.float64))  # (T, parcels)
        self.traits = {k: v[self.inverse] for k, v in traits.items()}
        self.cover = self.traits["cover"]

    def ndvi(self, i: int) -> np.ndarray:
        """Noise-free NDVI (r, c) on date ``i``."""
        return self.traits["base_ndvi"] + self.seasonal[i][self.inverse] * self.heterogeneity


# --------------------------------------------------------------------------------------------
# acquisitions: what the two sensors share
SWATH_SLOPE = 0.15  # swath edge slant (columns per row): ground tracks are oblique in UTM


def _date_hash(seed, stream: int, times) -> np.ndarray:
    return _hash(seed, stream, np.floor(_days(times)).astype(np.int64))
