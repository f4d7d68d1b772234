"""The fused B.3-B.7 stage of the infilling job: covariates, fit, prediction and baselines, block by block.

Each block reads the staged S1 with its halo, averages it over the pairs' windows, and writes
its coefficients and predictions into the staged stacks (see ``_pipeline``). Its own module so that worker
processes import it (and through it the steps) without the job's other machinery.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from ..errors import WorkerFailed
from . import _kernels, fusion, steps


def read_with_halo(stack: np.ndarray, rows: slice, cols: slice, depth: int, dtype="float32") -> np.ndarray:
    """(T, h + 2 depth, w + 2 depth) ``dtype`` copy of a block of ``stack`` and its halo; NaN beyond the image."""
    T, H, W = stack.shape
    r0, r1, c0, c1 = rows.start - depth, rows.stop + depth, cols.start - depth, cols.stop + depth
    out = np.full((T, r1 - r0, c1 - c0), np.nan, dtype=dtype)
    out[:, max(r0, 0) - r0 : min(r1, H) - r0, max(c0, 0) - c0 : min(c1, W) - c0] = \
        stack[:, max(r0, 0) : min(r1, H), max(c0, 0) : min(c1, W)]
    return out


# The fused stage's state in each of its worker processes (set by _open_block_stage).
_BLOCK_STAGE: dict = {}


def _open_block_stage(work: str, shared: dict, parent: int | None) -> None:
    """Worker initializer (``parent``: the pid of the process that started the workers; None when
    the stage runs in this process): map the staged stacks (outputs writable) and keep the shared
    inputs."""
    if parent is not None:
        _exit_with_parent(parent)
    folder = Path(work)
    stage = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("obs", "state", "s1_vv", "s1_vh")}
    stage.update({name: np.load(folder / f"{name}.npy", mmap_mode="r+") for name in ("coef", "pred", "nmean")})
    stage["donor"] = np.load(folder / "donor.npy")
    stage["inside"] = np.load(folder / "inside.npy")
    stage["weights"] = np.load(folder / "weights.npy")  # the pairs' S1 windows
    stage.update(shared)
    for name in ("obs", "state"):  # the pairs are the first images (see _pipeline._compact)
        stage[name] = stage[name][: len(shared["labels"])]
    _BLOCK_STAGE.clear()
    _BLOCK_STAGE.update(stage)
    if parent is not None:  # a worker process: one block per core already
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")


def _exit_with_parent(parent: int, period_s: float = 0.5) -> None:
    """End this worker process when ``parent``, the process that started it, is gone (killed,
    even with SIGKILL, which leaves it no chance to stop its pool): a daemon thread watches."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(period_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _fit_predict_block(rows: slice, cols: slice) -> dict[str, np.ndarray]:
    """B.3-B.7 on one block of the staged stacks: covariates, fit and prediction, written in place.

    Also stages the smoothed neighbourhood means (``VV_Nmean``, ``VH_Nmean``) the fusion reads,
    and returns the leave-out rows of a seeded sample (``row_fraction``) of the block's pixels
    for fitting the fusion weights (:func:`~optsar_nb.local.fusion.leave_out_rows`).
    """
    g = _BLOCK_STAGE
    params, labels = g["params"], g["labels"]
    depth = steps.covariate_halo(params)
    bounds = (params.s1_min_db, params.s1_max_db)
    win_vv, win_vh = (_kernels.window_mean(read_with_halo(g[name], rows, cols, depth, g[name].dtype), g["weights"],
                                           *bounds)
                      for name in ("s1_vv", "s1_vh"))
    # the halo is removed, and so is everything outside the AOI
    covs = steps.covariate_block(win_vv, win_vh, g["vv_mean"], g["vh_mean"], params, g["inside"][rows, cols])
    del win_vv, win_vh
    o, s, donor = np.asarray(g["obs"][:, rows, cols]), np.asarray(g["state"][:, rows, cols]), g["donor"][rows, cols]
    train = steps.training_mask(s, labels, donor)
    fit = steps.fit_block(covs, np.where(train, o, np.nan), train, params)
    g["pred"][:, rows, cols] = steps.predict_block(covs, fit)
    g["coef"][:, rows, cols] = fit
    nmean = covs[list(steps.FUSION_COVARIATE_INDEX)]
    del covs
    g["nmean"][:, :, rows, cols] = nmean
    # the leave-out rows of a seeded sample of the block's pixels (all of them on small scenes)
    T = o.shape[0]
    px = np.random.default_rng([params.seed, rows.start, cols.start]).random(o[0].size) < g["row_fraction"]
    sample = fusion.leave_out_rows(o.reshape(T, -1)[:, px], train.reshape(T, -1)[:, px],
                                   nmean.reshape(nmean.shape[0], T, -1)[:, :, px], g["days"])
    return {k: sample[k] for k in ("bin", "resid", "dep")}


def fit_predict(work: Path, blocks, shared: dict, workers: int | None) -> dict[str, np.ndarray]:
    """The fused B.3-B.7 stage: one task per block computes covariates, fits and predicts.

    Blocks read the staged S1 window means with their halo (no recomputation over halos) and
    write straight into the staged coefficient, prediction and neighbourhood-mean stacks
    (disjoint regions); their samples of leave-out rows are concatenated and returned. Blocks
    run in worker processes: the stage is a long chain of numpy calls on block-sized arrays,
    which threads of one process run at about 1.4 times the speed of one thread (the
    interpreter lock and page faults on the temporaries are shared), processes at about
    twice. A single block, or ``workers=1``, runs here. Worker processes are started with
    "spawn" (safe whatever threads this process runs), so a script calling this at top level
    needs the usual ``if __name__ == "__main__":`` guard.
    """
    n = min(workers or os.cpu_count() or 1, len(blocks))
    if n <= 1:
        _open_block_stage(str(work), shared, None)
        try:
            return _concat([_fit_predict_block(rows, cols) for rows, cols in blocks])
        finally:
            _BLOCK_STAGE.clear()
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(n, mp_context=context, initializer=_open_block_stage,
                                 initargs=(str(work), shared, os.getpid())) as pool:
            return _concat(list(pool.map(_fit_predict_block, *zip(*blocks))))
    except BrokenProcessPool as err:
        raise WorkerFailed(
            "a worker process of the regression stage stopped abruptly. If this runs from a script, "
            "put the call under `if __name__ == \"__main__\":` (worker processes import the main "
            "script again); otherwise the machine may have run out of memory: pass workers=1 "
            "(or fewer workers) to use less"
        ) from err


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
