"""A simulator of optical + radar image stacks, and the generator of the demo scene.

The scene is SIMULATED: fields (Voronoi parcels) of a few land covers, each with a seasonal
NDVI curve; Sentinel-2 acquisitions every 5 days with clouds, cirrus edges and displaced cloud
shadows (SCL classes), a same-day duplicate granule and missing swath edges; Sentinel-1 VV/VH
backscatter that follows vegetation and soil moisture (a water-cloud relation) with speckle.

Every value is a deterministic function of (seed, global pixel position, date): random numbers
come from a counter-based hash of those integers, never from a stateful generator, so spatial
chunks agree at their edges and results do not depend on chunking. Stacks are lazy dask arrays
chunked in space, so stacks of the published case sizes never sit whole in memory.

Run ``python -m optsar_nb.local.simulate --out optsar_nb/demo_scene`` to write the demo scene.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtri

from ..errors import OutputExists
from ..missions import SCL
from ..outputs import atomic_path, refuse_existing, write_csv
from ..products import (
    CSV,
    NDVI_INPUT_FILE,
    NDVI_MASK_FILE,
    NDVI_METADATA_FILE,
    NDVI_TRUTH_FILE,
    S1_METADATA_FILE,
    SCL_INPUT_FILE,
    TIF,
    VH_INPUT_FILE,
    VV_INPUT_FILE,
    file_name,
)
from .gaps import aoi_cloud_stats, cloud_state
from .stack import DEFAULT_CHUNK_PX, metadata_of, write_geotiff

# --------------------------------------------------------------------------------------------
# the scene
DEMO_SEED = 20210115  # chosen among nearby seeds: all six covers present, ~40 % cloudy
EPSG = 32755  # WGS 84 / UTM zone 55S
# Centroid of the published 'Central West NSW' case site, in EPSG:32755 metres
SITE_CENTRE_M = (668390.0, 6533630.0)
PIXEL_M = 10.0
S2_TILE, S2_NEIGHBOUR_TILE = "T55JFF", "T55JFG"  # MGRS 100 km squares at / north of the site
S2_ANCHOR = pd.Timestamp("2021-01-05T00:11:09")  # a Sentinel-2 overpass, ~10:30 local time
S2_GRANULE_LAG_S = 6  # granule time stamp precedes the datatake's in the S2 product ID
S2_REVISIT_DAYS = 5  # Sentinel-2A + 2B
DUPLICATE_DOY = 100  # one acquisition per year (in a 5-day window from this day) has 2 granules
DUPLICATE_SPLIT = 0.45  # granule boundary, as a fraction of the scene height from the top
DUPLICATE_OVERLAP = 0.12  # rows seen by both granules, fraction of the scene height
S1_ANCHOR = pd.Timestamp("2021-01-03T08:31:15")  # an ascending S1A pass, ~18:30 local time
S1_REVISIT_DAYS = 6  # S1A + S1B on one relative orbit
S1B_PERIOD = (pd.Timestamp("2016-09-26"), pd.Timestamp("2021-12-23"))  # S1B in service
S1_ORBITS_PER_CYCLE, S1_CYCLE_DAYS = 175, 12  # Sentinel-1 repeat cycle
S1_RELATIVE_ORBIT = 38
S1_ORBIT_REF = {"S1A": (pd.Timestamp("2021-01-03"), 35977), "S1B": (pd.Timestamp("2021-01-09"), 25066)}
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
# docs/method.md, published scale figures: (height px, width px, optical images)
BENCHMARK_CASES = {1: (248, 240, 207), 2: (500, 414, 437), 3: (2750, 4671, 380)}


def benchmark_scene(case: int, *, seed: int = DEMO_SEED, start: str = "2019-01-01") -> Scene:
    """A scene of the size of published case 1, 2 or 3 (pixels and number of optical images)."""
    height, width, n_images = BENCHMARK_CASES[case]
    far = (pd.Timestamp(start) + pd.Timedelta(days=10 * n_images)).date().isoformat()
    acq = optical_acquisitions(Scene(height, width, start, far, seed))
    end = (acq.time.iloc[n_images - 1].normalize() + pd.Timedelta(days=1)).date().isoformat()
    return Scene(height, width, start, end, seed, optical_limit=n_images)


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
# acquisitions
CLEAR_DATE_SHARE, OVERCAST_DATE_SHARE = 0.35, 0.13  # dates with no cloud / cloud everywhere
CLOUD_SCALE_PX = 40.0  # base correlation length of clouds (x 0.5..2 per date)
THICK_CLOUD_MARGIN = 0.7  # field above threshold + margin: SCL 9 (high probability), else 8
CIRRUS_MARGIN = 0.3  # field within this below threshold: SCL 10 (thin cirrus at cloud edges)
CLOUD_TOP_M = (800.0, 2500.0)  # cloud top heights that set the shadow displacement
OPTICAL_EDGE_SHARE, RADAR_EDGE_SHARE = 0.10, 0.15  # dates with a missing swath edge
MASK_NODATA = 255  # NDVI_Mask: 1 clear, 0 cloudy, 255 missing (no data)
SWATH_SLOPE = 0.15  # swath edge slant (columns per row): ground tracks are oblique in UTM


def _date_hash(seed, stream: int, times) -> np.ndarray:
    return _hash(seed, stream, np.floor(_days(times)).astype(np.int64))


def optical_acquisitions(scene: Scene = DEMO) -> pd.DataFrame:
    """One row per Sentinel-2 image: time, ID, footprint and the date's cloud and sun geometry.

    ``footprint``: 0 whole scene, 1 northern granule, 2 southern granule (same-day duplicate).
    ``cloud_cover``: target share of the scene under thick cloud; ``shadow_dy/dx``: shadow
    displacement from its cloud (px, south/east positive); ``edge``: position of the missing
    swath edge as a fraction of the width (NaN: none).
    """
    start, end = pd.Timestamp(scene.start), pd.Timestamp(scene.end)
    k = np.arange(np.ceil((start - S2_ANCHOR) / pd.Timedelta(days=S2_REVISIT_DAYS)),
                  np.ceil((end - S2_ANCHOR) / pd.Timedelta(days=S2_REVISIT_DAYS)))
    times = S2_ANCHOR + pd.to_timedelta(k * S2_REVISIT_DAYS, unit="D")
    times = times[(times >= start) & (times < end)]
    doy = times.day_of_year.to_numpy()
    rows = pd.DataFrame({"time": times, "footprint": 0})
    dup = (doy >= DUPLICATE_DOY) & (doy < DUPLICATE_DOY + S2_REVISIT_DAYS)
    second = rows[dup].assign(footprint=2, time=lambda t: t.time + pd.Timedelta(seconds=3))
    rows.loc[dup, "footprint"] = 1
    rows = pd.concat([rows, second]).sort_values("time", kind="stable").reset_index(drop=True)
    if scene.optical_limit is not None:
        rows = rows.iloc[: scene.optical_limit]
    h = _date_hash(scene.seed, OPTICAL_DATE, rows.time)
    u, u2, u3, u4 = _uniform(h), _uniform(_mix(h)), _uniform(_mix(_mix(h))), _uniform(_mix(_mix(_mix(h))))
    partly = (u - CLEAR_DATE_SHARE) / (1 - CLEAR_DATE_SHARE - OVERCAST_DATE_SHARE)
    rows["cloud_cover"] = np.where(u < CLEAR_DATE_SHARE, 0.0, np.where(partly > 1, 1.0, 0.05 + 0.9 * partly))
    rows["cloud_scale_px"] = CLOUD_SCALE_PX * 2.0 ** (2 * u2 - 1)
    # sun at ~10:30 local time, 31 deg S: low and north-east in winter, high and east in summer
    summer = np.cos(2 * np.pi * (rows.time.dt.day_of_year.to_numpy() - 355) / YEAR_DAYS)
    zenith, azimuth = np.radians(40 - 17 * summer), np.radians(55 + 20 * summer)
    shadow_px = (CLOUD_TOP_M[0] + np.diff(CLOUD_TOP_M)[0] * u3) * np.tan(zenith) / PIXEL_M
    rows["shadow_dy"] = np.round(shadow_px * np.cos(azimuth)).astype(int)  # shadows fall south-west
    rows["shadow_dx"] = -np.round(shadow_px * np.sin(azimuth)).astype(int)
    rows["edge"] = np.where(u4 < OPTICAL_EDGE_SHARE, 0.6 + 3 * u4, np.nan)  # east edge at 60-90 % of the width
    stamp = rows.time.dt.strftime("%Y%m%dT%H%M%S")
    granule = (rows.time - pd.Timedelta(seconds=S2_GRANULE_LAG_S)).dt.strftime("%Y%m%dT%H%M%S")
    tile = np.where(rows.footprint == 1, S2_NEIGHBOUR_TILE, S2_TILE)
    rows.insert(1, "ID", [f"{s}_{g}_{t}" for s, g, t in zip(stamp, granule, tile)])
    return rows


def radar_acquisitions(scene: Scene = DEMO) -> pd.DataFrame:
    """One row per Sentinel-1 IW GRD image (ascending): time, ID, platform, swath edge."""
    start, end = pd.Timestamp(scene.start), pd.Timestamp(scene.end)
    k = np.arange(np.ceil((start - S1_ANCHOR) / pd.Timedelta(days=S1_REVISIT_DAYS)),
                  np.ceil((end - S1_ANCHOR) / pd.Timedelta(days=S1_REVISIT_DAYS))).astype(int)
    times = S1_ANCHOR + pd.to_timedelta(k * S1_REVISIT_DAYS, unit="D")
    platform = np.where(k % 2 == 0, "S1A", "S1B")
    keep = (times >= start) & (times < end)
    keep &= (platform == "S1A") | ((times >= S1B_PERIOD[0]) & (times < S1B_PERIOD[1]))
    rows = pd.DataFrame({"time": times[keep], "platform": platform[keep]}).reset_index(drop=True)
    ids = []
    for t, p in zip(rows.time, rows.platform):
        ref_day, ref_orbit = S1_ORBIT_REF[p]
        orbit = ref_orbit + round((t.normalize() - ref_day).days * S1_ORBITS_PER_CYCLE / S1_CYCLE_DAYS)
        h = int(_hash(0, orbit))  # product and datatake ids: any hex, fixed per orbit
        stop = t + pd.Timedelta(seconds=25)
        ids.append(f"{p}_IW_GRDH_1SDV_{t:%Y%m%dT%H%M%S}_{stop:%Y%m%dT%H%M%S}_{orbit:06d}_{h % 16**6:06X}_{h >> 48:04X}")
    rows.insert(1, "ID", ids)
    u = _uniform(_date_hash(scene.seed, RADAR_DATE, rows.time))
    rows["edge"] = np.where(u < RADAR_EDGE_SHARE, 0.1 + u, np.nan)  # west edge at 10-25 % of the width
    rows["orbitProperties_pass"] = "ASCENDING"
    rows["relativeOrbitNumber_start"] = S1_RELATIVE_ORBIT
    return rows


# --------------------------------------------------------------------------------------------
# blocks: numpy (T, r, c) for global rows (r, 1) and cols (1, c)
def _optical_block(rows, cols, *, scene: Scene, table: dict, product: str) -> np.ndarray:
    rows, cols = rows[:, 0], cols[0, :]
    days = table["days"]
    fields = _Fields(scene.seed, rows, cols, scene.field_px, days)
    cover = fields.cover
    pixel_hash = _hash(scene.seed, PIXEL, rows[:, None], cols[None, :])
    row_frac = (rows[:, None] + 0.5) / scene.height
    col_frac = (cols[None, :] + 0.5) / scene.width
    out = np.empty((len(days), len(rows), len(cols)), np.uint8 if product in ("scl", "mask") else np.float32)
    for i, day in enumerate(np.floor(days).astype(np.int64)):
        with np.errstate(over="ignore"):
            noise, contamination = _normals(_mix(pixel_hash ^ _hash(day)))
        truth = np.clip(fields.ndvi(i) + PIXEL_NOISE_SD * noise, -1, 1)
        if product == "truth":
            out[i] = truth
            continue
        threshold = ndtri(1 - table["cloud_cover"][i]) if table["cloud_cover"][i] > 0 else np.inf
        if np.isfinite(threshold):
            scale = table["cloud_scale_px"][i]
            field = _fbm(scene.seed, (CLOUD, day), rows, cols, scale)
            caster = _fbm(scene.seed, (CLOUD, day), rows - table["shadow_dy"][i], cols - table["shadow_dx"][i], scale)
        else:
            field = caster = np.full(truth.shape, -np.inf)
        scl = np.where(cover == WATER, 6, np.where(truth > VEGETATION_NDVI, 4, 5))
        scl = np.where(caster > threshold, 3, scl)
        scl = np.where(field > threshold - CIRRUS_MARGIN, 10, scl)
        scl = np.where(field > threshold, 8, scl)
        scl = np.where(field > threshold + THICK_CLOUD_MARGIN, 9, scl)
        footprint = table["footprint"][i]
        missing = np.zeros(truth.shape, bool)
        if footprint == 1:
            missing |= row_frac >= DUPLICATE_SPLIT + DUPLICATE_OVERLAP / 2
        elif footprint == 2:
            missing |= row_frac < DUPLICATE_SPLIT - DUPLICATE_OVERLAP / 2
        if np.isfinite(table["edge"][i]):
            missing |= col_frac > table["edge"][i] + SWATH_SLOPE * (row_frac - 0.5)
        scl = np.where(missing, 0, scl)
        if product == "scl":
            out[i] = scl
        elif product == "mask":
            cloudy = np.isin(scl, SCL.cloudy_values)
            out[i] = np.where(missing, MASK_NODATA, np.where(cloudy, 0, 1))
        else:
            # clouds drive NDVI to ~0, thin cirrus dilutes it, shadow depresses it noisily
            sd = np.select([scl == 9, scl == 8, scl == 10, scl == 3], [0.03, 0.04, 0.04, 0.08], 0.0)
            observed = np.select(
                [scl == 9, scl == 8, scl == 10, scl == 3],
                [0.03, 0.06 + 0.25 * truth, 0.05 + 0.6 * truth, 0.75 * truth - 0.05], truth,
            ) + sd * contamination
            cloudy = np.isin(scl, SCL.cloudy_values)
            out[i] = np.where(missing, np.nan, np.where(cloudy, np.clip(observed, -1, 1), truth))
    return out


# Radar: a water-cloud model (Attema & Ulaby 1978) in linear power, speckle in intensity
INCIDENCE_DEG = 38.0  # mid-swath IW incidence angle
SPECKLE_LOOKS = 4.4  # equivalent number of looks of IW GRDH at 10 m
VEGETATION_NDVI_RANGE = (0.15, 0.80)  # NDVI of bare soil and of a full canopy (V = 0 .. 1)
CANOPY_DB = {"VV": -10.0, "VH": -14.0}  # volume backscatter of a full crop canopy
ATTENUATION = {"VV": 0.5, "VH": 0.4}  # two-way canopy attenuation per unit V (nepers)
SOIL_DRY_DB = {"VV": -18.0, "VH": -26.0}  # dry bare soil
SOIL_WET_GAIN_DB = {"VV": 9.0, "VH": 7.0}  # dry to saturated soil
WATER_DB = {"VV": -23.0, "VH": -29.0}  # calm open water; wind roughens it by up to +6 dB
RAIN_DAY_SHARE, RAIN_MEAN_MM, SOIL_DRYING_DAYS, WET_SOIL_MM = 0.12, 8.0, 4.0, 20.0


def soil_moisture(seed: int, days: np.ndarray) -> np.ndarray:
    """Relative surface soil moisture (0 dry .. 1 wet) on fractional days: decaying rain pulses."""
    days = np.asarray(days, np.float64)
    lag = np.arange(0, 10 * SOIL_DRYING_DAYS)
    rain_day = np.floor(days)[:, None] - lag[None, :]
    h = _hash(seed, RAIN, rain_day.astype(np.int64))
    rain_mm = np.where(_uniform(h) < RAIN_DAY_SHARE, -RAIN_MEAN_MM * np.log(1 - _uniform(_mix(h))), 0.0)
    wetness = (rain_mm * np.exp(-(days[:, None] - rain_day - 0.5) / SOIL_DRYING_DAYS)).sum(axis=1)
    return 1 - np.exp(-wetness / WET_SOIL_MM)


def _radar_block(rows, cols, *, scene: Scene, table: dict, band: str) -> np.ndarray:
    rows, cols = rows[:, 0], cols[0, :]
    days = table["days"]
    fields = _Fields(scene.seed, rows, cols, scene.field_px, days)
    traits, water = fields.traits, fields.cover == WATER
    cos_inc = np.cos(np.radians(INCIDENCE_DEG))
    wetness = soil_moisture(scene.seed, days)
    wind_db = 6 * _uniform(_hash(scene.seed, WIND, np.floor(days).astype(np.int64)))
    canopy_full = 10 ** ((CANOPY_DB[band] + traits["volume_db"]) / 10)
    pixel_hash = _hash(scene.seed, SPECKLE, rows[:, None], cols[None, :])
    row_frac = (rows[:, None] + 0.5) / scene.height
    col_frac = (cols[None, :] + 0.5) / scene.width
    looks = 1 / (9 * SPECKLE_LOOKS)
    out = np.empty((len(days), len(rows), len(cols)), np.float32)
    for i, day in enumerate(np.floor(days).astype(np.int64)):
        moisture = np.clip(wetness[i] * traits["moisture_gain"], 0, 1)
        soil = 10 ** ((SOIL_DRY_DB[band] + SOIL_WET_GAIN_DB[band] * moisture + traits["roughness_db"]) / 10)
        cover_v = np.clip((fields.ndvi(i) - VEGETATION_NDVI_RANGE[0]) / np.diff(VEGETATION_NDVI_RANGE)[0], 0, 1.2)
        tau2 = np.exp(-ATTENUATION[band] * cover_v / cos_inc)
        sigma = canopy_full * cover_v * (1 - tau2) + soil * tau2
        sigma = np.where(water, 10 ** ((WATER_DB[band] + wind_db[i]) / 10), sigma)
        with np.errstate(over="ignore"):
            z = _normals(_mix(pixel_hash ^ _hash(day)))[0 if band == "VV" else 1]
        # gamma(L, 1/L) intensity speckle by the Wilson-Hilferty transform of a normal
        speckle = np.maximum(1 - looks + z * np.sqrt(looks), 0.05) ** 3
        db = 10 * np.log10(sigma * speckle)
        if np.isfinite(table["edge"][i]):
            db = np.where(col_frac < table["edge"][i] - SWATH_SLOPE * (row_frac - 0.5), np.nan, db)
        out[i] = db
    return out


# --------------------------------------------------------------------------------------------
# lazy stacks
def _lazy(scene: Scene, acq: pd.DataFrame, block, chunk_px: int, dtype, **kwargs) -> xr.DataArray:
    table = {c: acq[c].to_numpy() for c in acq.columns if c not in ("time", "ID", "platform")
             and acq[c].dtype.kind in "fiu"}
    table["days"] = np.asarray(_days(acq.time))
    rows = da.arange(scene.height, chunks=chunk_px)[:, None]
    cols = da.arange(scene.width, chunks=chunk_px)[None, :]
    data = da.map_blocks(
        block, rows, cols, new_axis=0, scene=scene, table=table, dtype=dtype, **kwargs,
        chunks=((len(acq),), rows.chunks[0], cols.chunks[1]), meta=np.empty((0, 0, 0), dtype),
    )
    a, b, c, d, e, f = scene.transform
    from pyproj import CRS

    return xr.DataArray(
        data, dims=("time", "y", "x"),
        coords={"time": pd.DatetimeIndex(acq.time).as_unit("ns").to_numpy(), "id": ("time", acq.ID.to_numpy()),
                "y": f + (np.arange(scene.height) + 0.5) * e, "x": c + (np.arange(scene.width) + 0.5) * a},
        attrs={"crs": CRS.from_epsg(EPSG).to_wkt(), "transform": scene.transform},
    )


def simulate_optical(scene: Scene = DEMO, *, chunk_px: int = DEFAULT_CHUNK_PX) -> xr.Dataset:
    """Lazy Sentinel-2 stacks (time, y, x) of ``scene``.

    ``truth``: cloud-free NDVI (float32); ``ndvi``: observed NDVI, cloud-contaminated where
    SCL says cloud/shadow, NaN where missing; ``scl``: scene classification (uint8, 0 no data);
    ``mask``: 1 clear, 0 cloudy, 255 missing (uint8, attrs nodata=255).
    """
    acq = optical_acquisitions(scene)
    out = {p: _lazy(scene, acq, _optical_block, chunk_px, np.float32, product=p) for p in ("truth", "ndvi")}
    for product, nodata in (("scl", 0), ("mask", MASK_NODATA)):
        out[product] = _lazy(scene, acq, _optical_block, chunk_px, np.uint8, product=product)
        out[product].attrs["nodata"] = nodata
    return xr.Dataset(out)


def simulate_radar(scene: Scene = DEMO, *, chunk_px: int = DEFAULT_CHUNK_PX) -> xr.Dataset:
    """Lazy Sentinel-1 backscatter stacks ``VV`` and ``VH`` (time, y, x) in dB, NaN where missing."""
    acq = radar_acquisitions(scene)
    ds = xr.Dataset({b: _lazy(scene, acq, _radar_block, chunk_px, np.float32, band=b) for b in ("VV", "VH")})
    extra = ("orbitProperties_pass", "relativeOrbitNumber_start")
    return ds.assign_coords({c: ("time", acq[c].to_numpy()) for c in extra})


def land_cover(scene: Scene = DEMO) -> xr.DataArray:
    """Land-cover class index per pixel (y, x); names in ``LAND_COVERS``."""
    fields = _Fields(scene.seed, np.arange(scene.height), np.arange(scene.width), scene.field_px, [0.0])
    return xr.DataArray(fields.cover, dims=("y", "x"), attrs={"classes": [c.name for c in LAND_COVERS]})


# --------------------------------------------------------------------------------------------
# the demo scene on disk
NDVI_SCALE, DB_SCALE = 1e-4, 0.01  # int16 packing of NDVI and of backscatter in dB


def scene_files(scene: Scene = DEMO) -> dict[str, str]:
    """File names of a written scene, by kind (seed names + ``_S2_<start>_<end>``)."""
    s = scene.suffix
    return {
        "ndvi": file_name(NDVI_INPUT_FILE, s, TIF), "ndvi_csv": file_name(NDVI_METADATA_FILE, s, CSV),
        "mask": file_name(NDVI_MASK_FILE, s, TIF),
        "scl": file_name(SCL_INPUT_FILE, s, TIF), "scl_csv": file_name(SCL_INPUT_FILE, s, CSV),
        "truth": file_name(NDVI_TRUTH_FILE, s, TIF), "truth_csv": file_name(NDVI_TRUTH_FILE, s, CSV),
        "vv": file_name(VV_INPUT_FILE, s, TIF), "vh": file_name(VH_INPUT_FILE, s, TIF),
        "s1_csv": file_name(S1_METADATA_FILE, s, CSV),
        "aoi": "aoi.geojson", "readme": "README.md",
    }


def footprint_lonlat(scene: Scene = DEMO) -> list[list[float]]:
    """The scene's outer boundary as a closed lon/lat ring (EPSG:4326), corners rounded to 1e-7 deg."""
    from pyproj import Transformer

    a, _, c, _, e, f = scene.transform
    xs = [c, c + a * scene.width, c + a * scene.width, c, c]
    ys = [f, f, f + e * scene.height, f + e * scene.height, f]
    lon, lat = Transformer.from_crs(EPSG, 4326, always_xy=True).transform(xs, ys)
    return [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lon, lat)]


