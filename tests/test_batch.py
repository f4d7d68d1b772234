"""`optsar batch`: the gap notebook run with papermill once per AOI inside the demo scene.

Three AOIs (data/test_aois/demo_scene_batch.geojson): two fields that run, and a self-intersecting
bow-tie that is recorded as invalid with its error. A second run skips the two done.
Notebook kernels talk to papermill over localhost (zmq), hence the allow_hosts marker.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optsar_nb.aoi import load_aoi, load_aois
from optsar_nb.batch import parse_parameter, run_batch, safe_name
from optsar_nb.cli import main
from optsar_nb.local.gaps import characterize_gaps, cloud_state
from optsar_nb.local.stack import read_geotiff, read_stack
from optsar_nb.params import GapParams

pytestmark = pytest.mark.allow_hosts(["127.0.0.1", "::1"])

ROOT = Path(__file__).resolve().parents[1]
AOIS = ROOT / "data" / "test_aois" / "demo_scene_batch.geojson"
NOTEBOOK = ROOT / "notebooks" / "01_gap_characterization.ipynb"
SUFFIX = "_S2_2021-01-01_2022-01-01"


@pytest.fixture(scope="module")
def first_run(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    parameters = {"mission": "S2", "start": "2021-01-01", "end": "2022-01-01", "inputs": str(demo_dir)}
    summary = run_batch(AOIS, NOTEBOOK, out, parameters=parameters, progress=False)
    return out, summary


def test_two_aois_succeed_and_the_invalid_one_is_recorded(first_run):
    out, summary = first_run
    assert list(summary.aoi) == [a["name"] for a in load_aois(AOIS)]
    by_name = summary.set_index("aoi")
    assert by_name.loc["demo north field", "status"] == "ok"
    assert by_name.loc["demo south field", "status"] == "ok"
    bowtie = by_name.loc["demo bowtie (invalid: self-intersecting)"]
    assert bowtie.status == "invalid"
    assert "Self-intersection" in bowtie.error and "crosses itself" in bowtie.error
    written = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert list(written.columns[:4]) == ["aoi", "status", "duration_s", "error"]
    assert list(written.status) == list(summary.status)
    assert (written.duration_s[written.status == "ok"] > 0).all()


def test_each_aoi_folder_holds_the_executed_notebook_and_its_outputs(first_run, demo_dir, tmp_path):
    out, summary = first_run
    for name in ("demo north field", "demo south field"):
        folder = out / safe_name(name, set())
        executed = json.loads((folder / NOTEBOOK.name).read_text())
        injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert len(injected) == 1 and "aoi.geojson" in "".join(injected[0]["source"])
        tif = folder / "outputs" / f"Gap_Statistics{SUFFIX}.tif"
        assert tif.exists() and (folder / "outputs" / f"InputMask_Metadata{SUFFIX}.csv").exists()
        # the numbers equal a direct call of the local engine for the same AOI
        aoi = load_aoi(folder / "aoi.geojson")
        assert aoi.name == name
        params = GapParams(mission="S2", start="2021-01-01", end="2022-01-01")
        state = cloud_state(read_stack(demo_dir / f"SCL_Input{SUFFIX}.tif"), params.mask_rule_name)
        direct = characterize_gaps(state, params, tmp_path / folder.name, aoi=aoi, plot=False)
        np.testing.assert_array_equal(read_geotiff(tif).values, read_geotiff(direct["statistics"]).values)


def test_second_run_skips_the_aois_done(first_run, demo_dir, capsys):
    out, _ = first_run
    before = (out / "demo_north_field" / NOTEBOOK.name).stat().st_mtime_ns
    code = main(["batch", str(AOIS), "--notebook", str(NOTEBOOK), "-p", "inputs", str(demo_dir),
                 "-p", "start", "2021-01-01", "--out", str(out)])
    assert code == 0
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("aoi")
    assert summary.loc["demo north field", "status"] == "skipped"
    assert summary.loc["demo south field", "status"] == "skipped"
    assert summary.loc["demo bowtie (invalid: self-intersecting)", "status"] == "invalid"
    assert (out / "demo_north_field" / NOTEBOOK.name).stat().st_mtime_ns == before
    printed = capsys.readouterr().out
    assert "2 skipped" in printed and "1 invalid" in printed


def test_a_failing_notebook_is_recorded_and_the_batch_goes_on(demo_dir, tmp_path):
    # an end date before the start date fails inside the notebook, for every AOI
    summary = run_batch(AOIS, NOTEBOOK, tmp_path, parameters={"inputs": str(demo_dir), "end": "2020-01-01"},
                        progress=False)
    assert list(summary.status) == ["failed", "invalid", "failed"]
    assert summary.error[0].startswith("InvalidParameter: end date 2020-01-01 is not after start date")
    assert not (tmp_path / "demo_north_field" / "status.json").read_text().count('"ok"')


def test_parameter_values_and_folder_names():
    assert parse_parameter("5") == 5 and parse_parameter("true") is True and parse_parameter("S2") == "S2"
    assert parse_parameter("2021-01-01") == "2021-01-01"
    taken: set[str] = set()
    assert safe_name("a b/c", taken) == "a_b_c" and safe_name("a b/c", taken) == "a_b_c_2"


def test_a_rerun_with_other_parameters_runs_again_over_its_own_outputs(first_run, demo_dir):
    """A run's identity is its parameters: another period is not "skipped", and the AOI's earlier
    outputs (its own) do not stop it."""
    out, _ = first_run
    summary = run_batch(AOIS, NOTEBOOK, out, parameters={"inputs": str(demo_dir), "start": "2021-03-01"},
                        progress=False)
    assert list(summary.status) == ["ok", "invalid", "ok"], summary.error.tolist()
    status = json.loads((out / "demo_north_field" / "status.json").read_text())
    assert status["status"] == "ok" and status["parameters"]["start"] == "2021-03-01"
    assert (out / "demo_north_field" / "outputs" / "Gap_Statistics_S2_2021-03-01_2022-01-01.tif").exists()


def test_force_interruption_and_resume(demo_dir, tmp_path, monkeypatch):
    """The summary is written after every AOI; an AOI interrupted inside its notebook runs again
    at the next batch (its status says "running"), over its own outputs; --force reruns done AOIs
    as "ok", not "failed". The notebook is replaced by a stand-in that refuses existing outputs
    unless told to overwrite, as the notebooks do."""
    from optsar_nb import batch

    calls = []

    def stand_in(notebook, folder, values, **kw):
        calls.append((folder.name, values.get("overwrite", False)))
        marker = folder / "outputs" / "done.txt"
        if marker.exists() and not values.get("overwrite"):
            raise batch.OptsarError(f"{marker} exists")
        if len(calls) == 2 and folder.name == "demo_south_field" and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("x")

    interrupted: list[bool] = []
    monkeypatch.setattr(batch, "run_one", stand_in)
    with pytest.raises(KeyboardInterrupt):
        run_batch(AOIS, NOTEBOOK, tmp_path, parameters={"inputs": str(demo_dir)}, progress=False)
    written = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False)
    assert list(written.status) == ["ok", "invalid"]  # as far as the batch got
    assert json.loads((tmp_path / "demo_south_field" / "status.json").read_text())["status"] == "running"
    summary = run_batch(AOIS, NOTEBOOK, tmp_path, parameters={"inputs": str(demo_dir)}, progress=False)
    assert list(summary.status) == ["skipped", "invalid", "ok"]
    assert calls[-1] == ("demo_south_field", "own")  # over its own outputs, never over a file it did not write
    summary = run_batch(AOIS, NOTEBOOK, tmp_path, parameters={"inputs": str(demo_dir)}, force=True, progress=False)
    assert list(summary.status) == ["ok", "invalid", "ok"]


def test_a_very_long_aoi_name_gets_a_short_unique_folder():
    taken: set[str] = set()
    long_a, long_b = "field " * 50 + "A", "field " * 50 + "B"
    a, b = safe_name(long_a, taken), safe_name(long_b, taken)
    assert len(a) <= 80 and len(b) <= 80 and a != b and a.startswith("field_field")
