"""What the notebooks and the map app run: inputs, and the two jobs.

``run_gaps`` and ``run_infill`` take the notebooks' parameters (AOI, mission, dates, inputs,
output folder), run the job on the chosen engine (:func:`optsar_nb.engine.resolve_backend`),
write the outputs and return them together with the in-memory arrays the notebooks and widgets
display (:mod:`optsar_nb.results`). The local engine runs here; Earth Engine runs are in
:mod:`optsar_nb.run_ee`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .aoi import AOI, load_aoi
from .engine import Engine, resolve_backend
from .errors import NoImages, OptsarError
from .params import GapParams, InfillParams
from .products import (
    CSV,
    INFILL_COMPARISON_FILE,
    MASK_INPUT_FILE,
    MASK_METADATA_FILE,
    NDVI_INPUT_FILE,
    NDVI_MASK_FILE,
    NDVI_METADATA_FILE,
    PNG,
    S1_METADATA_FILE,
    SCL_INPUT_FILE,
    TIF,
    VH_INPUT_FILE,
    VV_INPUT_FILE,
    file_name,
    file_pattern,
    find_file,
    suffix_of,
)
from .results import GapResult, InfillResult
from .run_ee import _run_gaps_ee, _run_infill_ee

# The demo scene, installed with the package (made by optsar_nb.local.simulate).
DEMO_DIR = Path(__file__).resolve().parent / "demo_scene"
DEMO_PERIOD = ("2021-01-01", "2022-01-01")

# Local gap inputs, in order of preference: (GeoTIFF product, metadata CSV product, mask rule).
# Mask_Input/InputMask_Metadata is the seed's export for gaps (1 clear, 0 cloudy); SCL_Input is
# Sentinel-2's scene classification, classified with the mission's own rule.
GAP_INPUTS = ((MASK_INPUT_FILE, MASK_METADATA_FILE, "clear_mask"), (SCL_INPUT_FILE, SCL_INPUT_FILE, None))


# --------------------------------------------------------------------------------------------
# inputs of the local engine
def input_dir(inputs: str | Path | None) -> Path:
    """The local input folder; ``None`` means the bundled demo scene."""
    folder = Path(inputs) if inputs else DEMO_DIR
    if not folder.is_dir():
        hint = ("regenerate it with `python -m optsar_nb.local.simulate --out optsar_nb/demo_scene`" if inputs is None
                else f"give the folder holding the exported inputs (e.g. {SCL_INPUT_FILE}_S2_...tif and its CSV)")
        raise OptsarError(f"input folder {folder} does not exist: {hint}")
    return folder


def resolve_aoi(aoi, folder: Path | None, *, max_area_km2: float) -> AOI | None:
    """Load the AOI; ``None`` takes the input folder's ``aoi.geojson`` when there is one."""
    if aoi is None or (isinstance(aoi, str) and not aoi.strip()):
        default = folder / "aoi.geojson" if folder is not None else None
        if default is None or not default.exists():
            return None
        aoi = default
    return load_aoi(aoi, max_area_km2=max_area_km2)


def open_gap_state(params: GapParams, folder: Path) -> tuple[xr.DataArray, Path]:
    """The (time, y, x) cloud-state stack of the local gap inputs in ``folder``, and its file."""
    from .local.gaps import cloud_state
    from .local.stack import read_stack

    for product, meta, rule in GAP_INPUTS:
        path = find_file(folder, product, params.mission)
        if path is None:
            continue
        qa = read_stack(path, path.with_name(file_name(meta, suffix_of(path, product), CSV)))
        rule_name = params.mask_rule_name if (rule is None or params.mask != "qa") else rule
        return cloud_state(qa, rule_name, threshold=params.cloudscore_threshold), path
    wanted = " or ".join(file_pattern(p, params.mission) for p, _, _ in GAP_INPUTS)
    raise NoImages(f"no gap input for mission {params.mission} in {folder}: expected {wanted} with its CSV")


