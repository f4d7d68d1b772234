"""What the notebooks and the map app run: engine choice, inputs, and the two jobs.

``resolve_backend("auto")`` picks Earth Engine only when credentials exist on this machine and
``ee.Initialize()`` succeeds within a short time; otherwise the local engine, with the reason.
``run_gaps`` and ``run_infill`` take the notebooks' parameters (AOI, mission, dates, inputs,
output folder), run the job on the chosen engine, write the outputs and return them together
with the in-memory arrays the notebooks and widgets display.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .aoi import AOI, load_aoi
from .errors import InvalidParameter, NoImages, OptsarError
from .params import GapParams, InfillParams
from .products import (
    CSV,
    GAP_STATISTICS,
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

BACKENDS = ("auto", "ee", "local")
# The demo scene, installed with the package (made by optsar_nb.local.simulate).
DEMO_DIR = Path(__file__).resolve().parent / "demo_scene"
DEMO_PERIOD = ("2021-01-01", "2022-01-01")
EE_INIT_TIMEOUT_S = 20.0  # ee.Initialize() talks to Google; never let a notebook hang on it

# Local gap inputs, in order of preference: (GeoTIFF product, metadata CSV product, mask rule).
# Mask_Input/InputMask_Metadata is the seed's export for gaps (1 clear, 0 cloudy); SCL_Input is
# Sentinel-2's scene classification, classified with the mission's own rule.
GAP_INPUTS = ((MASK_INPUT_FILE, MASK_METADATA_FILE, "clear_mask"), (SCL_INPUT_FILE, SCL_INPUT_FILE, None))


# --------------------------------------------------------------------------------------------
# engine choice
@dataclass(frozen=True)
class Engine:
    """The engine a run uses and why it was chosen."""

    name: str  # "ee" or "local"
    reason: str

    def __str__(self) -> str:
        label = "Earth Engine" if self.name == "ee" else "local engine (xarray + dask, offline)"
        return f"{label}: {self.reason}"


def ee_credentials() -> Path | None:
    """The Earth Engine credentials file on this machine, or None (no network is used)."""
    for env in ("EE_SERVICE_ACCOUNT_KEY", "GOOGLE_APPLICATION_CREDENTIALS"):
        if os.environ.get(env) and Path(os.environ[env]).is_file():
            return Path(os.environ[env])
    try:
        import ee
    except ImportError:
        return None
    path = Path(ee.oauth.get_credentials_path())
    return path if path.is_file() else None


def ee_status(*, timeout_s: float = EE_INIT_TIMEOUT_S, project: str | None = None) -> tuple[bool, str]:
    """(usable, reason): whether ``ee.Initialize()`` works with the credentials already here.

    Without a credentials file nothing touches the network. With one, ``ee.Initialize`` runs
    in a daemon thread and is abandoned after ``timeout_s`` seconds.
    """
    try:
        import ee
    except ImportError:
        return False, "earthengine-api is not installed (pip install earthengine-api)"
    if ee_credentials() is None:
        return False, "no Earth Engine credentials on this machine (run `earthengine authenticate` to use EE)"
    outcome: dict[str, Any] = {}

    def initialize() -> None:
        try:
            ee.Initialize(project=project) if project else ee.Initialize()
            outcome["ok"] = True
        except Exception as exc:  # any failure means: use the local engine
            outcome["error"] = exc

    worker = threading.Thread(target=initialize, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return False, f"ee.Initialize() did not answer within {timeout_s:g} s (no network?)"
    if "error" in outcome:
        return False, f"ee.Initialize() failed: {outcome['error']}"
    return True, "credentials found and ee.Initialize() succeeded"


def resolve_backend(backend: str = "auto", *, timeout_s: float = EE_INIT_TIMEOUT_S) -> Engine:
    """Choose the engine the jobs run on.

    Parameters
    ----------
    backend : {"auto", "ee", "local"}
        "local": the local engine on files; "ee": Earth Engine (an error says why when it cannot be
        used); "auto": Earth Engine when credentials exist here and ``ee.Initialize()`` succeeds
        within ``timeout_s``, else the local engine.
    timeout_s : float
        How long Earth Engine's initialization may take before "auto" gives up on it.

    Returns
    -------
    Engine
        Its ``name`` ("ee" or "local") and the ``reason`` it was chosen, printable as one line.
    """
    backend = str(backend).strip().lower()
    if backend not in BACKENDS:
        raise InvalidParameter(f"backend={backend!r} is unknown: choose one of {BACKENDS}")
    if backend == "local":
        return Engine("local", "chosen explicitly (backend='local')")
    ok, reason = ee_status(timeout_s=timeout_s)
    if ok:
        return Engine("ee", reason)
    if backend == "ee":
        raise OptsarError(f"backend='ee' but Earth Engine is not usable: {reason}; or use backend='local'")
    return Engine("local", f"backend='auto' and {reason}")


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
# results
@dataclass
class GapResult:
    """Outputs of a gap characterization run, on disk and in memory.

    ``statistics``: (stat, y, x) float32 gap statistics (NaN outside the AOI / undefined);
    ``daily_state``: (time, y, x) composited state per day (1 clear, 0 cloudy, -1 missing);
    ``metadata``: one row per input image (ID, CollectionTime, CLOUD_PERCENTAGE_AOI, PIXEL_COUNT_AOI).
    On the EE engine ``ee_image`` holds the statistics image and the arrays are None.
    """

    params: GapParams
    engine: Engine
    aoi: AOI | None
    paths: dict[str, Path] = field(default_factory=dict)
    statistics: xr.DataArray | None = None
    daily_state: xr.DataArray | None = None
    metadata: pd.DataFrame | None = None
    ee_image: Any = None  # EE: the statistics image
    ee_collection: Any = None  # EE: the same-day composites (ee.ImageCollection of states)
    dates: list[str] | None = None  # EE: the composites' dates, YYYY-MM-DD
    tasks: list = field(default_factory=list)  # EE: export reports, output name -> skipped/done/started

    def summary(self) -> pd.DataFrame:
        """Per statistic: unit, and mean, minimum, maximum over the AOI pixels where it is defined."""
        if self.statistics is None:
            raise OptsarError("this run has no local statistics array (Earth Engine runs export them instead)")
        stats = self.statistics.compute()
        has_data = np.asarray(stats.sel(stat="valid_count").values) > 0  # inside the AOI, with data
        rows = []
        for stat in GAP_STATISTICS:
            values = np.asarray(stats.sel(stat=stat.name).values)[has_data]
            finite = values[np.isfinite(values)]
            rows.append({
                "statistic": stat.name, "unit": stat.unit,
                "mean": float(finite.mean()) if finite.size else np.nan,
                "min": float(finite.min()) if finite.size else np.nan,
                "max": float(finite.max()) if finite.size else np.nan,
                "pixels": int(finite.size),
            })
        return pd.DataFrame(rows).set_index("statistic")


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
@dataclass
class InfillResult:
    """Outputs of an infilling run, on disk and as lazy (time, y, x) stacks read back from the files.

    ``observed`` (clear observations), ``predicted`` (calibrated prediction), ``gapfree``, ``mask``
    (1 clear, 0 cloudy, -1 missing) have one image per optical-SAR pair; ``vv``/``vh`` are the S1
    inputs; ``metadata`` the Output_Metadata table; ``metrics`` MAE/RMSE/R2/bias per split and method;
    ``metrics_by_gap`` the same per bin of distance to the nearest clear training view.
    """

    params: InfillParams
    engine: Engine
    aoi: AOI | None
    paths: dict[str, Path] = field(default_factory=dict)
    observed: xr.DataArray | None = None
    predicted: xr.DataArray | None = None
    gapfree: xr.DataArray | None = None
    mask: xr.DataArray | None = None
    vv: xr.DataArray | None = None
    vh: xr.DataArray | None = None
    metadata: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None
    metrics_by_gap: pd.DataFrame | None = None
    n_images: int = 0
    dates: list[str] | None = None  # EE: the pairs' dates
    tasks: list = field(default_factory=list)  # EE: export reports, output name -> skipped/done/started

    @property
    def n_pairs(self) -> int:
        return 0 if self.metadata is None else len(self.metadata)

    @property
    def accuracy(self) -> pd.DataFrame:
        """MAE (NDVI units) per split (rows) for every estimate: fusion, S1 model, the two baselines."""
        if self.metrics is None:
            raise OptsarError("this run has no local accuracy table (Earth Engine runs export it instead)")
        table = self.metrics.pivot(index="split", columns="method", values="MAE")
        return table.reindex(index=["validation", "test"], columns=["fusion", "model", "pixel_mean", "interpolation"])

    @property
    def accuracy_by_gap(self) -> pd.DataFrame:
        """MAE per (split, days to the nearest clear training view) (rows) and estimate (columns)."""
        if self.metrics_by_gap is None:
            raise OptsarError("this run has no local accuracy table (Earth Engine runs export it instead)")
        t = self.metrics_by_gap
        table = t.pivot_table(index=["split", "gap_bin"], columns="method", values="MAE", sort=False)
        n = t[t.method == "fusion"].set_index(["split", "gap_bin"])["n"]
        return table[["fusion", "model", "pixel_mean", "interpolation"]].assign(n=n)

    @property
    def verdict(self) -> str:
        """One sentence naming the best estimate on validation, and a warning when the product loses to a baseline."""
        from .report import verdict

        if self.metrics is None:
            return "Accuracy is computed by the local engine (Earth Engine runs export their inputs for it)."
        return " ".join(part for part in verdict(self.metrics, self.params.method) if part)


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


# --------------------------------------------------------------------------------------------
# Earth Engine runs: graphs built by optsar_nb.ee, exported by optsar_nb.ee.export
def _ee_aoi(aoi, params) -> AOI:
    if aoi is None:
        raise InvalidParameter("the Earth Engine engine needs an AOI: draw one on the map or give a GeoJSON file")
    return load_aoi(aoi, max_area_km2=params.max_aoi_km2)


def ee_destination(export: str, params, out_dir):
    """The export destination named by the notebooks' ``export`` parameter.

    "drive": a Drive folder named after the project title; "local": download into ``out_dir``
    (small results only); "asset:projects/<project>/assets/<folder>": an Asset folder;
    "gcs:<bucket>" or "gcs:<bucket>/<prefix>": a Cloud Storage bucket.
    """
    from .ee.export import Destination

    kind, _, target = str(export).partition(":")
    if kind == "drive":
        return Destination("drive", folder=target or params.project_title)
    if kind == "local":
        return Destination("local", folder=target or str(out_dir))
    if kind == "asset" and target.startswith("projects/") and "/assets/" in target:
        return Destination("asset", folder=target)
    if kind == "gcs" and target:
        bucket, _, prefix = target.partition("/")
        return Destination("gcs", bucket=bucket, folder=prefix or params.project_title)
    raise InvalidParameter(
        f"export={export!r} is not a destination: use 'drive', 'local', "
        "'asset:projects/<project>/assets/<folder>' or 'gcs:<bucket>[/<prefix>]'"
    )


def _run_gaps_ee(params: GapParams, engine: Engine, *, aoi, export: str, out_dir, progress=None,
                 export_options: dict | None = None) -> GapResult:
    from .ee.export import export_gaps
    from .ee.gaps import characterize_gaps

    aoi_obj = _ee_aoi(aoi, params)
    built = characterize_gaps(aoi_obj, params)
    times = built.composites.aggregate_array("system:time_start").getInfo()  # one round trip
    result = GapResult(params=params, engine=engine, aoi=aoi_obj, ee_image=built.statistics,
                       ee_collection=built.composites,
                       dates=[str(pd.Timestamp(t, unit="ms").date()) for t in times])
    if out_dir is not None:
        result.tasks = [export_gaps(built, destination=ee_destination(export, params, out_dir), progress=progress,
                                    **(export_options or {}))]
    return result


def _run_infill_ee(params: InfillParams, engine: Engine, *, aoi, export: str, out_dir,
                   progress=None, export_options: dict | None = None) -> InfillResult:
    from .ee.export import export_infill
    from .ee.infill import build_infill

    aoi_obj = _ee_aoi(aoi, params)
    built = build_infill(aoi_obj, params)
    outputs = built.outputs
    result = InfillResult(params=params, engine=engine, aoi=aoi_obj, observed=outputs["NDVI_Obs"],
                          predicted=outputs["NDVI_Pred"], gapfree=outputs["NDVI_gapfree"], mask=outputs["NDVI_Mask"],
                          metadata=built.table, n_images=len(built.table),
                          dates=[str(pd.Timestamp(t, unit="ms").date()) for t in built.table["CollectionTime"]])
    if out_dir is not None:
        result.tasks = [export_infill(built, destination=ee_destination(export, params, out_dir), progress=progress,
                                      **(export_options or {}))]
    return result
