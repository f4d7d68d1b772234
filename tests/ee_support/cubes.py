"""Local cubes registered under Earth Engine collection ids, with their image properties.

The Flanders cubes (../shared/data/flanders_2017) become ``COPERNICUS/S2_SR_HARMONIZED``
(B4, B8 as digital numbers = reflectance x 1e4 like the real collection, SCL aligned from
20 m to the 10 m grid) and ``COPERNICUS/S1_GRD`` (VV, VH in dB aligned to the 10 m grid), both
read with ``optsar_nb.local.stack.read_netcdf`` and aligned with ``optsar_nb.local.grid.align_to`` (nearest
neighbour), the same arrays the local engine reads. Image properties are those the EE engine
reads: ``system:time_start`` (ms, UTC), ``system:index`` (the local stack's image id, so that
both engines' metadata tables name images alike), and for S1 ``instrumentMode`` and
``transmitterReceiverPolarisation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import xarray as xr

from optsar_nb.local import stack
from optsar_nb.local.grid import align_to
from optsar_nb.missions import MISSIONS, S1

from .values import Band, Collection, Grid, Image

S2_DN_PER_REFLECTANCE = 1e4  # S2 L2A digital numbers are reflectance x 10000 (ESA product spec)


@dataclass(frozen=True)
class FlandersCubes:
    grid: Grid
    red: xr.DataArray  # reflectance (time, y, x)
    nir: xr.DataArray
    scl: xr.DataArray  # classes on the 10 m grid (nodata 0)
    vv: xr.DataArray  # dB on the 10 m grid
    vh: xr.DataArray


def _file(folder: Path, prefix: str) -> Path:
    (path,) = sorted(folder.glob(f"{prefix}_*.nc"))
    return path


@lru_cache(maxsize=2)
def load_flanders(folder: Path) -> FlandersCubes:
    s2 = stack.read_netcdf(_file(folder, "S2_L2A_10m"), ["B04", "B08"])
    s2_20 = stack.read_netcdf(_file(folder, "S2_L2A_20m"), ["SCL"])
    s1 = stack.read_netcdf(_file(folder, "S1_GRD-ASCENDING_20m"), ["VV", "VH"])
    red, nir = s2["B04"].compute(), s2["B08"].compute()
    scl = align_to(s2_20["SCL"], red).compute()
    vv = align_to(s1["VV"], red).compute()
    vh = align_to(s1["VH"], red).compute()
    grid = Grid(crs=red.attrs["crs"], transform=tuple(red.attrs["transform"]), height=red.sizes["y"],
                width=red.sizes["x"])
    return FlandersCubes(grid=grid, red=red, nir=nir, scl=scl, vv=vv, vh=vh)


def _band(values: np.ndarray, valid: np.ndarray | None = None) -> Band:
    data = np.asarray(values, "float64")
    mask = ~np.isnan(data) if valid is None else valid
    return Band(np.nan_to_num(data), mask)


def s2_collection(cubes: FlandersCubes) -> Collection:
    mission = MISSIONS["S2"]
    times = stack.datetime_to_ms(cubes.red.time.values)
    images = []
    for i, t in enumerate(times):
        scl = cubes.scl.values[i]
        bands = {
            mission.red: _band(cubes.red.values[i] * S2_DN_PER_REFLECTANCE),
            mission.nir: _band(cubes.nir.values[i] * S2_DN_PER_REFLECTANCE),
            "SCL": _band(scl),
        }
        props = {"system:time_start": int(t), "system:index": str(cubes.red["id"].values[i])}
        images.append(Image(bands, props))
    return Collection(images)


def s1_collection(cubes: FlandersCubes) -> Collection:
    times = stack.datetime_to_ms(cubes.vv.time.values)
    images = []
    for i, t in enumerate(times):
        bands = {"VV": _band(cubes.vv.values[i]), "VH": _band(cubes.vh.values[i])}
        props = {"system:time_start": int(t), "system:index": str(cubes.vv["id"].values[i]),
                 "instrumentMode": S1.instrument_mode, "transmitterReceiverPolarisation": list(S1.bands),
                 "orbitProperties_pass": "ASCENDING"}
        images.append(Image(bands, props))
    return Collection(images)


def flanders_evaluator(folder: Path, **kwargs):
    """An evaluator on the Flanders grid with S2 and S1 registered under their catalogue ids."""
    from .evaluator import Evaluator

    cubes = load_flanders(Path(folder))
    ev = Evaluator(cubes.grid, **kwargs)
    ev.register(MISSIONS["S2"].collection_id, s2_collection(cubes))
    ev.register(S1.collection_id, s1_collection(cubes))
    return ev, cubes


def band_array(image: Image, name: str) -> np.ndarray:
    """A band as float with NaN where masked."""
    b = image.bands[name]
    return np.where(b.mask, b.data, np.nan)


# Flanders patch bounds in EPSG:32631 (data README); the test AOI is inset by a few tens of
# metres and has one slanted edge, so that clipping to the AOI is exercised by both engines.
FLANDERS_BOUNDS = (501360.0, 5629040.0, 502000.0, 5629680.0)


def flanders_aoi():
    """A polygon AOI inside the Flanders patch, as an optsar_nb.aoi.AOI in lon/lat."""
    from pyproj import Transformer

    from optsar_nb.aoi import load_aoi

    to_lonlat = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    x0, y0, x1, y1 = FLANDERS_BOUNDS
    x0, y0, x1, y1 = x0 + 35, y0 + 45, x1 - 25, y1 - 35
    ring = [(x0, y0), (x1, y0), (x1, y1), (x0 + 200, y1), (x0, y0)]
    return load_aoi({"type": "Polygon", "coordinates": [[to_lonlat.transform(x, y) for x, y in ring]]},
                    name="flanders_test")
