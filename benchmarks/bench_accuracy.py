"""Accuracy of the gap-free NDVI: every estimate on real data over several split seeds, and on the demo scene.

Run on demand: ``.venv/bin/python benchmarks/bench_accuracy.py [--seeds N] [--method fusion|paper]``.
Flanders 2017 (real Sentinel-2 + Sentinel-1, ../shared/data/flanders_2017): the infilling is
run with ``N`` split seeds; MAE per split, estimate and gap-length bin is pooled over the seeds
(weighted by pixel counts), with the fusion's gain over the better baseline and its SE coverage.
Demo scene (simulated, with its cloud-free truth): MAE of NDVI_gapfree against the truth over
the cloudy pixels, for both methods.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio

ROOT = Path(__file__).resolve().parents[1]
FLANDERS = ROOT.parent / "shared" / "data" / "flanders_2017"
DEMO = ROOT / "optsar_nb" / "demo_scene"


def pooled(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Seeds pooled: n summed; MAE, bias and SE coverage weighted by n; RMSE from pooled squares."""
    t = pd.concat(tables)
    t = t.assign(ae=t.MAE * t.n, se2=t.RMSE**2 * t.n, b=t.bias * t.n, cov=t.SE_coverage.fillna(0) * t.n)
    g = t.groupby(["split", "method", "gap_bin"], sort=False)[["n", "ae", "se2", "b", "cov"]].sum()
    out = pd.DataFrame({"n": g.n, "MAE": g.ae / g.n, "RMSE": np.sqrt(g.se2 / g.n), "bias": g.b / g.n,
                        "SE_coverage": g["cov"] / g.n})
    return out.reset_index()


def flanders(seeds: int, method: str) -> None:
    from optsar_nb.local.infill import infill, load_flanders
    from optsar_nb.params import InfillParams

    params = InfillParams(mission="S2", start="2017-08-01", end="2018-12-01", method=method)
    inputs = load_flanders(FLANDERS, params)
    tables = []
    with tempfile.TemporaryDirectory() as out:
        for seed in range(seeds):
            run = infill(*inputs, params.replace(seed=seed), Path(out) / str(seed), report=False)
            tables.append(run.metrics_by_gap)
    t = pooled(tables)
    print(f"Flanders 2017, {seeds} split seeds pooled: MAE (n) per gap bin")
    for split in ("validation", "test"):
        s = t[t.split == split].pivot(index="gap_bin", columns="method", values="MAE")
        n = t[(t.split == split) & (t.method == "fusion")].set_index("gap_bin").n
        s = s.loc[[b for b in s.index if b != "all"] + ["all"]]
        s["n"] = n
        best = s[["pixel_mean", "interpolation"]].min(axis=1)
        s["fusion vs best baseline"] = (s["fusion"] / best - 1).map(lambda v: f"{100 * v:+.1f} %")
        cov = t[(t.split == split) & (t.method == "fusion")].set_index("gap_bin").SE_coverage
        s["fusion SE coverage"] = cov.map(lambda v: f"{100 * v:.0f} %")
        print(f"  {split}\n" + s.to_string(float_format=lambda v: f"{v:.4f}"))


def demo() -> None:
    from optsar_nb.local.infill import infill, load_seed_inputs
    from optsar_nb.local.stack import read_stack
    from optsar_nb.params import InfillParams

    params = InfillParams(mission="S2", start="2021-01-01", end="2022-01-01")
    inputs = load_seed_inputs(DEMO, params)
    truth_path = next(DEMO.glob("NDVI_Truth_*.tif"))
    print("Demo scene (simulated): MAE of NDVI_gapfree against the truth under clouds")
    with tempfile.TemporaryDirectory() as out:
        for method in ("paper", "fusion"):
            run = infill(*inputs, params.replace(method=method), Path(out) / method, report=False)
            with rasterio.open(run.paths["NDVI_gapfree"]) as g, rasterio.open(run.paths["NDVI_Mask"]) as m:
                gap, mask = g.read(), m.read()
            times = pd.to_datetime(run.metadata["CollectionTime"], unit="ms").to_numpy()
            truth = read_stack(truth_path).sel(time=times).values
            cloudy = (mask == 0) & np.isfinite(gap) & np.isfinite(truth)
            print(f"  {method:>7}: {np.abs(gap - truth)[cloudy].mean():.4f} over {cloudy.sum():,} cloudy pixel-dates")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--method", default="fusion", choices=("fusion", "paper"))
    args = parser.parse_args()
    flanders(args.seeds, args.method)
    demo()
