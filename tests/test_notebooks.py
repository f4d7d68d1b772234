"""Both notebooks executed with papermill, offline, on the demo scene with backend "auto".

The outputs they write are compared with direct calls of the local engine. Notebook kernels talk
to papermill over localhost (zmq), hence the allow_hosts marker; nothing else is reachable.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from optsar_nb.local.gaps import characterize_gaps, cloud_state
from optsar_nb.local.stack import read_geotiff, read_stack
from optsar_nb.params import GapParams

pytestmark = pytest.mark.allow_hosts(["127.0.0.1", "::1"])

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
GAPS_NB = NOTEBOOKS / "01_gap_characterization.ipynb"
INFILL_NB = NOTEBOOKS / "02_gap_infilling.ipynb"
SUFFIX = "_S2_2021-01-01_2022-01-01"
PARAMETERS = {"aoi", "mission", "start", "end", "backend", "inputs", "out_dir", "export", "overwrite", "show_app"}


@pytest.fixture(scope="module")
def demo_inputs(sample_dir, tmp_path_factory) -> str | None:
    """None (the notebooks' default: the bundled demo scene) or a folder with the same scene."""
    if (sample_dir / f"SCL_Input{SUFFIX}.tif").exists():
        return None
    from optsar_nb.local.simulate import write_scene

    folder = tmp_path_factory.mktemp("demo")
    write_scene(folder)
    return str(folder)


def execute(notebook: Path, folder: Path, inputs: str | None) -> tuple[nbformat.NotebookNode, Path]:
    import papermill

    out_dir = folder / "outputs"
    parameters = {"out_dir": str(out_dir)}
    if inputs is not None:
        parameters["inputs"] = inputs
    papermill.execute_notebook(str(notebook), str(folder / notebook.name), parameters=parameters, cwd=str(folder),
                               progress_bar=False, kernel_name="python3")
    return nbformat.read(folder / notebook.name, as_version=4), out_dir


def text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def gaps_run(demo_inputs, tmp_path_factory):
    return execute(GAPS_NB, tmp_path_factory.mktemp("nb01"), demo_inputs)


@pytest.fixture(scope="module")
def infill_run(demo_inputs, tmp_path_factory):
    return execute(INFILL_NB, tmp_path_factory.mktemp("nb02"), demo_inputs)


# --------------------------------------------------------------------------------------------
# the committed notebooks
@pytest.mark.parametrize("path", [GAPS_NB, INFILL_NB], ids=lambda p: p.name)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line}
    assert names == PARAMETERS
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs before commit"
    assert max(len(c.source.splitlines()) for c in code) <= 12  # short cells; the logic is in the package
    assert sum(c.source.startswith("# ") for c in nb.cells if c.cell_type == "markdown") == 1  # one H1 title
    headings = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for section in ("## Overview", "## Prerequisites", "Time to run", "## Summary", "What's next"):
        assert section in headings
    assert "import *" not in " ".join(c.source for c in code)


# --------------------------------------------------------------------------------------------
# 01: gap characterization
def test_gaps_notebook_runs_offline_and_says_so(gaps_run):
    nb, _ = gaps_run
    printed = text_outputs(nb)
    assert "local engine" in printed and "no Earth Engine credentials" in printed
    assert "SIMULATED" in printed or "exported files" in printed
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    widget = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in
              o.get("data", {})]
    assert len(widget) == 1  # the map app


def test_gaps_notebook_outputs_equal_a_direct_call(gaps_run, demo_inputs, sample_dir, tmp_path):
    nb, out_dir = gaps_run
    tif = out_dir / f"Gap_Statistics{SUFFIX}.tif"
    meta = out_dir / f"InputMask_Metadata{SUFFIX}.csv"
    assert tif.exists() and meta.exists() and (out_dir / f"Gap_Statistics{SUFFIX}.png").exists()
    folder = Path(demo_inputs) if demo_inputs else sample_dir
    from optsar_nb.aoi import load_aoi

    params = GapParams(mission="S2", start="2021-01-01", end="2022-01-01")
    state = cloud_state(read_stack(folder / f"SCL_Input{SUFFIX}.tif"), params.mask_rule_name)
    direct = characterize_gaps(state, params, tmp_path, aoi=load_aoi(folder / "aoi.geojson"), plot=False)
    np.testing.assert_array_equal(read_geotiff(tif).values, read_geotiff(direct["statistics"]).values)
    pd.testing.assert_frame_equal(pd.read_csv(meta), pd.read_csv(direct["metadata"]))
    # the summary table the notebook shows: mean gap over the AOI's pixels with data
    stats = read_geotiff(tif).values
    names = list(read_geotiff(tif).band.values)
    inside = stats[names.index("valid_count")] > 0
    mean_gap = np.nanmean(stats[names.index("gap_mean")][inside])
    summary = next(c for c in nb.cells if c.source.startswith("gaps.summary()"))
    row = next(line for line in summary.outputs[0].data["text/plain"].splitlines() if line.startswith("gap_mean"))
    assert float(row.split()[2]) == pytest.approx(mean_gap, abs=0.006)


