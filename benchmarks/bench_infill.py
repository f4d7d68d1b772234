"""Gap infilling (docs/method.md part B) on simulated scenes of the published sizes: time per step, memory.

Run on demand: ``.venv/bin/python benchmarks/bench_infill.py [case ...] [--fraction F] [--cache DIR]``
(cases 1, 2, 3; case 3 is run on ``--fraction`` of its rows, default 0.125, unless 1 is given).
Each scene is first written in the seed's file format by ``optsar_nb.local.simulate`` (not
timed, cached in ``--cache``); the job then reads it lazily from those files, as a user's run
would, in a fresh process whose peak resident memory (``ru_maxrss``) is reported along with the
wall time of every step and the validation/test MAE against both baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
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


def run_child(case: int, fraction: float, folder: Path, workers: int) -> dict:
    """In this (fresh) process: run the infilling on the scene files and return the figures."""
    import tracemalloc

    from optsar_nb.aoi import load_aoi
    from optsar_nb.local.infill import infill, load_seed_inputs
    from optsar_nb.params import InfillParams

    scene = scene_for(case, fraction)
    params = InfillParams(mission="S2", start=scene.start, end=scene.end)
    # ru_maxrss also counts the pages of the job's memory-mapped staging files (reclaimable page
    # cache); tracemalloc's peak counts the allocated arrays only (numpy reports to it)
    tracemalloc.start()
    t0 = time.perf_counter()
    # the reader's default windows: whole tiles within a byte budget, never a whole stack
    ndvi, state, vv, vh = load_seed_inputs(folder, params)
    with tempfile.TemporaryDirectory(prefix="bench-infill-") as out:
        run = infill(ndvi, state, vv, vh, params, out, aoi=load_aoi(folder / "aoi.geojson"), report=True,
                     workers=workers)
        wall = time.perf_counter() - t0
    m = run.metrics.set_index(["split", "method"])["MAE"]
    return {
        "pixels": f"{scene.height} x {scene.width}", "images": int(ndvi.sizes["time"]), "pairs": len(run.metadata),
        "wall_s": wall, "steps": run.timings, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_alloc_mb": tracemalloc.get_traced_memory()[1] / 2**20,
        "mae": {f"{s}/{k}": float(m[s, k]) for s in ("validation", "test")
                for k in ("model", "pixel_mean", "interpolation")},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--fraction", type=float, default=None, help="fraction of rows (default 1; case 3: 0.125)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "optsar_bench_scenes"))
    parser.add_argument("--workers", type=int, default=2, help="threads (default 2, the target machine's cores)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case = args.cases[0]
        print(json.dumps(run_child(case, args.fraction, prepare(case, args.fraction, Path(args.cache)), args.workers)))
        return
    for case in args.cases:
        fraction = args.fraction if args.fraction is not None else (0.125 if case == 3 else 1.0)
        print(f"case {case} (fraction of rows {fraction:g}); published on Earth Engine: {PUBLISHED[case]}", flush=True)
        prepare(case, fraction, Path(args.cache))
        cmd = [sys.executable, __file__, str(case), "--fraction", str(fraction), "--cache", args.cache,
               "--workers", str(args.workers), "--child"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"  {r['pixels']} px, {r['images']} images, {r['pairs']} pairs: {r['wall_s']:.1f} s end to end, "
              f"peak RSS {r['peak_rss_mb']:,.0f} MB (arrays allocated at peak {r['peak_alloc_mb']:,.0f} MB)")
        for step, seconds in r["steps"].items():
            print(f"    {step:<45} {seconds:7.2f} s")
        print("  MAE " + ", ".join(f"{k} {v:.4f}" for k, v in r["mae"].items()), flush=True)


if __name__ == "__main__":
    main()
