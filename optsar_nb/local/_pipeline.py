"""The whole infilling job (docs/method.md part B) at scale, and the saved model.

Passes over the data, in order:
1. the optical inputs are read once: clear observations and states staged to disk, per-image
   cloud statistics counted on the staged states; sparse and unpaired images are then dropped
   by compacting the staged stacks in place;
2. S1 is read once: the aligned images staged, their window means' AOI means reduced;
3. the fused stage (``_fused``), in worker processes, block by block: the staged S1 read with
   the block's halo and averaged over the windows, covariates, robust regression, prediction,
   the fusion's S1 covariates staged and a sample of its leave-out rows, from which the fusion
   weights are fitted;
4. PCA smoothing (two global reductions, then the reconstruction, in place);
5. standardization and per-image MAE, image by image;
6. the fusion's scoring pass (``_accuracy``), block by block: per-pixel reliability, the
   standard errors' calibration, every estimate's errors by gap length;
7. the outputs, tile by tile (the gap fill reads its halo from the staged stacks).

Why staged: the prediction stack feeds three global reductions in turn (PCA means, PCA
covariance, per-image standardization quantiles), so it is computed once and kept in a
temporary memory-mapped file instead of in memory or recomputed; the observations and states
are staged so that per-image steps read one contiguous image at a time. S1 is staged as it is
read, aligned (float32: 8 bytes per pixel and S1 image for both polarizations), and each block
averages it over the windows itself, halo included: the window means would take 16 bytes per
pixel and pair (float64), and re-reading S1 from compressed input files over every block's halo
decompresses each file tile many times. Peak memory is then a few blocks per core, whatever the
scene size; disk use is given by :func:`staging_bytes` (at most about 25 bytes per pixel and
image).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import InsufficientDisk, NoImages, StackMismatch
from ..missions import CLEAR, MISSING
from ..outputs import write_csv
from ..params import InfillParams
from ..products import INFILL_METADATA_FILE, file_name
from . import _accuracy, _fused, _kernels, _postprocess, fusion, steps
from .gaps import aoi_mask, select_period
from .stack import TILE_PX, lazy_array, read_geotiff, write_geotiff

MODEL_FILE = "NDVI_Model"  # the coefficient image (bands = COEFFICIENT_BANDS)
REPORT_FILE = "Infill_Report"
METRICS_FILE = "Infill_Metrics"  # accuracy of every estimate by split and gap length
BLOCK_BYTES = 128 * 2**20  # budget of one block's temporaries in the fused stage (one block per worker process)
# Per pixel and pair in that stage: window means (float64) with their halo, covariates, box-mean and
# median temporaries, observations, prediction (about 40 measured, plus margin for the halo of
# small blocks). The regression's (pixels, T, 9) design is not in it: it is built per batch of
# pixels (``_regression.BATCH_BYTES``), a fixed cost whatever the block size.
BYTES_PER_SAMPLE = 64
SCATTER_SAMPLES = 4000  # about this many scored points are kept for the observed-vs-estimated scatter
FUSION_ROWS = 1_000_000  # leave-out rows sampled (over the AOI) to fit the fusion weights
SERIES_PIXELS = 4  # pixels whose time series the report plots


@dataclass
class InfillRun:
    """What :func:`infill` returns: files, tables and the figures' raw material."""

    params: InfillParams
    paths: dict[str, Path]
    metadata: pd.DataFrame  # Output_Metadata plus S1_COUNT and the effective cloud fraction
    metrics: pd.DataFrame  # rows (split, method): n, MAE, RMSE, R2, bias (SE_coverage), all gap lengths
    donor_id: str
    samples: dict[str, np.ndarray]  # split -> (n, 5): obs, model, fusion, pixel mean, interpolation
    series: dict[str, np.ndarray]  # pixel series for the report's time-series figure
    timings: dict[str, float] = field(default_factory=dict)
    rank_deficient_pixels: int = 0
    underdetermined_pixels: int = 0  # AOI pixels with fewer samples than coefficients
    guarded_pixels: int = 0  # AOI pixels with enough for a solve but fewer than params.min_train_samples
    model_pixels: int = 0  # AOI pixels with a per-pixel model
    prediction_out_of_range: tuple[int, int] = (0, 0)  # calibrated predictions outside [-1, 1], of all
    metrics_by_gap: pd.DataFrame | None = None  # rows (split, method, gap_bin); also Infill_Metrics CSV
    fusion_weights: np.ndarray | None = None  # (gap bins, [VV, VH, climatology]) weights of the corrections
    standard_errors: dict[str, np.ndarray] = field(default_factory=dict)  # estimate -> SE per SE bin