# --------------------------------------------------------------------------------------------
# 02: gap infilling
def test_infill_notebook_runs_offline_and_writes_its_outputs(infill_run):
    nb, out_dir = infill_run
    assert "local engine" in text_outputs(nb)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    for product in ("NDVI_gapfree", "NDVI_Pred", "NDVI_Obs", "NDVI_Mask"):
        assert (out_dir / f"{product}{SUFFIX}.tif").exists()
    for name in (f"Output_Metadata{SUFFIX}.csv", f"Infill_Report{SUFFIX}.md", f"NDVI_Comparison{SUFFIX}.png"):
        assert (out_dir / name).exists()


def test_infill_notebook_numbers_equal_its_files(infill_run):
    nb, out_dir = infill_run
    table = pd.read_csv(out_dir / f"Output_Metadata{SUFFIX}.csv")
    assert list(table.columns) == ["ID", "Cloud_cover", "CollectionTime", "Random", "MAE", "SplitLabel"]
    printed = text_outputs(nb)
    assert "paired with Sentinel-1" in printed and f"{len(table)} paired" in printed
    gapfree = read_geotiff(out_dir / f"NDVI_gapfree{SUFFIX}.tif")
    observed = read_geotiff(out_dir / f"NDVI_Obs{SUFFIX}.tif")
    assert list(gapfree.band.values) == list(table.ID.astype(str))
    obs, filled = observed.values, gapfree.values
    clear = np.isfinite(obs)
    assert clear.any() and np.isfinite(filled).sum() > clear.sum()  # gaps were filled
    # MAE per image in the table = mean |obs - prediction| over the image's clear pixels
    pred = read_geotiff(out_dir / f"NDVI_Pred{SUFFIX}.tif").values
    i = int(np.flatnonzero(table.MAE.to_numpy() > 0)[0])
    ok = clear[i] & np.isfinite(pred[i])
    assert table.MAE[i] == pytest.approx(np.abs(obs[i][ok] - pred[i][ok]).mean(), rel=1e-3)
    # the accuracy cell: the verdict, the tables (numbers of Infill_Metrics) and the figure by gap length
    accuracy = next(c for c in nb.cells if c.source.startswith("print(infill.verdict)"))
    printed = "".join(o.get("text", "") for o in accuracy.outputs)
    assert printed.startswith("Best on validation")
    tables = [o.data["text/plain"] for o in accuracy.outputs if "text/plain" in o.get("data", {})]
    metrics = pd.read_csv(out_dir / f"Infill_Metrics{SUFFIX}.csv")
    fusion_val = metrics.query("split == 'validation' and method == 'fusion' and gap_bin == 'all'").MAE.iloc[0]
    assert f"{fusion_val:.4f}".rstrip("0") in tables[0] and "one-sided" in tables[1]
    assert any("image/png" in o.get("data", {}) for o in accuracy.outputs)


def test_running_a_notebook_again_replaces_its_own_outputs(gaps_run, demo_inputs):
    """Restart-and-run-all (or a second papermill run) into the same out_dir works: the notebook's
    default overwrite="own" replaces the files its first run wrote; a file it did not write stays."""
    nb, out_dir = gaps_run
    folder = out_dir.parent / "again"
    folder.mkdir()
    tif = out_dir / f"Gap_Statistics{SUFFIX}.tif"
    first = tif.stat().st_mtime_ns
    (out_dir / "my_notes.txt").write_text("the user's")
    papermill_parameters = {"out_dir": str(out_dir), **({"inputs": demo_inputs} if demo_inputs else {})}
    import papermill

    papermill.execute_notebook(str(GAPS_NB), str(folder / GAPS_NB.name), parameters=papermill_parameters,
                               cwd=str(folder), progress_bar=False, kernel_name="python3")
    again = nbformat.read(folder / GAPS_NB.name, as_version=4)
    assert not [o for c in again.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert tif.stat().st_mtime_ns > first and (out_dir / "my_notes.txt").read_text() == "the user's"


def test_the_map_is_also_saved_as_pictures(gaps_run):
    """A static copy of the notebook shows the map's layers as PNGs (the live map needs its scripts)."""
    nb, out_dir = gaps_run
    pictures = sorted(p.name for p in (out_dir / "map_pictures").glob("Map_*.png"))
    assert len(pictures) == 2 and pictures[0].startswith("Map_clear-day_mask_2021-"), pictures
    assert pictures[1] == "Map_gap_mean.png"  # the statistic shown at start
    cell = next(c for c in nb.cells if "save_pictures" in c.source)
    assert sum("image/png" in o.get("data", {}) for o in cell.outputs) == 2


def test_papermill_runs_are_independent_of_the_notebook_folder(gaps_run):
    nb, _ = gaps_run
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "out_dir" in injected[0].source
    assert json.loads(json.dumps(nb.metadata)).get("papermill", {}).get("parameters", {}).get("out_dir")
