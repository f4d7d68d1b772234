"""Inputs of the infilling: the seed's exported files, or NetCDF cubes (e.g. openEO/WorldCereal).

Both loaders return ``(ndvi, state, vv, vh)``: NDVI (time, y, x) float32, its CLEAR/CLOUDY/MISSING
state on the same grid, and Sentinel-1 VV and VH in dB (on their own grid; the job aligns them).
Everything stays lazy.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from ..errors import NoImages
from ..params import InfillParams
from ..products import (
    CSV,
    NDVI_INPUT_FILE,
    NDVI_MASK_FILE,
    NDVI_METADATA_FILE,
    S1_METADATA_FILE,
    SCL_INPUT_FILE,
    TIF,
    VH_INPUT_FILE,
    VV_INPUT_FILE,
    file_name,
    file_pattern,
    find_file,
    metadata_beside,
    suffix_of,
)
from ._cloud_states import cloud_state
from .grid import align_to
from .stack import read_netcdf, read_stack
from .steps import ndvi as compute_ndvi

InfillInputs = tuple[xr.DataArray, xr.DataArray, xr.DataArray, xr.DataArray]


def _find(folder: Path, product: str, suffix: str | None, mission: str) -> Path | None:
    if suffix is not None:
        path = folder / file_name(product, suffix, TIF)
        return path if path.exists() else None
    return find_file(folder, product, mission)


def load_seed_inputs(folder: str | Path, params: InfillParams, *, suffix: str | None = None,
                     mask: str = "auto", chunk_px: int | None = None) -> InfillInputs:
    """Read ``NDVI_Input``, its mask, ``VV_Input`` and ``VH_Input`` (+ CSVs) from ``folder``.

    ``suffix``: the files' ``_<Mission>_<Start>_<End>`` (default: the first found for the
    params' mission). ``mask``: "NDVI_Mask" (the seed's 1 clear / 0 cloudy mask; -1 or no-data
    is missing), "SCL_Input" (a quality stack classified with ``params.mask_rule_name``), or
    "auto" (NDVI_Mask when present, else SCL_Input). ``chunk_px``: spatial read window; every
    read holds the full time axis; by default whole tiles of each file within a byte budget
    (see :func:`optsar_nb.local.stack.read_geotiff`).
    """
    folder = Path(folder)
    ndvi_path = _find(folder, NDVI_INPUT_FILE, suffix, params.mission)
    if ndvi_path is None:
        raise NoImages(f"no {file_pattern(NDVI_INPUT_FILE, params.mission)} in {folder}: export the inputs first")
    sfx = suffix_of(ndvi_path, NDVI_INPUT_FILE)
    ndvi_meta = folder / file_name(NDVI_METADATA_FILE, sfx, CSV)
    s1_meta = folder / file_name(S1_METADATA_FILE, sfx, CSV)
    ndvi = read_stack(ndvi_path, ndvi_meta, chunk_px=chunk_px).rename("NDVI")
    mask_path, qa_path = folder / file_name(NDVI_MASK_FILE, sfx, TIF), folder / file_name(SCL_INPUT_FILE, sfx, TIF)
    if mask == "auto":
        mask = NDVI_MASK_FILE if mask_path.exists() else SCL_INPUT_FILE
    if mask == NDVI_MASK_FILE:
        flags = read_stack(mask_path, ndvi_meta, chunk_px=chunk_px)
        state = cloud_state(flags, "clear_mask", valid=(flags >= 0))
    elif mask == SCL_INPUT_FILE:
        qa_meta = metadata_beside(qa_path)
        qa = read_stack(qa_path, qa_meta if qa_meta.exists() else ndvi_meta, chunk_px=chunk_px)
        state = cloud_state(qa, params.mask_rule_name, threshold=params.cloudscore_threshold)
    else:
        raise NoImages(f"mask={mask!r}: choose {NDVI_MASK_FILE!r}, {SCL_INPUT_FILE!r} or 'auto'")
    vv = read_stack(folder / file_name(VV_INPUT_FILE, sfx, TIF), s1_meta, chunk_px=chunk_px).rename("VV")
    vh = read_stack(folder / file_name(VH_INPUT_FILE, sfx, TIF), s1_meta, chunk_px=chunk_px).rename("VH")
    return ndvi, state.assign_coords(id=ndvi["id"]), vv, vh


def load_netcdf_inputs(s2_10m: str | Path, s2_20m: str | Path, s1: str | Path, params: InfillParams,
                       *, red: str = "B04", nir: str = "B08", qa: str = "SCL") -> InfillInputs:
    """NDVI from a 10 m cube's red/NIR, state from a 20 m cube's SCL aligned to 10 m, and S1 VV/VH."""
    bands = read_netcdf(s2_10m, [red, nir])
    ndvi = compute_ndvi(bands[red], bands[nir])
    scl = align_to(read_netcdf(s2_20m, qa)[qa], ndvi, what=f"the {qa} stack of {s2_20m}")
    state = cloud_state(scl, params.mask_rule_name, threshold=params.cloudscore_threshold)
    radar = read_netcdf(s1, ["VV", "VH"])
    # one image, one ID: the state takes the NDVI's IDs (the 20 m cube names its images itself)
    return ndvi, state.assign_coords(id=ndvi["id"]), radar["VV"], radar["VH"]


def load_flanders(folder: str | Path, params: InfillParams) -> InfillInputs:
    """The Flanders 2017 cubes (S2 L2A 10 m and 20 m, S1 GRD ascending) found in ``folder`` by prefix."""
    folder = Path(folder)

    def one(prefix: str) -> Path:
        found = sorted(folder.glob(f"{prefix}*.nc"))
        if not found:
            raise NoImages(f"no {prefix}*.nc in {folder}")
        return found[0]

    return load_netcdf_inputs(one("S2_L2A_10m"), one("S2_L2A_20m"), one("S1_GRD-ASCENDING_20m"), params)