def _edge(n_time: int) -> int:
    return int(np.clip(np.sqrt(BLOCK_BYTES / (max(n_time, 1) * BYTES_PER_SAMPLE)), 32, 512))


def _memmap(folder: Path, name: str, shape, dtype) -> np.memmap:
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


def _lazy(mm: np.ndarray, chunks) -> da.Array:
    """A dask array over a staged memmap, read window by window (never copied whole)."""
    return lazy_array(mm, chunks, copy=False)


def _stack_like(data, template: xr.DataArray, table: pd.DataFrame, name: str) -> xr.DataArray:
    coords = {"time": pd.to_datetime(table["CollectionTime"].to_numpy(), unit="ms"),
              "id": ("time", table["ID"].astype(str).to_numpy()), "y": template.y, "x": template.x}
    return xr.DataArray(data, dims=("time", "y", "x"), coords=coords, attrs=steps._grid_attrs(template), name=name)


def output_paths(out_dir: Path, params: InfillParams, *, report: bool) -> dict[str, Path]:
    paths = {name: out_dir / file_name(name, params.suffix, ".tif")
             for name in ("NDVI_gapfree", "NDVI_gapfree_SE", "NDVI_Mask", "NDVI_Pred", "NDVI_Obs", MODEL_FILE)}
    paths["metadata"] = out_dir / file_name(INFILL_METADATA_FILE, params.suffix, ".csv")
    paths["metrics"] = out_dir / file_name(METRICS_FILE, params.suffix, ".csv")
    if report:
        paths["report"] = out_dir / file_name(REPORT_FILE, params.suffix, ".md")
    return paths


def infill(
    ndvi: xr.DataArray,
    state: xr.DataArray,
    vv: xr.DataArray,
    vh: xr.DataArray,
    params: InfillParams,
    out_dir: str | Path,
    *,
    aoi=None,
    overwrite: bool | str = False,
    report: bool = True,
    workers: int | None = None,
    work_dir: str | Path | None = None,
) -> InfillRun:
    """Run docs/method.md part B and write its outputs into ``out_dir``.

    Inputs: ``ndvi`` (time, y, x) NDVI; ``state`` the same images' CLEAR/CLOUDY/MISSING
    (:func:`cloud_mask`); ``vv``, ``vh`` S1 (time, y, x) in dB on any grid (aligned here);
    ``aoi`` an AOI (default: the whole grid). Writes ``NDVI_gapfree``, ``NDVI_Mask``,
    ``NDVI_Pred`` (the calibrated prediction), ``NDVI_Obs`` (clear observations) with one band per
    pair ID, ``NDVI_Model`` (the coefficient image), ``Output_Metadata`` CSV and, with
    ``report``, the accuracy report, and ``Infill_Manifest<suffix>.json`` last, which marks the
    set complete (:class:`optsar_nb.outputs.OutputSet`: staged, checked, then moved into place;
    one run per folder). Existing files are refused unless ``overwrite`` (True, or "own": only this
    job's own unchanged earlier outputs).

    ``workers``: cores to use (default: all). ``work_dir``: where the job stages its temporary
    stacks (default: ``out_dir``); it needs about 25 bytes per pixel and image
    (:func:`staging_bytes`), which is checked before any work starts.
    """
    from ..outputs import WORK_PREFIX, OutputSet, fingerprint
    from ..products import INFILL_MANIFEST_JOB

    out_dir = Path(out_dir)
    paths = output_paths(out_dir, params, report=report)
    inputs = {"ndvi": fingerprint(ndvi), "state": fingerprint(state), "vv": fingerprint(vv), "vh": fingerprint(vh),
              "aoi": getattr(aoi, "name", None)}
    with OutputSet(out_dir, [p.name for p in paths.values()], job=INFILL_MANIFEST_JOB, suffix=params.suffix,
                   params=params.to_dict(), inputs=inputs, overwrite=overwrite) as out:
        work_parent = Path(work_dir) if work_dir is not None else out_dir
        work_parent.mkdir(parents=True, exist_ok=True)
        check_disk_space(select_period(ndvi, params.start, params.end).shape, _s1_near(vv, params).size,
                         work_parent, out_dir)
        work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=work_parent))
        try:
            with dask.config.set(scheduler="threads", num_workers=workers):
                run = _run(ndvi, state, vv, vh, params, {k: out.path(p.name) for k, p in paths.items()}, work,
                           aoi=aoi, overwrite=overwrite, report=report, workers=workers)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    run.paths = paths
    return run


