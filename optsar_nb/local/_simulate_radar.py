"""The simulated Sentinel-1 radar of :mod:`optsar_nb.local.simulate`: acquisitions and backscatter.

Ascending IW GRDH images every 6 days (S1A + S1B on one relative orbit) with missing swath
edges; VV and VH backscatter in dB from a water-cloud model over the scene's fields, with soil
moisture after simulated rain and gamma-distributed speckle.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._simulate_scene import (
    DEMO,
    RADAR_DATE,
    RAIN,
    SPECKLE,
    SWATH_SLOPE,
    WATER,
    WIND,
    Scene,
    _date_hash,
    _Fields,
    _hash,
    _mix,
    _normals,
    _uniform,
)

S1_ANCHOR = pd.Timestamp("2021-01-03T08:31:15")  # an ascending S1A pass, ~18:30 local time
S1_REVISIT_DAYS = 6  # S1A + S1B on one relative orbit
S1B_PERIOD = (pd.Timestamp("2016-09-26"), pd.Timestamp("2021-12-23"))  # S1B in service
S1_ORBITS_PER_CYCLE, S1_CYCLE_DAYS = 175, 12  # Sentinel-1 repeat cycle
S1_RELATIVE_ORBIT = 38
S1_ORBIT_REF = {"S1A": (pd.Timestamp("2021-01-03"), 35977), "S1B": (pd.Timestamp("2021-01-09"), 25066)}
RADAR_EDGE_SHARE = 0.15  # dates with a missing swath edge


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
