"""Gap infilling (docs/method.md part B) on simulated scenes of the published sizes: time per step, memory.

Run on demand: ``.venv/bin/python benchmarks/bench_infill.py [case ...] [--fraction F] [--cache DIR]``
(cases 1, 2, 3; case 3 is run on ``--fraction`` of its rows, default 0.125, unless 1 is given).
Each scene is first written in the seed's file format by ``optsar_nb.local.simulate`` (not
timed, cached in ``--cache``); the job then reads it lazily from those files, as a user's run
would, in a fresh process. Reported: the wall time of every step, the validation/test MAE
against both baselines, and memory: the peak of the anonymous resident memory (the arrays the
job allocates, excluding the pages of its memory-mapped staging files) summed over the job and
its worker processes, sampled every 50 ms from /proc (Linux), and the peak resident set
(``ru_maxrss``, which includes mapped file pages) of the job and of its largest worker; disk:
the peak size of the job's staged stacks (its temporary disk: the run folder inside the output
folder) and of the whole output folder (staged stacks, then outputs), sampled each second.
``--cluster N`` runs the job on a dask.distributed LocalCluster of N single-threaded worker
processes instead of this machine's default scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# the published figures (Earth Engine, free account): train+predict and post-process minutes
PUBLISHED = {1: "2 min + 9 min", 2: "10 min + 60 min", 3: "40 min + failed (EE memory limit)"}


def scene_for(case: int, fraction: float):
    from optsar_nb.local import simulate

    scene = simulate.benchmark_scene(case)
    if fraction < 1.0:
        scene = scene.__class__(**{**scene.__dict__, "height": max(64, int(scene.height * fraction))})
    return scene


def prepare(case: int, fraction: float, cache: Path) -> Path:
    from optsar_nb.local import simulate

    scene = scene_for(case, fraction)
    folder = cache / f"case{case}_{scene.height}x{scene.width}"
    if not (folder / f"VH_Input{scene.suffix}.tif").exists():
        t0 = time.perf_counter()
        simulate.write_scene(folder, scene, overwrite=True)
        print(f"  simulated scene written in {time.perf_counter() - t0:.0f} s (not part of the timing)", flush=True)
    return folder


class AnonymousMemoryPeak:
    """Peak over time of the anonymous resident memory (RssAnon) of this process plus its children.

    A thread reads /proc every ``interval`` seconds: no instrumentation inside the job (Python's
    tracemalloc slowed the job's own bookkeeping by a fifth), and mapped file pages not counted.
    """

    def __init__(self, interval: float = 0.05, folder: str | None = None):
        self.interval, self.peak = interval, 0
        # and the disk used in ``folder``, each second: all of it, and the job's staged stacks
        self.folder, self.disk_peak, self.staged_peak, self._next_disk = folder, 0, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _anon_kb(pid: int | str) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                return next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
        except OSError:
            return 0

    def _children(self) -> list[str]:
        """Every descendant (a cluster's workers are the children of its nannies)."""
        parent = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parent[pid] = f.read().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
        found, frontier = [], {str(os.getpid())}
        while frontier:
            frontier = {pid for pid, ppid in parent.items() if ppid in frontier}
            found.extend(frontier)
        return found

    def _run(self):
        from optsar_nb.outputs import WORK_PREFIX  # the job's run folder of staged stacks

        while not self._stop.wait(self.interval):
            total = self._anon_kb(os.getpid()) + sum(self._anon_kb(p) for p in self._children())
            self.peak = max(self.peak, total)
            if self.folder is not None and time.perf_counter() >= self._next_disk:
                sizes = {e.name: _folder_bytes(e.path) for e in os.scandir(self.folder)}
                self.disk_peak = max(self.disk_peak, sum(sizes.values()))
                self.staged_peak = max(self.staged_peak, sum(b for n, b in sizes.items() if n.startswith(WORK_PREFIX)))
                self._next_disk = time.perf_counter() + 1.0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _folder_bytes(folder: str) -> int:
    """Disk used by the files under ``folder``, or by the file ``folder`` (those that still exist)."""
    walk = (os.path.join(root, name) for root, _, files in os.walk(folder) for name in files)
    paths = [folder] if os.path.isfile(folder) else walk
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_blocks * 512
        except OSError:
            continue
    return total


def run_child(case: int, fraction: float, folder: Path, workers: int, cluster: int) -> dict:
    """In this (fresh) process: run the infilling on the scene files and return the figures;
    ``cluster`` > 0: on a dask.distributed LocalCluster of that many single-threaded worker
    processes (started before the clock starts)."""
    from contextlib import ExitStack

    from optsar_nb.aoi import load_aoi
    from optsar_nb.local.infill import infill, load_seed_inputs
    from optsar_nb.params import InfillParams

    scene = scene_for(case, fraction)
    params = InfillParams(mission="S2", start=scene.start, end=scene.end)
    with ExitStack() as stack:
        if cluster:
            from distributed import Client, LocalCluster

            stack.enter_context(Client(stack.enter_context(LocalCluster(
                n_workers=cluster, threads_per_worker=1, processes=True, dashboard_address=None))))
        t0 = time.perf_counter()
        # the reader's default windows: whole tiles within a byte budget, never a whole stack
        ndvi, state, vv, vh = load_seed_inputs(folder, params)
        out = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-infill-"))
        with AnonymousMemoryPeak(folder=out) as memory:
            run = infill(ndvi, state, vv, vh, params, out, aoi=load_aoi(folder / "aoi.geojson"), report=True,
                         workers=workers)
            wall = time.perf_counter() - t0
    m = run.metrics.set_index(["split", "method"])["MAE"]
    return {
        "pixels": f"{scene.height} x {scene.width}", "images": int(ndvi.sizes["time"]), "pairs": len(run.metadata),
        "wall_s": wall, "steps": run.timings, "peak_anon_mb": memory.peak / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "peak_disk_mb": memory.disk_peak / 1e6, "peak_staged_mb": memory.staged_peak / 1e6,
        "mae": {f"{s}/{k}": float(m[s, k]) for s in ("validation", "test")
                for k in ("model", "pixel_mean", "interpolation")},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--fraction", type=float, default=None, help="fraction of rows (default 1; case 3: 0.125)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "optsar_bench_scenes"))
    parser.add_argument("--workers", type=int, default=2,
                        help="cores: regression worker processes, threads elsewhere (default 2, the target machine's)")
    parser.add_argument("--cluster", type=int, default=0,
                        help="run on a dask.distributed LocalCluster of this many worker processes (default: none)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case = args.cases[0]
        print(json.dumps(run_child(case, args.fraction, prepare(case, args.fraction, Path(args.cache)), args.workers,
                                   args.cluster)))
        return
    for case in args.cases:
        fraction = args.fraction if args.fraction is not None else (0.125 if case == 3 else 1.0)
        print(f"case {case} (fraction of rows {fraction:g}); published on Earth Engine: {PUBLISHED[case]}", flush=True)
        prepare(case, fraction, Path(args.cache))
        cmd = [sys.executable, __file__, str(case), "--fraction", str(fraction), "--cache", args.cache,
               "--workers", str(args.workers), "--cluster", str(args.cluster), "--child"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        where = f"LocalCluster of {args.cluster} workers" if args.cluster else f"{args.workers} cores"
        print(f"  {r['pixels']} px, {r['images']} images, {r['pairs']} pairs: {r['wall_s']:.1f} s end to end ({where})")
        print(f"  memory: peak anonymous {r['peak_anon_mb']:,.0f} MB (job + workers); peak RSS incl. mapped "
              f"files: job {r['peak_rss_mb']:,.0f} MB, largest worker {r['peak_rss_worker_mb']:,.0f} MB")
        print(f"  peak disk: staged stacks (temporary) {r['peak_staged_mb']:,.0f} MB; output folder (staged stacks, "
              f"then outputs) {r['peak_disk_mb']:,.0f} MB")
        for step, seconds in r["steps"].items():
            print(f"    {step:<58} {seconds:7.2f} s")
        print("  MAE " + ", ".join(f"{k} {v:.4f}" for k, v in r["mae"].items()), flush=True)


if __name__ == "__main__":
    main()
