"""The ``optsar`` command: demo, gaps (and the subcommands other modules register)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .errors import OptsarError, OutputExists
from .interrupts import Terminated, raised_on_signals
from .params import METHODS, InfillParams
from .products import (
    NDVI_INPUT_FILE,
    NDVI_MASK_FILE,
    NDVI_METADATA_FILE,
    NDVI_TRUTH_FILE,
    S1_METADATA_FILE,
    SCL_INPUT_FILE,
    VH_INPUT_FILE,
    VV_INPUT_FILE,
    find_file,
)


def open_quality_stack(path: str | Path, *, metadata: str | Path | None = None, variable: str | None = None):
    """A quality/mask stack from a seed-format GeoTIFF (+ CSV) or a NetCDF cube variable."""
    from .local.stack import read_netcdf, read_stack

    path = Path(path)
    if path.suffix.lower() in (".nc", ".nc4", ".h5"):
        if not variable:
            raise OptsarError(f"{path} is a NetCDF cube: name the quality variable with --variable (e.g. SCL)")
        return read_netcdf(path, variable)[variable]
    return read_stack(path, metadata)


def _print_paths(paths: dict) -> None:
    for kind, path in paths.items():
        print(f"  {kind:<12} {path}")


def cmd_gaps(args: argparse.Namespace) -> int:
    from .aoi import load_aoi
    from .local.gaps import characterize_gaps, cloud_state
    from .params import GapParams

    params = GapParams(mission=args.mission, start=args.start, end=args.end, mask=args.mask,
                       revisit_days=args.revisit_days)
    aoi = load_aoi(args.aoi, max_area_km2=params.max_aoi_km2) if args.aoi else None
    qa = open_quality_stack(args.qa, metadata=args.metadata, variable=args.variable)
    state = cloud_state(qa, params.mask_rule_name, threshold=params.cloudscore_threshold)
    paths = characterize_gaps(state, params, args.out, aoi=aoi, overwrite=args.overwrite)
    print(f"gap statistics for {params.mission} {params.start} to {params.end} written:")
    _print_paths(paths)
    return 0


def open_infill_inputs(args: argparse.Namespace, params):
    """(ndvi, state, vv, vh) from a seed-format folder (--inputs) or NetCDF cubes (--s2-10m ...)."""
    from .local.infill import load_netcdf_inputs, load_seed_inputs

    if args.inputs:
        return load_seed_inputs(args.inputs, params, mask=args.mask_stack)
    if not (args.s2_10m and args.s2_20m and args.s1):
        raise OptsarError(f"give --inputs (a folder of {NDVI_INPUT_FILE}/{NDVI_MASK_FILE}/{VV_INPUT_FILE}/"
                          f"{VH_INPUT_FILE} files) or all of --s2-10m, --s2-20m and --s1 (NetCDF cubes)")
    return load_netcdf_inputs(args.s2_10m, args.s2_20m, args.s1, params)


def cmd_infill(args: argparse.Namespace) -> int:
    from .aoi import load_aoi
    from .local.infill import infill

    params = InfillParams(mission=args.mission, start=args.start, end=args.end, mask=args.mask, seed=args.seed,
                          method=args.method, min_samples_per_coefficient=args.min_samples_per_coefficient)
    aoi = load_aoi(args.aoi, max_area_km2=params.max_aoi_km2) if args.aoi else None
    ndvi, state, vv, vh = open_infill_inputs(args, params)
    run = infill(ndvi, state, vv, vh, params, args.out, aoi=aoi, overwrite=args.overwrite, workers=args.workers,
                 work_dir=args.work_dir)
    print(f"gap-free NDVI for {params.mission} {params.start} to {params.end} written:")
    _print_paths(run.paths)
    _print_validation(run)
    return 0


def _print_validation(run) -> None:
    from .report import verdict

    m = run.metrics.set_index(["split", "method"])["MAE"]

    def mae(method):  # no scored pixel: say so rather than print "nan"
        value = m["validation", method]
        return f"{value:.4f}" if value == value else "not measured"

    print(f"  validation MAE (artificial clouds): fusion {mae('fusion')}, S1 regression {mae('model')}, "
          f"per-pixel mean {mae('pixel_mean')}, interpolation {mae('interpolation')}")
    sentence, warning = verdict(run.metrics, run.params.method)
    print(f"  {sentence}")
    if warning:
        print(f"  {warning.strip('> ').replace('**', '')}")


def demo_truth_mae(result) -> float:
    """MAE of gap-free NDVI against the demo scene's cloud-free truth, over cloudy pixels."""
    import numpy as np

    from .local.stack import read_stack
    from .run import DEMO_DIR

    truth = read_stack(find_file(DEMO_DIR, NDVI_TRUTH_FILE, result.params.mission)).sel(time=result.gapfree.time)
    cloudy = result.mask.values == 0
    return float(np.nanmean(np.abs(result.gapfree.values - truth.values)[cloudy]))