def write_scene(out_dir: str | Path, scene: Scene = DEMO, *, overwrite: bool = False,
                chunk_px: int = DEFAULT_CHUNK_PX) -> dict[str, Path]:
    """Write a simulated scene in the seed's format into ``out_dir``; returns paths by kind.

    Existing files are refused (OutputExists) unless ``overwrite``. Stacks are written block by
    block; only the per-image cloud statistics are computed beforehand.
    """
    out_dir = Path(out_dir)
    paths = {k: out_dir / v for k, v in scene_files(scene).items()}
    if not overwrite:
        refuse_existing(paths.values())
    optical, radar = simulate_optical(scene, chunk_px=chunk_px), simulate_radar(scene, chunk_px=chunk_px)
    clouds = aoi_cloud_stats(cloud_state(optical["mask"], "clear_mask"))  # AOI = the whole scene
    optical = optical.assign_coords({c: ("time", clouds[c].to_numpy()) for c in clouds.columns})
    readme = _readme(scene, optical, radar, clouds)
    kw = dict(overwrite=overwrite)
    write_geotiff(optical["ndvi"], paths["ndvi"], scale=NDVI_SCALE, **kw)
    write_geotiff(optical["mask"], paths["mask"], nodata=MASK_NODATA, **kw)
    write_geotiff(optical["scl"], paths["scl"], nodata=0, **kw)
    write_geotiff(optical["truth"], paths["truth"], scale=NDVI_SCALE, **kw)
    for key in ("ndvi_csv", "scl_csv", "truth_csv"):
        write_csv(metadata_of(optical["ndvi"]), paths[key], **kw)
    write_geotiff(radar["VV"], paths["vv"], scale=DB_SCALE, **kw)
    write_geotiff(radar["VH"], paths["vh"], scale=DB_SCALE, **kw)
    write_csv(metadata_of(radar["VV"]), paths["s1_csv"], **kw)
    aoi = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"name": "simulated demo scene footprint", "simulated": True},
        "geometry": {"type": "Polygon", "coordinates": [footprint_lonlat(scene)]}}]}
    for key, text in (("aoi", json.dumps(aoi, indent=1) + "\n"), ("readme", readme)):
        with atomic_path(paths[key], overwrite=overwrite) as tmp:
            tmp.write_text(text)
    return paths


