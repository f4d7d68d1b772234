"""A simulator of optical + radar image stacks, and the generator of the demo scene.

The scene is SIMULATED: fields (Voronoi parcels) of a few land covers, each with a seasonal
NDVI curve; Sentinel-2 acquisitions every 5 days with clouds, cirrus edges and displaced cloud
shadows (SCL classes), a same-day duplicate granule and missing swath edges; Sentinel-1 VV/VH
backscatter that follows vegetation and soil moisture (a water-cloud relation) with speckle.

Every value is a deterministic function of (seed, global pixel position, date): random numbers
come from a counter-based hash of those integers, never from a stateful generator, so spatial
chunks agree at their edges and results do not depend on chunking. Stacks are lazy dask arrays
chunked in space, so stacks of the published case sizes never sit whole in memory.

The generators are in ``_simulate_scene`` (grid, random numbers, fields), ``_simulate_optical``
(Sentinel-2) and ``_simulate_radar`` (Sentinel-1); this module assembles their lazy stacks and
writes a scene in the seed's format. Run
``python -m optsar_nb.local.simulate --out optsar_nb/demo_scene`` to write the demo scene.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import OutputExists
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
from ._cloud_states import cloud_state
from ._simulate_optical import (
    CLEAR_DATE_SHARE,
    MASK_NODATA,
    OVERCAST_DATE_SHARE,
    S2_NEIGHBOUR_TILE,
    S2_REVISIT_DAYS,
    S2_TILE,
    _optical_block,
    optical_acquisitions,
)
from ._simulate_radar import (
    S1_REVISIT_DAYS,
    SPECKLE_LOOKS,
    _radar_block,
    radar_acquisitions,
    soil_moisture,  # noqa: F401 (part of this module's API)
)
from ._simulate_scene import (
    DEMO,
    DEMO_SEED,
    EPSG,
    LAND_COVERS,
    PIXEL_M,
    PIXEL_NOISE_SD,
    WATER,  # noqa: F401 (part of this module's API)
    LandCover,  # noqa: F401 (part of this module's API)
    Scene,
    _days,
    _Fields,
)
from .gaps import aoi_cloud_stats
from .geotiff_writer import write_geotiff
from .stack import DEFAULT_CHUNK_PX, metadata_of

# --------------------------------------------------------------------------------------------
# the scene
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