# Temporary disk per pixel and optical image: observations (float32), states (int8), the
# predictions and the fusion's two covariates (float32) while the regression runs (17 bytes),
# plus the aligned S1 (S1_BYTES_PER_IMAGE per pixel and S1 image); then the PCA-smoothed
# predictions in float64 until B.9 has read them (25 bytes); then the fused estimate (float32)
# and its standard-error bin (int8) (22 bytes). The coefficient image adds 88 bytes per pixel.
STAGING_BYTES_PER_SAMPLE = 25
FUSED_STAGE_BYTES_PER_SAMPLE = 17
S1_BYTES_PER_IMAGE = 8  # VV and VH in float32
# Output bytes per pixel and image before compression (four float32 stacks and the int8 mask);
# deflate typically brings the float stacks to ~70 %.
OUTPUT_BYTES_PER_SAMPLE = 17


def staging_bytes(n_images: int, n_s1: int, h: int, w: int) -> int:
    """The largest temporary disk use of an infilling of ``n_images`` optical and ``n_s1`` S1
    images of ``h`` x ``w`` px (the coefficient image included)."""
    per_pixel = max(FUSED_STAGE_BYTES_PER_SAMPLE * n_images + S1_BYTES_PER_IMAGE * n_s1,
                    STAGING_BYTES_PER_SAMPLE * n_images)
    return (per_pixel + 11 * 8) * h * w


def check_disk_space(shape: tuple[int, int, int], n_s1: int, work_dir: Path, out_dir: Path) -> None:
    """Refuse to start when ``work_dir`` cannot hold the staged stacks of a (time, y, x) input
    and ``n_s1`` S1 images.

    Counts every image of the period (an upper bound: sparse and unpaired images are dropped
    later). The message gives the sizes and the fix, instead of a full disk an hour in.
    """
    n, h, w = shape
    staging = staging_bytes(n, n_s1, h, w)
    outputs = n * h * w * OUTPUT_BYTES_PER_SAMPLE
    free = shutil.disk_usage(work_dir).free
    if staging > free:
        raise InsufficientDisk(
            f"the infilling stages about {_size(staging)} of temporary stacks ({n} images of {h} x {w} px) "
            f"in {work_dir}, which has {_size(free)} free. Pass work_dir= (CLI: --work-dir) on a disk with "
            f"more space, or shorten the period or the AOI. The outputs in {out_dir} need up to "
            f"{_size(outputs)} more (less after compression)."
        )


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:,.1f} MB"