# --------------------------------------------------------------------------------------------
# gap characterization
def gap_params(mission: str, start, end, **extra) -> GapParams:
    """GapParams from the notebooks' parameters plus any GapParams field in ``extra``."""
    return GapParams.from_dict({"mission": mission, "start": start, "end": end, **extra})


def local_gap_run(params: GapParams, aoi: AOI | None, folder: Path, engine: Engine, *,
                  out_dir: str | Path | None = None, overwrite: bool | str = False) -> GapResult:
    """Run part A on the local inputs in ``folder``; write the outputs when ``out_dir`` is given.

    Both ways the run is prepared once (:func:`optsar_nb.local.gaps.prepare_gaps`): the same
    statistics (NaN outside the AOI, counts included), daily states and metadata. Arrays stay lazy
    (dask) so that large AOIs are only computed block by block, on writing or when a widget shows
    one date or one statistic; written statistics are read back from their file.
    """
    from .local.gaps import prepare_gaps, write_gaps
    from .local.stack import read_geotiff

    state, _ = open_gap_state(params, folder)
    gaps = prepare_gaps(state, params, aoi=aoi)
    result = GapResult(params=params, engine=engine, aoi=aoi, daily_state=gaps.daily_state)
    if out_dir is None:
        result.statistics = gaps.statistics
        result.metadata = gaps.metadata
        return result
    result.paths = write_gaps(gaps, out_dir, overwrite=overwrite)
    result.statistics = read_geotiff(result.paths["statistics"]).rename(band="stat")
    result.metadata = pd.read_csv(result.paths["metadata"])
    return result


