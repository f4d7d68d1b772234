"""The whole infilling job (docs/method.md part B) at scale.

Passes over the data, in order, each a dask graph of block tasks plus explicit AOI-wide
reductions, run on the active scheduler (``_store.compute``):
1. the optical inputs are read once: clear observations and states staged, per-image cloud
   statistics counted on the staged states; sparse and unpaired images are then dropped (the
   staged stacks compacted);
2. S1 is read once (``_s1_staging``): the aligned images staged (compressed), their window
   means' AOI means summed by the reading tasks;
3. the fused stage (``_fused``), block by block (worker processes on one machine): the staged
   S1 read with the block's halo and averaged over the windows, covariates, robust regression,
   prediction; the coefficients staged, the PCA's sums and a sample of the fusion's leave-out
   rows returned, from which the PCA components and the fusion weights follow;
4. PCA smoothing: each block's prediction recomputed and its component scores staged (and the
   first of B.9's passes run on the smoothed prediction);
5. standardization (``_standardize``: each image's statistics, exact quantiles included, as
   reductions over blocks);
6. the fusion's scoring pass (``_accuracy``), block by block: per-pixel reliability, the
   standard errors' calibration, every estimate's errors by gap length, the per-image MAE;
7. the outputs, computed block by block and written tile by tile (the gap-free stack and its SE
   together, from one pass).

Staged stacks are Zarr arrays (``_store.Store``) in a run folder under ``work_dir``: a local
folder by default, or an fsspec URL that every worker of a cluster reaches. Their chunks are
(time, block, block): a block task reads and writes whole chunks, so no two tasks write one chunk.

What is staged, and what recomputed: the observations, states and aligned S1 are staged as
every later pass reads them; of the results only the coefficients (11 per pixel), the PCA
component scores (floor(pca_fraction x T) per pixel, float64) and the fusion's per-pixel
reliability; all of it losslessly compressed (``_store``'s codecs). Everything else is
recomputed per block where it is read (``_blocks.BlockArray``): the smoothed prediction from
its scores (cheap; pixels whose series B.8 leaves as it is are staged as they are, ``rest``),
the calibrated one from it and B.9's per-image statistics, the fusion's S1 covariates from the
staged S1 (twice: scoring, outputs), the fused estimate from those. Recomputing is exact: the
same operations on the same values.
Disk use is then at most ``_store.staging_bytes``: about 6 bytes per pixel and optical image
and 8 per S1 image before compression (4 and 4 for int16 inputs); for a 2750 x 4671 px scene of
380 images about 19 GB after it (the prediction stacks staged at full size took 140 GB). The S1
window means (float64) are not staged: each block averages the staged S1 itself, halo included.
Peak memory is a few blocks per core, whatever the scene size.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from threadpoolctl import threadpool_limits

from ..errors import NoImages, StackMismatch
from ..missions import CLEAR
from ..outputs import write_csv
from ..params import InfillParams
from . import _accuracy, _fused, _infill_outputs, _kernels, _s1_staging, _standardize, _store, fusion, steps
from ._blocks import BlockArray, whole_blocks
from .gaps import aoi_cloud_counts, aoi_mask, select_period

BLOCK_BYTES = 128 * 2**20  # budget of one block's temporaries in the fused stage (one block per worker process)
# Per pixel and pair in that stage: window means (float64) with their halo, covariates, box-mean and
# median temporaries, observations, prediction (about 40 measured, plus margin for the halo of
# small blocks). The regression's (pixels, T, 9) design is not in it: it is built per batch of
# pixels (``_regression.BATCH_BYTES``), a fixed cost whatever the block size.
BYTES_PER_SAMPLE = 64
SCATTER_SAMPLES = 4000  # about this many scored points are kept for the observed-vs-estimated scatter
FUSION_ROWS = 1_000_000  # leave-out rows sampled (over the AOI) to fit the fusion weights


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
    """Block edge within BLOCK_BYTES, a power of two from 32 to 512: the output files' tiles
    (``geotiff_writer.TILE_PX``) are then whole blocks or whole multiples of them, so writing a tile reads
    whole chunks of the staged stacks."""
    edge = np.clip(np.sqrt(BLOCK_BYTES / (max(n_time, 1) * BYTES_PER_SAMPLE)), 32, 512)
    return int(2 ** np.floor(np.log2(edge)))


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

    Runs on the active dask scheduler: a ``distributed.Client`` if one was started (then
    ``work_dir`` must be reachable from every worker), else this machine's cores.

    ``workers``: cores to use on this machine (default: all; ignored on a cluster).
    ``work_dir``: where the job stages its temporary stacks (default: ``out_dir``), a folder or an
    fsspec URL (a shared filesystem, ``s3://bucket/prefix``, ...); it needs up to about 6 bytes
    per pixel and optical image and 8 per S1 image before compression, less for int16 inputs
    (``_store.staging_bytes``), which is checked first on a local folder.
    """
    from ..outputs import WORK_PREFIX, OutputSet, fingerprint
    from ..products import INFILL_MANIFEST_JOB

    out_dir = Path(out_dir)
    paths = _infill_outputs.output_paths(out_dir, params, report=report)
    inputs = {"ndvi": fingerprint(ndvi), "state": fingerprint(state), "vv": fingerprint(vv), "vh": fingerprint(vh),
              "aoi": getattr(aoi, "name", None)}
    with OutputSet(out_dir, [p.name for p in paths.values()], job=INFILL_MANIFEST_JOB, suffix=params.suffix,
                   params=params.to_dict(), inputs=inputs, overwrite=overwrite) as out:
        work_parent = str(work_dir) if work_dir is not None else str(out_dir)
        folder = _store.local_folder(work_parent)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            _store.check_disk_space(select_period(ndvi, params.start, params.end).shape,
                                    _s1_staging.s1_near(vv, params).size, folder, out_dir,
                                    packed_obs="packing" in ndvi.attrs,
                                    packed_s1="packing" in vv.attrs and "packing" in vh.attrs)
        store = _store.Store.create_in(work_parent, f"{WORK_PREFIX}{os.getpid()}-")
        try:
            # on this machine, the graphs' own steps run in threads, and worker processes for the
            # process stages import their code while the inputs are staged (when the grid has several
            # blocks: a single block runs here); a user's Client is left in charge. This process's
            # own linear algebra (the PCA basis, the fusion weights' fit beside the workers) runs on
            # one BLAS thread, as the workers' does: the cores are theirs (a second BLAS thread spun
            # as long as the fit ran and halved its worker's speed for no gain; results identical)
            size = {d: ndvi.sizes.get(d, 1) for d in ("time", "y", "x")}
            warm = _fused.__name__ if len(_blocks(size["y"], size["x"], _edge(size["time"]))) > 1 else None
            with _store.job_pools(workers, warm=warm), threadpool_limits(limits=1, user_api="blas"):
                run = _run(ndvi, state, vv, vh, params, {k: out.path(p.name) for k, p in paths.items()}, store,
                           aoi=aoi, overwrite=overwrite, report=report, workers=workers)
        finally:
            store.destroy()
    run.paths = paths
    return run