def _stage_optical(ndvi, state, params, aoi, work):
    """B.1-B.2 in one pass over the optical inputs.

    The period's clear observations (float32, NaN elsewhere) and states (int8; MISSING outside
    the AOI and where a clear pixel has no NDVI) are staged to disk, and each image's AOI
    cloud statistics are then counted on the staged states. Returns the period's NDVI (lazy,
    for its coordinates), the statistics table, the AOI mask and the two staged stacks.
    """
    ndvi = select_period(ndvi, params.start, params.end).sortby("time")
    state = select_period(state, params.start, params.end).sortby("time")
    if ndvi.sizes["time"] != state.sizes["time"] or not np.array_equal(ndvi.time.values, state.time.values):
        raise StackMismatch("the NDVI and cloud-state stacks describe different images: export them together")
    if ndvi.sizes["time"] == 0:
        raise NoImages(f"no optical image between {params.start} and {params.end}: widen the dates")
    inside = aoi_mask(ndvi, aoi) if aoi is not None else None
    st = steps.observed_state(state, ndvi, inside)
    N, H, W = st.shape
    chunks = (-1, _edge(N), _edge(N))
    mm_obs, mm_st = _memmap(work, "obs", (N, H, W), "float32"), _memmap(work, "state", (N, H, W), "int8")
    st_d = steps._dask(st, chunks)
    obs_d = da.where(st_d == CLEAR, steps._dask(ndvi, chunks).astype("float32"), np.float32(np.nan))
    da.store([st_d.astype("int8"), obs_d], [mm_st, mm_obs], lock=False)
    table = steps.image_cloud_stats(st.copy(data=_lazy(mm_st, chunks)))
    return ndvi, table, inside, mm_obs, mm_st


def _select_pairs(ndvi, table, vv, vh, params, inside):
    """B.2 (sparse images dropped), B.3 S1 alignment and B.5 pairing.

    Returns the pairs' positions among the period's images, the aligned S1 stacks, the
    pairs' S1 window weights and their table.
    """
    keep = steps.drop_sparse_images(table, params)
    if keep.size == 0:
        raise NoImages(f"no optical image has more than {params.min_valid_pixels} valid AOI pixels")
    table = table.iloc[keep].reset_index(drop=True)
    # S1 over the AOI and the pixels around it that the AOI's covariates read
    support = None if inside is None else inside.copy(data=steps.covariate_support(inside.values, params))
    s1 = []
    for band in (vv, vh):
        band = steps.align_s1(band.isel(time=_s1_near(band, params)).sortby("time"), ndvi)
        s1.append(band.where(support) if support is not None else band)
    weights = _kernels.window_weights(ndvi.time.values[keep], s1[0].time.values, params.s1_window_days)
    pairs = steps.pair_images(table, weights.sum(axis=1), params)
    table = table.iloc[pairs].reset_index(drop=True).assign(S1_COUNT=weights.sum(axis=1)[pairs].astype(int))
    return keep[pairs], s1[0], s1[1], weights[pairs], table


def _s1_near(s1: xr.DataArray, params: InfillParams) -> np.ndarray:
    """Positions of the S1 images of the period and of a window beyond it on each side, so that
    dates near its ends get full windows."""
    t = pd.DatetimeIndex(s1.time.values)
    pad = pd.Timedelta(days=params.s1_window_days)
    return np.flatnonzero((t >= pd.Timestamp(params.start) - pad) & (t < pd.Timestamp(params.end) + pad))


