"""Run a notebook once per AOI with papermill: ``optsar batch AOIS.geojson --notebook NB -p NAME VALUE``.

Each AOI (a feature of the GeoJSON/shapefile) gets a folder ``<out>/<aoi name>/`` holding its
GeoJSON (``aoi.geojson``), the executed notebook and the notebook's outputs (``outputs/``).
``<out>/summary.csv`` lists every AOI with its status (``ok``, ``failed``, ``invalid``,
``skipped``), duration and error, rewritten after every AOI. A failing or invalid AOI is
recorded and the run goes on. A run's identity is its parameters (the notebook's defaults with
the given values over them): an AOI whose ``status.json`` says ``ok`` *for the same parameters*
is skipped unless ``force``; with other parameters, or after a failed or interrupted run (its
status says ``running``), it runs again over its own earlier outputs.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .aoi import load_aoi, load_aois
from .errors import OptsarError

SUMMARY_FILE = "summary.csv"
STATUS_FILE = "status.json"
SUMMARY_COLUMNS = ["aoi", "status", "duration_s", "error", "notebook", "out_dir"]


@dataclass
class AOIRun:
    """One row of the summary."""

    aoi: str
    status: str  # ok | failed | invalid | skipped
    duration_s: float
    error: str
    notebook: str
    out_dir: str


MAX_NAME = 80  # characters of a folder name made from an AOI name (file systems allow 255 bytes)


def safe_name(name: str, taken: set[str]) -> str:
    """A folder name from an AOI name: letters, digits, ``-`` and ``_`` only, at most MAX_NAME
    characters (a long name keeps its start and a hash of the whole); unique within ``taken``."""
    import hashlib

    base = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_") or "aoi"
    if len(base) > MAX_NAME:
        base = f"{base[:MAX_NAME - 9]}_{hashlib.sha1(str(name).encode()).hexdigest()[:8]}"
    candidate, i = base, 2
    while candidate in taken:
        candidate, i = f"{base}_{i}", i + 1
    taken.add(candidate)
    return candidate


def parse_parameter(text: str) -> Any:
    """A ``-p NAME VALUE`` value: JSON when it parses (numbers, true/false, null, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def absolute_paths(parameters: dict) -> dict:
    """String parameters naming existing files or folders, made absolute (notebooks run in the AOI folder)."""
    out = {}
    for key, value in parameters.items():
        if isinstance(value, str) and value and Path(value).exists():
            value = str(Path(value).resolve())
        out[key] = value
    return out


def _first_error_line(exc: BaseException) -> str:
    """The notebook's own error (papermill wraps it with the cell source); one line for the CSV."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _status(folder: Path) -> dict:
    try:
        return json.loads((folder / STATUS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def effective_parameters(notebook: Path, values: dict) -> dict:
    """The notebook's parameter defaults (its ``parameters`` cell) with ``values`` over them, as
    JSON-able values: what identifies a run."""
    import ast

    import papermill

    defaults = {}
    for name, info in papermill.inspect_notebook(str(notebook)).items():
        try:
            defaults[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            defaults[name] = info["default"]
    return json.loads(json.dumps({**defaults, **values}, default=str, sort_keys=True))


def run_one(notebook: Path, folder: Path, parameters: dict, *, kernel_name: str | None = None,
            timeout_s: float | None = None) -> None:
    """Execute ``notebook`` into ``folder`` with ``parameters`` (raises on a failing cell)."""
    import papermill

    papermill.execute_notebook(
        str(notebook), str(folder / notebook.name), parameters=parameters, kernel_name=kernel_name,
        cwd=str(folder), progress_bar=False, log_output=False, execution_timeout=timeout_s,
        request_save_on_cell_execute=False,
    )


def run_batch(
    aois: str | Path,
    notebook: str | Path,
    out_dir: str | Path,
    *,
    parameters: dict | None = None,
    force: bool = False,
    kernel_name: str | None = None,
    timeout_s: float | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Execute ``notebook`` once per AOI of ``aois`` into ``out_dir``; returns (and writes) the summary.

    The notebook receives ``parameters`` plus ``aoi`` (path of the AOI's GeoJSON), ``out_dir``
    (the AOI's ``outputs`` folder) and ``show_app=False``. An AOI that fails validation is
    recorded as ``invalid`` without running the notebook; a notebook that fails is recorded as
    ``failed`` with its error, and the batch goes on.
    """
    from tqdm.auto import tqdm

    notebook = Path(notebook).resolve()
    if not notebook.exists():
        raise OptsarError(f"notebook {notebook} does not exist: give the path of a .ipynb file")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    features = load_aois(aois)
    if not features:
        raise OptsarError(f"{aois} has no features: give a FeatureCollection of AOI polygons")
    taken: set[str] = set()
    rows: list[AOIRun] = []
    bar = tqdm(features, desc="AOIs", unit="aoi", disable=not progress)
    for item in bar:
        name = item["name"]
        folder = out_dir / safe_name(name, taken)
        bar.set_postfix_str(name)
        # paths in the summary are relative to ``out_dir``, so that a batch folder can be moved
        row = AOIRun(aoi=name, status="", duration_s=0.0, error="", notebook=f"{folder.name}/{notebook.name}",
                     out_dir=f"{folder.name}/outputs")
        values = {**absolute_paths(parameters or {}), "aoi": str(folder / "aoi.geojson"),
                  "out_dir": str(folder / "outputs"), "show_app": False}
        identity = effective_parameters(notebook, values)
        previous = _status(folder)
        if previous.get("status") == "ok" and previous.get("parameters") == identity and not force:
            row.status, row.duration_s = "skipped", float(previous.get("duration_s", 0.0))
            rows.append(row)
            _write_summary(out_dir, rows)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            aoi = load_aoi(item["feature"], name=name)
        except OptsarError as exc:
            row.status, row.error, row.notebook, row.out_dir = "invalid", str(exc), "", ""
        else:
            (folder / "aoi.geojson").write_text(json.dumps(aoi.to_geojson()))
            if previous and "overwrite" in identity and "overwrite" not in values:
                values["overwrite"] = "own"  # this AOI's own earlier outputs (other parameters), nothing else
            _write_json(folder / STATUS_FILE, {**asdict(row), "status": "running", "parameters": identity})
            try:
                run_one(notebook, folder, values, kernel_name=kernel_name, timeout_s=timeout_s)
                row.status = "ok"
            except Exception as exc:  # a failing notebook is recorded; the batch goes on
                row.status, row.error = "failed", _first_error_line(exc)
        row.duration_s = round(time.monotonic() - started, 2)
        _write_json(folder / STATUS_FILE, {**asdict(row), "parameters": identity})
        rows.append(row)
        _write_summary(out_dir, rows)
    return pd.DataFrame([asdict(r) for r in rows], columns=SUMMARY_COLUMNS)


def _write_summary(out_dir: Path, rows: list[AOIRun]) -> None:
    """summary.csv as it stands (replaced atomically, after every AOI)."""
    summary = pd.DataFrame([asdict(r) for r in rows], columns=SUMMARY_COLUMNS)
    tmp = out_dir / f".{SUMMARY_FILE}.tmp"
    summary.to_csv(tmp, index=False)
    tmp.replace(out_dir / SUMMARY_FILE)


# --------------------------------------------------------------------------------------------
# the `optsar batch` subcommand
def add_batch_parser(sub) -> None:
    """Register ``optsar batch`` on the CLI's subparsers."""
    batch = sub.add_parser("batch", help="run a notebook once per AOI with papermill (one folder per AOI)")
    batch.add_argument("aois", help="GeoJSON FeatureCollection or shapefile: one AOI per feature")
    batch.add_argument("--notebook", required=True, help="notebook, e.g. notebooks/01_gap_characterization.ipynb")
    batch.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="notebook parameter, e.g. -p mission S2 -p start 2021-01-01 (repeatable)")
    batch.add_argument("--out", required=True, help="output folder: one subfolder per AOI and summary.csv")
    batch.add_argument("--force", action="store_true", help="run again the AOIs already done")
    batch.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    batch.add_argument("--timeout", type=float, default=None, help="seconds per cell before a run fails")
    batch.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    parameters = {name: parse_parameter(value) for name, value in args.parameter}
    summary = run_batch(args.aois, args.notebook, args.out, parameters=parameters, force=args.force,
                        kernel_name=args.kernel, timeout_s=args.timeout)
    counts = summary.status.value_counts().to_dict()
    print(f"{len(summary)} AOIs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for row in summary.itertuples():
        line = f"  {row.status:<8} {row.aoi}"
        print(line + (f": {row.error}" if row.error else ""))
    print(f"summary: {Path(args.out) / SUMMARY_FILE}")
    return 0 if not (summary.status == "failed").any() else 1


# --------------------------------------------------------------------------------------------
# the notebooks on the demo scene (`optsar demo`)
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
DEMO_NOTEBOOKS = ("01_gap_characterization.ipynb", "02_gap_infilling.ipynb")


def run_demo_notebooks(out_dir: str | Path, *, overwrite: bool = False, kernel_name: str | None = None) -> dict:
    """Execute both notebooks on the demo scene into ``out_dir/<notebook stem>/``.

    Returns ``{notebook name: (executed notebook path, [output files])}``. An existing executed
    notebook is refused unless ``overwrite`` (its outputs would be refused by the notebook anyway).
    """
    from .errors import OutputExists

    results = {}
    for name in DEMO_NOTEBOOKS:
        source = NOTEBOOK_DIR / name
        if not source.exists():
            raise OptsarError(f"notebook {source} is missing: run `optsar demo` from a source checkout")
        folder = Path(out_dir).resolve() / Path(name).stem
        if (folder / name).exists() and not overwrite:
            raise OutputExists(f"{folder / name} exists: pass --overwrite or choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
        outputs = folder / "outputs"
        run_one(source, folder, {"out_dir": str(outputs), "overwrite": overwrite, "show_app": True},
                kernel_name=kernel_name)
        results[name] = (folder / name, sorted(p for p in outputs.rglob("*") if p.is_file()))
    return results