def _stage_optical(ndvi, state, params, aoi, store):
    """B.1-B.2 in one pass over the optical inputs.

    The period's states (int8; MISSING outside the AOI and where a clear pixel has no NDVI) and
    clear observations (float32, NaN elsewhere; as the file's int16 when it stored them so:
    ``Store.stage``) as ``obs_all`` and ``state_all``, and each image's AOI cloud statistics
    counted, in that pass. Returns the period's NDVI (lazy, for its
    coordinates), the statistics table, the AOI mask and the two staged stacks.
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
    edge = _edge(N)
    st_d = whole_blocks(st, edge).astype("int8")
    obs_d = da.where(st_d == CLEAR, whole_blocks(ndvi, edge).astype("float32"), np.float32(np.nan))
    # staged, and the images' cloud statistics counted, in one pass
    (z_st, obs), counts = store.stage([("state_all", st_d, None), ("obs_all", obs_d, ndvi.attrs.get("packing"))],
                                      (N, edge, edge), codecs={"state_all": _store.MASK_LZ4},
                                      along=aoi_cloud_counts(st.copy(data=st_d)))
    table = steps.image_cloud_stats(st, counts)
    return ndvi, table, inside, obs, z_st


def _compact(store, name: str, staged, positions: np.ndarray, chunks):
    """The staged images ``staged`` (``<name>_all``) at ``positions`` as an array ``name``
    chunked by ``chunks`` (the old array removed); the same array when that is every image,
    same chunks."""
    if np.array_equal(positions, np.arange(staged.shape[0])) and tuple(staged.chunks) == tuple(chunks):
        return staged
    out = store.copy(name, staged, positions, chunks)
    store.remove(f"{name}_all")
    return out


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
        band = steps.align_s1(band.isel(time=_s1_staging.s1_near(band, params)).sortby("time"), ndvi)
        s1.append(band.where(support) if support is not None else band)
    weights = _kernels.window_weights(ndvi.time.values[keep], s1[0].time.values, params.s1_window_days)
    pairs = steps.pair_images(table, weights.sum(axis=1), params)
    table = table.iloc[pairs].reset_index(drop=True).assign(S1_COUNT=weights.sum(axis=1)[pairs].astype(int))
    return keep[pairs], s1[0], s1[1], weights[pairs], table


def _blocks(H: int, W: int, edge: int) -> list[tuple[slice, slice]]:
    """Row-major (rows, cols) slices of the square blocks of an H x W grid."""
    return [(slice(r, min(r + edge, H)), slice(c, min(c + edge, W)))
            for r in range(0, H, edge) for c in range(0, W, edge)]


def _run(ndvi, state, vv, vh, params, paths, store, *, aoi, overwrite, report, workers):
    timings, tic = {}, time.perf_counter()

    def lap(name):
        nonlocal tic
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - tic
        tic = now

    ndvi, table, inside, obs_all, state_all = _stage_optical(ndvi, state, params, aoi, store)
    lap("stage observations (B.1-B.2)")
    sel, vv, vh, weights, table = _select_pairs(ndvi, table, vv, vh, params, inside)
    T, H, W = len(sel), ndvi.sizes["y"], ndvi.sizes["x"]
    edge = _edge(T)
    ndvi = ndvi.isel(time=sel)
    z_obs, z_st = (_compact(store, name, staged, sel, (T, edge, edge))
                   for name, staged in (("obs", obs_all), ("state", state_all)))
    table, donor_pos = steps.split_pairs(table, params)
    labels = table["SplitLabel"].to_numpy().astype(str)
    donor = store.save("donor", np.asarray(z_st[donor_pos] == 0), (edge, edge))
    store.save("inside", np.ones((H, W), bool) if inside is None else np.asarray(inside.values, bool), (edge, edge))
    times = pd.to_datetime(table["CollectionTime"], unit="ms")
    days = ((times - pd.Timestamp(params.start)) / pd.Timedelta(days=1)).to_numpy()
    lap("pairing, split (B.2-B.6)")

    # B.3: S1 staged, and the AOI means of its window means (the fused stage recomputes those means)
    s1, vv_mean, vh_mean = _s1_staging.stage_s1(vv, vh, weights, params, store, edge, inside)
    lap("S1 window means, AOI means (B.3)")

    # B.3-B.7 fused per block: coefficients staged, the PCA's sums and the fusion's leave-out rows returned
    k = steps.pca_components(T, params)
    pca = 1 <= k < T
    z_coef = store.create("coef", (11, H, W), (11, edge, edge), "float64", codec=_store.FAST_LZ4)
    z_rest = store.create("rest", (T, H, W), (T, edge, edge), "float32", codec=_store.DENSE_ZSTD)
    n_train_images = int(np.isin(labels, ("train", "validation")).sum())
    stage = {**s1, "inside": store.open("inside")}
    stage.update(obs=z_obs, state=z_st, donor=donor, coef=z_coef, rest=z_rest, weights=weights,
                 vv_mean=vv_mean, vh_mean=vh_mean, labels=labels, days=days, params=params, pca=pca,
                 row_fraction=min(1.0, FUSION_ROWS / max(1, len(fusion.LEAVE_OUT_SKIPS) * n_train_images * H * W)))
    blocks = _blocks(H, W, edge)
    shared = _store.share(stage)
    fused = _store.total([dask.delayed(_fused.fit_predict_block)(shared, rows, cols) for rows, cols in blocks],
                         _fused.combine, processes=True, workers=workers)
    lap("covariates, regression, prediction (B.3-B.7)")
    # C's fusion weights are fitted here, in a thread, while the workers run B.8 and B.9 (which do
    # not need them): the fit is serial, and the workers would otherwise wait for it
    fitting = ThreadPoolExecutor(1, thread_name_prefix="optsar-fusion-fit")
    weights_fit = fitting.submit(fusion.fit_weights, fused["bin"], fused["resid"], fused["dep"])
    fitting.shutdown(wait=False)

    # B.8 PCA smoothing: the components from the stage's sums, each pixel's scores from its
    # recomputed prediction (float64, the precision B.9 reads; see steps_post.pca_smooth)
    means = basis = z_scores = ranges = None
    if pca:
        means, basis = _fused.pca_basis(fused["pca"], T, k)
        z_scores = store.create("scores", (k, H, W), (k, edge, edge), "float64", codec=_store.FAST_LZ4)
    smooth = BlockArray(partial(_fused.smooth_block, z_scores, z_rest, means, basis), (T, H, W), "float64")
    cloud = table["CLOUD_PERCENTAGE_AOI"].to_numpy() / 100  # B.9 applies by the image's own cover, its Cloud_cover
    b9 = _standardize.Blocks(smooth, z_obs, z_st, donor, labels, cloud, params)
    if pca:  # the scores staged, and B.9's first pass run on the smoothed prediction they give
        stage.update(means=means, basis=basis, scores=z_scores, b9=b9)
        shared = _store.share(stage)
        ranges = _store.total([dask.delayed(_fused.project_block)(shared, rows, cols) for rows, cols in blocks],
                              _standardize.merge_ranges, processes=True, workers=workers)
    lap("PCA smoothing (B.8)")

    # B.9 standardization (statistics as AOI-wide reductions over blocks)
    b9_stats = _standardize.statistics(b9, blocks, workers, ranges)
    lap("standardization (B.9)")

    # C: reliability of the S1 correction per pixel, standard errors, every estimate scored by gap length
    fusion_weights = weights_fit.result()
    s1_stage = {key: stage[key] for key in ("s1_vv", "s1_vh", "inside", "weights", "vv_mean", "vh_mean", "params")}
    stage = _accuracy.Stage(obs=z_obs, state=z_st, donor=donor,
                            pred=BlockArray(partial(_standardize.calibrated_block, b9, b9_stats), (T, H, W), "float32"),
                            nmean=BlockArray(partial(_fused.s1_covariates, s1_stage, fusion_only=True),
                                             (len(steps.FUSION_COVARIATES), T, H, W), "float32"),
                            alpha=store.create("alpha", (H, W), (edge, edge), "float64", codec=_store.FAST_LZ4),
                            labels=labels, days=days, weights=fusion_weights, params=params,
                            sample_fraction=min(1.0, SCATTER_SAMPLES / max(1, T * H * W * 0.1)))
    scores = _accuracy.score(stage, blocks, workers)
    table = table.assign(MAE=_standardize.mae(scores["mae"]))
    se = _accuracy.standard_errors(scores)
    metrics_by_gap = _accuracy.metrics_tables(scores, se, labels)
    lap("fusion, standard errors, accuracy by gap length, MAE (C, B.10)")

    in_aoi = inside.values if inside is not None else np.ones((H, W), bool)
    coef0, rank, n_train = z_coef.get_orthogonal_selection(([0, 9, 10], slice(None), slice(None)))
    coef_ok = np.isfinite(coef0)
    overall = metrics_by_gap[metrics_by_gap.gap_bin == "all"].drop(columns="gap_bin").reset_index(drop=True)
    run = InfillRun(params=params, paths=paths, metadata=table, metrics=overall, metrics_by_gap=metrics_by_gap,
                    donor_id=str(table["ID"][donor_pos]), samples=_infill_outputs.split_samples(scores["samples"]),
                    series=_infill_outputs.series(stage, coef_ok),
                    timings=timings, rank_deficient_pixels=int((coef_ok & (rank < 9)).sum()),
                    underdetermined_pixels=int((~coef_ok & in_aoi & (n_train < 9)).sum()),
                    guarded_pixels=int((~coef_ok & in_aoi & (n_train >= 9)).sum()),
                    model_pixels=int((coef_ok & in_aoi).sum()),
                    prediction_out_of_range=(int(scores["out_of_range"][0]), int(scores["out_of_range"][1])),
                    fusion_weights=fusion_weights, standard_errors=se)
    _infill_outputs.write_outputs(ndvi, table, stage, se, z_coef, inside, paths, overwrite,
                                  s1_done=lambda: [store.remove(name) for name in s1])
    write_csv(metrics_by_gap, paths["metrics"], overwrite=overwrite)
    lap("write outputs")
    if report:
        from ..report import write_report

        write_report(run, paths["report"], overwrite=overwrite)
        lap("report")
    return run