def _stage_s1(vv, vh, weights, params, work, edge, inside) -> tuple[np.ndarray, np.ndarray]:
    """B.3: the aligned S1 stacks staged as ``s1_vv``/``s1_vh`` (their own precision, at least
    float32) with the pairs' window ``weights``; returns the AOI means (``inside``; None: the
    whole grid) of the window means, a global reduction over means computed block by block and
    dropped (the fused stage recomputes them with its halo: ``_kernels.window_mean`` gives a
    pixel the same value in any block). Raises NoImages when S1 has no valid value in the AOI.
    """
    T = weights.shape[0]
    bounds = (params.s1_min_db, params.s1_max_db)
    in_aoi = None if inside is None else lazy_array(np.asarray(inside.values), (edge, edge))
    np.save(work / "weights.npy", weights)
    sums = []
    for name, band in (("s1_vv", vv), ("s1_vh", vh)):
        s1 = steps._dask(band, (-1, edge, edge))  # bounded temporaries
        s1 = s1.astype(np.result_type(s1.dtype, np.float32))
        mm = _memmap(work, name, s1.shape, s1.dtype)
        da.store(s1, mm, lock=False)
        s1 = _lazy(mm, chunks=(-1, edge, edge))
        win = s1.map_blocks(lambda b: _kernels.window_mean(b, weights, *bounds), chunks=((T,), *s1.chunks[1:]),
                            dtype="float64")
        win = win if in_aoi is None else da.where(in_aoi, win, np.nan)
        sums.append((da.nansum(win, axis=(1, 2)), da.isfinite(win).sum(axis=(1, 2))))
    (s_vv, n_vv), (s_vh, n_vh) = da.compute(*sums)
    if n_vv.sum() == 0 or n_vh.sum() == 0:
        raise NoImages(
            f"Sentinel-1 has no valid {'VV' if n_vv.sum() == 0 else 'VH'} value over the optical grid within "
            f"{params.s1_window_days} days of any optical image (values below s1_min_db={params.s1_min_db} dB or "
            f"above s1_max_db={params.s1_max_db} dB, and no-data, count as missing): check that the S1 files cover "
            "the area and period, and are in dB (not linear power or amplitude)")
    with np.errstate(invalid="ignore", divide="ignore"):
        return s_vv / n_vv, s_vh / n_vh