def _readme(scene: Scene, optical: xr.Dataset, radar: xr.Dataset, clouds: pd.DataFrame) -> str:
    f = scene_files(scene)
    acq = optical_acquisitions(scene)
    day = pd.DatetimeIndex(optical.time.values).normalize()
    dup = sorted({d.date().isoformat() for d in day[day.duplicated()]})
    valid, pct = clouds.PIXEL_COUNT_AOI.to_numpy(), clouds.CLOUD_PERCENTAGE_AOI.to_numpy()
    cloudy_share = float(np.nansum(pct * valid) / 100 / valid.sum())
    n_edge_s1 = int(np.isfinite(radar_acquisitions(scene).edge).sum())
    n_clear, n_overcast = int((pct == 0).sum()), int((pct == 100).sum())
    covers = pd.Series(np.asarray(land_cover(scene)).ravel()).map(lambda i: LAND_COVERS[i].name).value_counts()
    case = next((k for k in BENCHMARK_CASES if scene == benchmark_scene(k, seed=scene.seed)), None)
    command = "python -m optsar_nb.local.simulate " + (f"--case {case} --out <folder>" if case
                                                        else "--out optsar_nb/demo_scene")
    command += f" --seed {scene.seed}" if scene.seed != DEMO_SEED else ""
    return f"""# {"Demo scene" if scene == DEMO else "Scene"}: SIMULATED data

Everything in this folder is **simulated**, not observed. It imitates Sentinel-2 NDVI with
clouds and Sentinel-1 backscatter over farmland near the published 'Central West NSW' case
site, in the seed's file format, so that the local engine runs offline, and it comes with the
cloud-free truth, so that infilled NDVI can be scored. Regenerate it (bit for bit) with

    {command} --overwrite

(seed {scene.seed}; the generator is `optsar_nb/local/simulate.py`).

## Grid and dates
- {scene.height} x {scene.width} pixels of {PIXEL_M:g} m, EPSG:{EPSG} (WGS 84 / UTM 55S), upper-left
  corner ({scene.transform[2]:.0f} E, {scene.transform[5]:.0f} N).
- Sentinel-2: {len(acq)} images on {day.nunique()} days from {day.min().date()} to {day.max().date()}
  (every {S2_REVISIT_DAYS} days, ~00:11 UTC); same-day duplicate (two granules with different
  footprints, {S2_TILE} and {S2_NEIGHBOUR_TILE}): {', '.join(dup)}.
- Sentinel-1: {radar.sizes['time']} ascending IW GRDH images (every {S1_REVISIT_DAYS} days, S1A + S1B, ~08:31 UTC).
- Land cover (pixels): {', '.join(f'{k} {v}' for k, v in covers.items())}.

## Files
Every GeoTIFF has one band per image, band description = the image ID, in the order of the
rows of its metadata CSV (ID, CollectionTime in ms since 1970-01-01 UTC, further columns).
Packed integers: value = stored x scale (the GeoTIFF's scale tag), no data -32768.

- `{f['ndvi']}`: observed NDVI, the truth where clear, cloud-contaminated under
  cloud and shadow, no data where the image has none (int16, scale {NDVI_SCALE:g}).
- `{f['ndvi_csv']}`: its rows, with CLOUD_PERCENTAGE_AOI (cloudy / valid pixels x 100)
  and PIXEL_COUNT_AOI (valid pixels) over the whole scene.
- `{f['mask']}`: the same images, 1 clear, 0 cloudy (SCL 3, 8, 9, 10),
  {MASK_NODATA} no data (uint8); its rows are `{f['ndvi_csv']}`.
- `{f['scl']}` + `.csv`: Sentinel-2 scene classification (uint8): 0 no data, 3 cloud
  shadow, 4 vegetation, 5 bare soil, 6 water, 8 / 9 cloud medium / high probability, 10 cirrus.
- `{f['truth']}` + `.csv`: cloud-free NDVI of every optical image, everywhere
  (int16, scale {NDVI_SCALE:g}).
- `{f['vv']}`, `{f['vh']}`: Sentinel-1 backscatter in dB (int16, scale {DB_SCALE:g}),
  no data on swath edges; rows in `{f['s1_csv']}` (with orbit pass and relative orbit).
- `aoi.geojson`: the scene footprint in lon/lat (EPSG:4326).

## Cloud statistics
- cloudy share of valid pixel-dates: {100 * cloudy_share:.1f} %
- images fully clear: {n_clear}, fully cloudy: {n_overcast}, partly cloudy: {len(pct) - n_clear - n_overcast}
- optical images with a missing swath edge: {int(np.isfinite(acq.edge).sum())}; S1 images with one: {n_edge_s1}
- missing share of optical pixel-dates: {100 * (1 - valid.sum() / (len(valid) * scene.height * scene.width)):.1f} %

## How it is made
Fields are Voronoi parcels of six land covers, each with a double-logistic NDVI season
(southern hemisphere calendar), field-to-field variation in timing and amplitude, within-field
variation and pixel noise (sd {PIXEL_NOISE_SD}). Clouds are thresholded smooth random fields
whose size and cover change from date to date (about {100 * CLEAR_DATE_SHARE:.0f} % of dates clear,
{100 * OVERCAST_DATE_SHARE:.0f} % overcast); thin cirrus fringes the clouds; shadows are the clouds
displaced away from the sun by the cloud height. Under thick cloud NDVI is ~0.03, under medium
cloud and cirrus it is diluted, under shadow depressed and noisy. Radar follows a water-cloud
model: soil backscatter rises with soil moisture after simulated rain, the canopy adds volume
scattering (more in VH) and attenuates the soil; speckle is gamma-distributed intensity
({SPECKLE_LOOKS} looks). All random numbers are hashes of (seed, pixel, date).
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a SIMULATED scene (default: the demo) in the seed's format.")
    parser.add_argument("--out", required=True, help="output folder, e.g. optsar_nb/demo_scene")
    parser.add_argument("--case", type=int, choices=sorted(BENCHMARK_CASES),
                        help="write a stack of the size of published case 1, 2 or 3 instead of the demo")
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    scene = benchmark_scene(args.case, seed=args.seed) if args.case else dataclasses.replace(DEMO, seed=args.seed)
    try:
        paths = write_scene(args.out, scene, overwrite=args.overwrite)
    except OutputExists as exc:
        parser.error(str(exc))
    print("\n".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
