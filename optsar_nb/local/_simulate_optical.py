"""The simulated Sentinel-2 images of :mod:`optsar_nb.local.simulate`: acquisitions, clouds and NDVI.

Acquisitions every 5 days with a same-day duplicate granule and missing swath edges; per date,
clouds (thresholded smooth random fields), thin cirrus at their edges and shadows displaced
away from the sun, as Sentinel-2 scene classes (SCL); the observed NDVI is the scene's NDVI
where clear and contaminated under clouds and shadows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtri

from ..missions import SCL
from ._simulate_scene import (
    CLOUD,
    DEMO,
    OPTICAL_DATE,
    PIXEL,
    PIXEL_M,
    PIXEL_NOISE_SD,
    SWATH_SLOPE,
    VEGETATION_NDVI,
    WATER,
    YEAR_DAYS,
    Scene,
    _date_hash,
    _fbm,
    _Fields,
    _hash,
    _mix,
    _normals,
    _uniform,
)

S2_TILE, S2_NEIGHBOUR_TILE = "T55JFF", "T55JFG"  # MGRS 100 km squares at / north of the site
S2_ANCHOR = pd.Timestamp("2021-01-05T00:11:09")  # a Sentinel-2 overpass, ~10:30 local time
S2_GRANULE_LAG_S = 6  # granule time stamp precedes the datatake's in the S2 product ID
S2_REVISIT_DAYS = 5  # Sentinel-2A + 2B
DUPLICATE_DOY = 100  # one acquisition per year (in a 5-day window from this day) has 2 granules
DUPLICATE_SPLIT = 0.45  # granule boundary, as a fraction of the scene height from the top
DUPLICATE_OVERLAP = 0.12  # rows seen by both granules, fraction of the scene height
CLEAR_DATE_SHARE, OVERCAST_DATE_SHARE = 0.35, 0.13  # dates with no cloud / cloud everywhere
CLOUD_SCALE_PX = 40.0  # base correlation length of clouds (x 0.5..2 per date)
THICK_CLOUD_MARGIN = 0.7  # field above threshold + margin: SCL 9 (high probability), else 8
CIRRUS_MARGIN = 0.3  # field within this below threshold: SCL 10 (thin cirrus at cloud edges)
CLOUD_TOP_M = (800.0, 2500.0)  # cloud top heights that set the shadow displacement
OPTICAL_EDGE_SHARE = 0.10  # dates with a missing swath edge
MASK_NODATA = 255  # NDVI_Mask: 1 clear, 0 cloudy, 255 missing (no data)


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