def run_gaps(
    *,
    aoi=None,
    mission: str = "S2",
    start=DEMO_PERIOD[0],
    end=DEMO_PERIOD[1],
    backend: str = "auto",
    inputs: str | Path | None = None,
    out_dir: str | Path | None = "out/gaps",
    overwrite: bool | str = False,
    export: str = "drive",
    engine: Engine | None = None,
    progress=None,
    export_options: dict | None = None,
    **extra,
) -> GapResult:
    """Gap characterization (docs/method.md part A): per pixel, the days between clear observations.

    Parameters
    ----------
    aoi : str, Path, dict, tuple or None
        GeoJSON/shapefile path, GeoJSON dict, (west, south, east, north) in degrees, or None: the
        input folder's ``aoi.geojson``, else the whole stack (local engine; Earth Engine needs one).
    mission : {"S2", "L8", "L9"}
        Sentinel-2, Landsat 8 or Landsat 9.
    start, end : str or date
        First day (inclusive) and last day (exclusive, as Earth Engine's filterDate), YYYY-MM-DD.
    backend : {"auto", "ee", "local"}
        The engine, when ``engine`` is not given (:func:`resolve_backend`).
    inputs : str, Path or None
        Local engine: the folder of exported inputs; None: the demo scene installed with the package.
    out_dir : str, Path or None
        Where files are written; None computes in memory only (the app's previews).
    overwrite : bool or "own"
        False refuses existing outputs, True replaces them, "own" replaces only the outputs an
        earlier run of the same job wrote into ``out_dir`` and nobody changed since (what a re-run
        notebook does; :mod:`optsar_nb.outputs`).
    export : str
        Earth Engine destination: "drive", "local", "asset:<folder id>" or "gcs:<bucket>".
    engine : Engine, optional
        An engine already chosen (skips :func:`resolve_backend`).
    progress : callable, optional
        ``progress(name, state, fraction)``, called as Earth Engine export tasks change state.
    export_options : dict, optional
        Earth Engine only: further keyword arguments of :func:`optsar_nb.ee.export.export_gaps`
        (``wait=False`` to start the tasks and return, ``retries``, ``poll_s``, ``timeout_s``,
        ``max_tile_pixels``, or ``client``: an object with the methods of
        :class:`optsar_nb.ee.export.Client`).
    **extra
        Further :class:`optsar_nb.params.GapParams` fields (e.g. ``mask``, ``revisit_days``).

    Returns
    -------
    GapResult
        The statistics (lazy on the local engine, an ``ee.Image`` on Earth Engine), daily
        clear-day states, per-image metadata, the written ``paths`` and Earth Engine ``tasks``.
    """
    params = gap_params(mission, start, end, **extra)
    engine = engine or resolve_backend(backend)
    if engine.name == "ee":
        return _run_gaps_ee(params, engine, aoi=aoi, export=export, out_dir=out_dir, progress=progress,
                            export_options=export_options)
    folder = input_dir(inputs)
    aoi_obj = resolve_aoi(aoi, folder, max_area_km2=params.max_aoi_km2)
    return local_gap_run(params, aoi_obj, folder, engine, out_dir=out_dir, overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# input stacks for display (the pixel inspector before any infill run)
def input_stacks(params: GapParams, inputs: str | Path | None) -> dict[str, xr.DataArray]:
    """Observed NDVI (clear pixels only) and S1 VV, VH of the local input folder, lazily.

    Missing files are left out: a folder with gap inputs only gives an empty dict.
    """
    from .local.stack import read_stack

    folder = input_dir(inputs)
    out: dict[str, xr.DataArray] = {}
    ndvi_path = find_file(folder, NDVI_INPUT_FILE, params.mission)
    if ndvi_path is not None:
        suffix = suffix_of(ndvi_path, NDVI_INPUT_FILE)
        meta = folder / file_name(NDVI_METADATA_FILE, suffix, CSV)
        ndvi = read_stack(ndvi_path, meta)
        mask_path = folder / file_name(NDVI_MASK_FILE, suffix, TIF)
        if mask_path.exists():
            mask = read_stack(mask_path, meta)
            ndvi = ndvi.where(mask == 1)  # 1 = clear in the seed's NDVI_Mask
        out["observed"] = ndvi
        s1_meta = folder / file_name(S1_METADATA_FILE, suffix, CSV)
        for band, product in (("VV", VV_INPUT_FILE), ("VH", VH_INPUT_FILE)):
            path = folder / file_name(product, suffix, TIF)
            if path.exists() and s1_meta.exists():
                out[band] = read_stack(path, s1_meta)
    return out


# --------------------------------------------------------------------------------------------
# what the notebooks print
def describe_inputs(inputs: str | Path | None, engine: Engine) -> str:
    """One line saying where the data comes from."""
    if engine.name == "ee":
        return "inputs: Earth Engine collections (see optsar_nb.missions), read on Google's servers"
    if inputs is None:
        return f"inputs: the bundled demo scene in {DEMO_DIR.name}/ (SIMULATED data, see its README.md)"
    return f"inputs: exported files in {Path(inputs)}"


def list_outputs(out_dir: str | Path) -> pd.DataFrame:
    """Every file under ``out_dir`` with its size in kB and whether it belongs to a complete output
    set (listed, with its size, in a manifest of its folder; see :mod:`optsar_nb.outputs`)."""
    from .outputs import complete_sets

    folder = Path(out_dir)
    found = folder.rglob("*") if folder.exists() else []
    files = sorted(p for p in found if p.is_file() and not p.name.startswith("."))
    complete = set()
    for parent in {p.parent for p in files}:
        for name, manifest in complete_sets(parent).items():
            complete |= {parent / name, *(parent / f for f in manifest["files"])}
    return pd.DataFrame({"file": [str(p.relative_to(folder)) for p in files],
                         "kB": [round(p.stat().st_size / 1024, 1) for p in files],
                         "complete": [p in complete for p in files]})


# --------------------------------------------------------------------------------------------
# infilling
def run_infill(
    *,
    aoi=None,
    mission: str = "S2",
    start=DEMO_PERIOD[0],
    end=DEMO_PERIOD[1],
    backend: str = "auto",
    inputs: str | Path | None = None,
    out_dir: str | Path = "out/infill",
    overwrite: bool | str = False,
    export: str = "drive",
    engine: Engine | None = None,
    progress=None,
    export_options: dict | None = None,
    **extra,
) -> InfillResult:
    """Gap-free NDVI (docs/method.md parts B and C): cloudy dates predicted from Sentinel-1 and fused
    with the clear views around them, with an accuracy report.

    Parameters
    ----------
    aoi, mission, start, end, backend, inputs, overwrite, export, engine, progress, export_options
        As in :func:`run_gaps`. The local engine reads ``NDVI_Input``, ``NDVI_Mask`` (or
        ``SCL_Input``), ``VV_Input``, ``VH_Input`` and their CSVs from ``inputs``.
    out_dir : str or Path
        Where the infill outputs and the accuracy report are written (the local engine needs one).
    **extra
        Further :class:`optsar_nb.params.InfillParams` fields (e.g. ``method``, ``s1_window_days``).

    Returns
    -------
    InfillResult
        Observed, predicted and gap-free NDVI stacks, S1 stacks, the per-image metadata, the
        accuracy tables (``accuracy``, ``accuracy_by_gap``, ``verdict``; local engine) and ``paths``.
    """
    params = InfillParams.from_dict({"mission": mission, "start": start, "end": end, **extra})
    engine = engine or resolve_backend(backend)
    if engine.name == "ee":
        return _run_infill_ee(params, engine, aoi=aoi, export=export, out_dir=out_dir, progress=progress,
                              export_options=export_options)
    from .local.gaps import select_period
    from .local.infill import infill, load_seed_inputs
    from .local.stack import read_stack

    folder = input_dir(inputs)
    aoi_obj = resolve_aoi(aoi, folder, max_area_km2=params.max_aoi_km2)
    ndvi, state, vv, vh = load_seed_inputs(folder, params)
    done = infill(ndvi, state, vv, vh, params, out_dir, aoi=aoi_obj, overwrite=overwrite)
    meta = done.paths["metadata"]
    stacks = {kind: read_stack(done.paths[name], meta)
              for kind, name in (("observed", "NDVI_Obs"), ("predicted", "NDVI_Pred"), ("gapfree", "NDVI_gapfree"),
                                 ("mask", "NDVI_Mask"))}
    return InfillResult(params=params, engine=engine, aoi=aoi_obj, paths=done.paths, vv=vv, vh=vh,
                        metadata=pd.read_csv(meta), metrics=done.metrics, metrics_by_gap=done.metrics_by_gap,
                        n_images=select_period(ndvi, params.start, params.end).sizes["time"], **stacks)


def infill_figure(result: InfillResult, path: str | Path | None = None, *, overwrite: bool = True) -> Path:
    """PNG of observed / predicted / gap-free NDVI on the cloudiest pair that still has observations.

    Written beside the outputs as ``NDVI_Comparison<suffix>.png`` unless ``path`` is given.
    """
    from .plots import colormap, new_figure, save_png
    from .ui.layers import NDVI_STYLE

    table = result.metadata
    candidates = table[(table["Cloud_cover"] > 0) & (table["Cloud_cover"] < 90)]
    row = (candidates if len(candidates) else table).sort_values("Cloud_cover").iloc[-1]
    index = int(np.flatnonzero(table["ID"].astype(str).to_numpy() == str(row["ID"]))[0])
    fig, axes = new_figure(1, 3, figsize=(12, 4.2))
    palette, vmin, vmax = NDVI_STYLE
    cmap = colormap(palette, bad="lightgrey")
    for ax, (label, stack) in zip(axes, (("observed (clear pixels)", result.observed),
                                         ("predicted from S1", result.predicted), ("gap-free", result.gapfree)),
                                  strict=True):
        image = ax.imshow(np.ma.masked_invalid(stack.isel(time=index).values), cmap=cmap, vmin=vmin, vmax=vmax,
                          interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, fraction=0.025, pad=0.02, label="NDVI")
    date = str(pd.to_datetime(row["CollectionTime"], unit="ms").date())
    fig.suptitle(f"{row['ID']} ({date}): {row['Cloud_cover']:.0f} % cloudy  (grey: no data)")
    path = Path(path) if path else result.paths["metadata"].with_name(
        file_name(INFILL_COMPARISON_FILE, result.params.suffix, PNG))
    return save_png(fig, path, dpi=80, overwrite=overwrite)