def cmd_demo(args: argparse.Namespace) -> int:
    from . import run
    from .engine import Engine

    out = Path(args.out)
    engine = Engine("local", "the demo runs offline on the bundled simulated scene")
    print("optsar demo: simulated Sentinel-2/Sentinel-1 scene, local engine (no account, no network)")
    gaps = run.run_gaps(out_dir=out / "gaps", overwrite=args.overwrite, engine=engine)
    print("1. gap characterization:")
    _print_paths(gaps.paths)
    infilled = run.run_infill(out_dir=out / "infill", overwrite=args.overwrite, engine=engine)
    print("2. gap infilling (NDVI from Sentinel-1 under clouds):")
    _print_paths(infilled.paths)
    _print_validation(infilled)
    print(f"  MAE of gap-free NDVI against the scene's cloud-free truth under clouds: {demo_truth_mae(infilled):.4f}")
    if not args.no_notebooks:
        print_demo_notebooks(out, overwrite=args.overwrite)
    return 0


def print_demo_notebooks(out: Path, *, overwrite: bool) -> None:
    """Run both notebooks on the demo scene with papermill and list what they wrote."""
    from .batch import run_demo_notebooks

    print("notebooks (executed with papermill, backend 'auto'):")
    for name, (executed, outputs) in run_demo_notebooks(out / "notebooks", overwrite=overwrite).items():
        print(f"  {name:<34} {executed}")
        for path in outputs:
            print(f"    {path.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optsar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job on the bundled demo scene (local engine, offline)")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier demo run")
    demo.add_argument("--no-notebooks", action="store_true", help="skip executing the notebooks")
    demo.set_defaults(func=cmd_demo)

    gaps = sub.add_parser("gaps", help="gap statistics between clear observations (local engine)")
    gaps.add_argument("--qa", required=True, help="quality stack: seed-format GeoTIFF (+ CSV) or NetCDF cube")
    gaps.add_argument("--metadata", help="metadata CSV (default: beside the GeoTIFF, same name)")
    gaps.add_argument("--variable", help="quality variable of a NetCDF cube, e.g. SCL")
    gaps.add_argument("--mask", default="qa", help="mask rule: qa (mission default), scl, qa_pixel, pixel_qa, "
                      "binary, clear_mask, cloudscore")
    gaps.add_argument("--mission", default="S2", help="S2, L8 or L9")
    gaps.add_argument("--start", required=True, help="first date, YYYY-MM-DD")
    gaps.add_argument("--end", required=True, help="end date (exclusive), YYYY-MM-DD")
    gaps.add_argument("--revisit-days", type=int, default=None, help="initial-condition revisit (default: mission's)")
    gaps.add_argument("--aoi", help="AOI: GeoJSON or shapefile (default: the whole stack)")
    gaps.add_argument("--out", required=True, help="output folder")
    gaps.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    gaps.set_defaults(func=cmd_gaps)

    inf = sub.add_parser("infill", help="gap-free NDVI infilled from Sentinel-1 (local engine)")
    inf.add_argument("--inputs", help=f"folder of seed-format inputs ({NDVI_INPUT_FILE}, {NDVI_MASK_FILE} or "
                     f"{SCL_INPUT_FILE}, {VV_INPUT_FILE}, {VH_INPUT_FILE} + {NDVI_METADATA_FILE}, {S1_METADATA_FILE} "
                     "CSVs)")
    inf.add_argument("--mask-stack", default="auto", help=f"with --inputs: {NDVI_MASK_FILE}, {SCL_INPUT_FILE} or auto")
    inf.add_argument("--s2-10m", help="NetCDF cube with red (B04) and NIR (B08) at 10 m")
    inf.add_argument("--s2-20m", help="NetCDF cube with SCL at 20 m (aligned to the 10 m grid)")
    inf.add_argument("--s1", help="NetCDF cube with Sentinel-1 VV and VH in dB")
    inf.add_argument("--mask", default="qa", help="mask rule for a quality stack (default: the mission's)")
    inf.add_argument("--mission", default="S2", help="S2, L8 or L9")
    inf.add_argument("--start", required=True, help="first date, YYYY-MM-DD")
    inf.add_argument("--end", required=True, help="end date (exclusive), YYYY-MM-DD")
    inf.add_argument("--seed", type=int, default=0, help="seed of the train/validation/test split")
    defaults = {f.name: f.default for f in dataclasses.fields(InfillParams)}
    inf.add_argument("--method", default=defaults["method"], choices=METHODS,
                     help="how NDVI_gapfree fills clouds: fusion of clear views and S1 (default), or the paper's fill")
    inf.add_argument("--min-samples-per-coefficient", type=float, default=defaults["min_samples_per_coefficient"],
                     help="clear training samples per coefficient a pixel needs for its own regression (default 3)")
    inf.add_argument("--aoi", help="AOI: GeoJSON or shapefile (default: the whole stack)")
    inf.add_argument("--out", required=True, help="output folder")
    inf.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    inf.add_argument("--workers", type=int, default=None, help="cores to use (default: all)")
    inf.add_argument("--work-dir", help="folder or fsspec URL (s3://..., a shared filesystem for a dask cluster) "
                                        "for the temporary stacks (default: --out); needs up to ~25 bytes per pixel "
                                        "and image")
    inf.set_defaults(func=cmd_infill)

    from .batch import add_batch_parser

    add_batch_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with raised_on_signals():
            return args.func(args)
    except OptsarError as exc:
        hint = " (on the command line: --overwrite)" if isinstance(exc, OutputExists) else ""
        print(f"optsar {args.command}: error: {exc}{hint}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
        print(f"optsar {args.command}: {what}; temporary files removed, earlier outputs left as they were",
              file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143


if __name__ == "__main__":
    sys.exit(main())