def _compact(mm: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The staged images at ``positions`` (increasing), moved in place to the front of ``mm``.

    Image ``positions[i] >= i`` is read before anything overwrites it. Returns ``mm[:n]``.
    """
    for i, j in enumerate(positions):
        if i != j:
            mm[i] = mm[j]
    return mm[: len(positions)]


def _blocks(H: int, W: int, edge: int) -> list[tuple[slice, slice]]:
    """Row-major (rows, cols) slices of the square blocks of an H x W grid."""
    return [(slice(r, min(r + edge, H)), slice(c, min(c + edge, W)))
            for r in range(0, H, edge) for c in range(0, W, edge)]


def _run(ndvi, state, vv, vh, params, paths, work, *, aoi, overwrite, report, workers):
    timings, tic = {}, time.perf_counter()

    def lap(name):
        nonlocal tic
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - tic
        tic = now

    ndvi, table, inside, mm_obs, mm_st = _stage_optical(ndvi, state, params, aoi, work)
    lap("stage observations (B.1-B.2)")
    sel, vv, vh, weights, table = _select_pairs(ndvi, table, vv, vh, params, inside)
    ndvi, mm_obs, mm_st = ndvi.isel(time=sel), _compact(mm_obs, sel), _compact(mm_st, sel)
    table, donor_pos = steps.split_pairs(table, params)
    labels = table["SplitLabel"].to_numpy().astype(str)
    T, H, W = mm_obs.shape
    edge = _edge(T)
    donor_cloudy = np.asarray(mm_st[donor_pos] == 0)
    times = pd.to_datetime(table["CollectionTime"], unit="ms")
    days = ((times - pd.Timestamp(params.start)) / pd.Timedelta(days=1)).to_numpy()
    lap("pairing, split (B.2-B.6)")

    # B.3: S1 staged, and the AOI means of its window means (the fused stage recomputes those means)
    vv_mean, vh_mean = _stage_s1(vv, vh, weights, params, work, edge, inside)
    lap("S1 window means, AOI means (B.3)")

    # B.3-B.7 fused per block; the fusion's covariates staged and its leave-out rows sampled
    _memmap(work, "coef", (11, H, W), "float64")
    mm_pred = _memmap(work, "pred", (T, H, W), "float32")
    _memmap(work, "nmean", (len(steps.FUSION_COVARIATES), T, H, W), "float32")
    np.save(work / "donor.npy", donor_cloudy)
    np.save(work / "inside.npy", np.ones((H, W), bool) if inside is None else np.asarray(inside.values, bool))
    n_train_images = int(np.isin(labels, ("train", "validation")).sum())
    shared = {"vv_mean": vv_mean, "vh_mean": vh_mean, "labels": labels, "days": days, "params": params,
              "row_fraction": min(1.0, FUSION_ROWS / max(1, len(fusion.LEAVE_OUT_SKIPS) * n_train_images * H * W))}
    leave_out = _fused.fit_predict(work, _blocks(H, W, edge), shared, workers)
    mm_coef = np.load(work / "coef.npy", mmap_mode="r")
    mm_nmean = np.load(work / "nmean.npy", mmap_mode="r")
    for name in ("s1_vv", "s1_vh"):  # disk back as soon as the stage is done
        (work / f"{name}.npy").unlink()
    fusion_weights = fusion.fit_weights(leave_out["bin"], leave_out["resid"], leave_out["dep"])
    lap("covariates, regression, prediction, fusion weights (B.3-B.7, C)")

    # B.8 PCA smoothing, staged in float64 for B.9 (see steps.pca_smooth)
    pred_lazy = xr.DataArray(_lazy(mm_pred, chunks=(-1, edge, edge)), dims=("time", "y", "x"))
    smoothed = steps.pca_smooth(pred_lazy, params, dtype="float64")
    mm_smooth = mm_pred
    if smoothed is not pred_lazy:
        mm_smooth = _memmap(work, "smoothed", (T, H, W), "float64")
        da.store(smoothed.data, mm_smooth, lock=False)
    lap("PCA smoothing (B.8)")

    # B.9 standardization and the per-image MAE
    def one_image(t):
        s, o = np.asarray(mm_st[t]), np.asarray(mm_obs[t])
        clear = s == CLEAR
        # B.9 applies by the image's cloud cover (its Cloud_cover); on a validation pair its
        # statistics use the pixels its artificial clouds leave visible (nothing hidden leaks in)
        used = clear & ~donor_cloudy if labels[t] == "validation" else clear
        cloud = 1.0 - clear.sum() / max((s != MISSING).sum(), 1)
        cal = steps.standardize_one(np.asarray(mm_smooth[t]), o, used, cloud, params)
        mm_pred[t] = cal
        return _postprocess.mae(o, cal, clear)

    with ThreadPoolExecutor(max_workers=workers or 2) as pool:
        table = table.assign(MAE=list(pool.map(one_image, range(T))))
    if mm_smooth is not mm_pred:
        del mm_smooth
        (work / "smoothed.npy").unlink()
    lap("standardization, MAE (B.9-B.10)")

    # C: reliability of the S1 correction per pixel, standard errors, every estimate scored by gap length
    stage = _accuracy.Stage(obs=mm_obs, state=mm_st, pred=mm_pred, nmean=mm_nmean, donor=donor_cloudy,
                            alpha=_memmap(work, "alpha", (H, W), "float32"),
                            fused=_memmap(work, "fused", (T, H, W), "float32"),
                            se_bin=_memmap(work, "se_bin", (T, H, W), "int8"), labels=labels, days=days,
                            weights=fusion_weights, params=params,
                            sample_fraction=min(1.0, SCATTER_SAMPLES / max(1, T * H * W * 0.1)))
    scores = _accuracy.score(stage, _blocks(H, W, edge), workers)
    se = _accuracy.standard_errors(scores)
    metrics_by_gap = _accuracy.metrics_tables(scores, se, labels)
    lap("fusion, standard errors, accuracy by gap length (C)")

    in_aoi = inside.values if inside is not None else np.ones((H, W), bool)
    n_train = np.asarray(mm_coef[10])
    coef_ok = np.isfinite(mm_coef[0])
    series = _series(stage)
    overall = metrics_by_gap[metrics_by_gap.gap_bin == "all"].drop(columns="gap_bin").reset_index(drop=True)
    run = InfillRun(params=params, paths=paths, metadata=table, metrics=overall, metrics_by_gap=metrics_by_gap,
                    donor_id=str(table["ID"][donor_pos]),
                    samples=_split_samples(scores["samples"]), series=series, timings=timings,
                    rank_deficient_pixels=int((coef_ok & (mm_coef[9] < 9)).sum()),
                    underdetermined_pixels=int((~coef_ok & in_aoi & (n_train < 9)).sum()),
                    guarded_pixels=int((~coef_ok & in_aoi & (n_train >= 9)).sum()),
                    model_pixels=int((coef_ok & in_aoi).sum()),
                    prediction_out_of_range=(int(scores["out_of_range"][0]), int(scores["out_of_range"][1])),
                    fusion_weights=fusion_weights, standard_errors=se)
    _write_outputs(ndvi, table, stage, se, mm_coef, inside, paths, overwrite)
    write_csv(metrics_by_gap, paths["metrics"], overwrite=overwrite)
    lap("write outputs")
    if report:
        from ..report import write_report

        write_report(run, paths["report"], overwrite=overwrite)
        lap("report")
    return run


def _write_outputs(ndvi, table, stage, se, mm_coef, inside, paths, overwrite):
    """The stacks, the coefficient image and the metadata CSV.

    The staged stacks are chunked by the files' tiles: the gap fill's focal median then runs
    on blocks that are the writer's windows (or whole multiples of them), so no block is
    computed twice for two windows it straddles.
    """
    tiles = (-1, TILE_PX, TILE_PX)
    pred_da = _stack_like(_lazy(stage.pred, chunks=tiles), ndvi, table, "NDVI_Pred")
    obs_da = _stack_like(_lazy(stage.obs, chunks=tiles), ndvi, table, "NDVI_Obs")
    st_da = _stack_like(_lazy(stage.state, chunks=tiles), ndvi, table, "NDVI_Mask")
    inside = np.asarray(inside.values) if inside is not None else None

    def blockwise(fn, name):
        def one(block_info=None):
            _, rows, cols = (slice(*loc) for loc in block_info[None]["array-location"])
            return fn(rows, cols)

        # named here: dask would otherwise hash the staged stacks the function reads to name it
        out = da.map_blocks(one, chunks=pred_da.data.chunks, dtype="float32", name=f"{name}-{uuid.uuid4().hex}")
        return _stack_like(out, ndvi, table, name)

    write_geotiff(blockwise(lambda r, c: _accuracy.gapfree_block(stage, inside, r, c), "NDVI_gapfree"),
                  paths["NDVI_gapfree"], overwrite=overwrite)
    write_geotiff(blockwise(lambda r, c: _accuracy.gapfree_se_block(stage, se, inside, r, c), "NDVI_gapfree_SE"),
                  paths["NDVI_gapfree_SE"], overwrite=overwrite)
    write_geotiff(st_da, paths["NDVI_Mask"], overwrite=overwrite)
    write_geotiff(pred_da, paths["NDVI_Pred"], overwrite=overwrite)
    write_geotiff(obs_da, paths["NDVI_Obs"], overwrite=overwrite)
    coef = xr.DataArray(_lazy(mm_coef[:9], chunks=tiles), dims=("coef", "y", "x"),
                        coords={"coef": list(steps.COEFFICIENT_BANDS), "y": ndvi.y, "x": ndvi.x},
                        attrs=steps._grid_attrs(ndvi))
    write_geotiff(coef, paths[MODEL_FILE], band_names=list(steps.COEFFICIENT_BANDS), overwrite=overwrite)
    out_table = table.rename(columns={"CLOUD_PERCENTAGE_AOI": "Cloud_cover"})
    write_csv(out_table[["ID", "Cloud_cover", "CollectionTime", "Random", "MAE", "SplitLabel"]], paths["metadata"],
              overwrite=overwrite)


def _split_samples(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Per scored split, (n, 1 + len(ESTIMATES)) sampled values: the observation, then each estimate."""
    n_splits = len(_accuracy.SCORED_SPLITS)
    return {split: samples[samples[:, i] == 1][:, n_splits:] for i, split in enumerate(_accuracy.SCORED_SPLITS)}


def _series(stage) -> dict[str, np.ndarray]:
    """Time series of a few pixels with finite predictions (seeded choice) for the report."""
    ok = np.flatnonzero(np.isfinite(stage.pred[0]).ravel())
    if ok.size == 0:
        return {}
    H, W = stage.pred.shape[1:]
    pick = np.sort(np.random.default_rng(stage.params.seed).choice(ok, min(SERIES_PIXELS, ok.size), replace=False))
    ys, xs = np.unravel_index(pick, (H, W))
    one = [(slice(y, y + 1), slice(x, x + 1)) for y, x in zip(ys, xs)]
    gapfree = np.stack([_accuracy.gapfree_block(stage, None, r, c)[:, 0, 0] for r, c in one], axis=1)
    series_obs = np.asarray(stage.obs[:, ys, xs], dtype="float64")
    series_st = np.asarray(stage.state[:, ys, xs])
    train = steps.training_mask(series_st, stage.labels, stage.donor[ys, xs][None])
    interp = _postprocess.interpolation_baseline(np.where(train, series_obs, np.nan), stage.days)
    return {"days": np.asarray(stage.days), "y": ys, "x": xs, "obs": series_obs, "state": series_st,
            "pred": np.asarray(stage.pred[:, ys, xs], dtype="float64"), "gapfree": gapfree, "interpolation": interp,
            "labels": stage.labels, "artificial": stage.donor[ys, xs], "start": stage.params.start}


# ---------------------------------------------------------------------------------------------
# the saved model
def load_model(path: str | Path) -> xr.DataArray:
    """A saved coefficient image (``NDVI_Model...tif``) as a lazy (coef, y, x) float64 DataArray."""
    raw = read_geotiff(path)
    names = [str(b) for b in raw.band.values]
    if names != list(steps.COEFFICIENT_BANDS):
        raise StackMismatch(f"{path} is not a coefficient image: its bands are {names}, "
                            f"expected {list(steps.COEFFICIENT_BANDS)}")
    return raw.rename(band="coef")


def predict_from_model(model: xr.DataArray | str | Path, vv: xr.DataArray, vh: xr.DataArray, times,
                       params: InfillParams, *, inside: xr.DataArray | None = None) -> xr.DataArray:
    """B.3-B.7 without retraining: raw NDVI predictions for the optical ``times`` (lazy).

    ``vv``/``vh``: S1 stacks in dB (aligned to the model's grid here); the AOI means are taken
    over ``inside`` (default: the whole grid). PCA smoothing and standardization (B.8-B.9) are
    not applied: they need the observations of a run.
    """
    coef = load_model(model) if isinstance(model, (str, Path)) else model
    support = None if inside is None else inside.copy(data=steps.covariate_support(inside.values, params))
    wins = []
    for band in (vv, vh):
        band = steps.align_s1(band.sortby("time"), coef)
        band = band.where(support) if support is not None else band
        win, _ = steps.s1_window_mean(band, times, params)
        wins.append(win)
    means = [steps.aoi_mean(w if inside is None else w.where(inside)) for w in wins]
    covs = steps.covariates(wins[0], wins[1], means[0], means[1], params, inside=inside)
    return steps.predict(coef, covs)
