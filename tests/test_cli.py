"""The optsar command line: gaps on real data, clear errors with exit code 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from optsar_nb.cli import main
from optsar_nb.local.stack import read_geotiff
from optsar_nb.params import InfillParams


def test_gaps_on_netcdf(flanders, tmp_path, capsys):
    nc = next(flanders.glob("S2_L2A_20m_*.nc"))
    aoi = ROOT / "data" / "test_aois" / "flanders_patch.geojson"
    args = ["gaps", "--qa", str(nc), "--variable", "SCL", "--start", "2017-08-01", "--end", "2018-11-30",
            "--aoi", str(aoi)]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Gap_Statistics_S2_2017-08-01_2018-11-30.tif" in out
    stats = read_geotiff(tmp_path / "Gap_Statistics_S2_2017-08-01_2018-11-30.tif").values
    assert np.isfinite(stats[0]).all() and stats[0].max() <= 118
    # a second run refuses to overwrite and says how to proceed
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err


def test_bad_dates_and_mission(tmp_path, capsys):
    assert main(["gaps", "--qa", "x.tif", "--start", "2020-02-01", "--end", "2020-01-01", "--out", str(tmp_path)]) == 2
    assert "not after start date" in capsys.readouterr().err
    assert main(["gaps", "--qa", "x.tif", "--mission", "S5", "--start", "2020-01-01", "--end", "2020-02-01",
                 "--out", str(tmp_path)]) == 2
    assert "unknown mission 'S5'" in capsys.readouterr().err


def test_demo_prints_outputs_and_truth_mae(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-notebooks"]) == 0
    printed = capsys.readouterr().out
    assert "Gap_Statistics_S2_2021-01-01_2022-01-01.tif" in printed and "NDVI_gapfree" in printed
    mae = float(printed.split("truth under clouds:")[1].split()[0])
    # independent check from the written files and the scene's truth
    from optsar_nb.local.stack import read_stack

    meta = out / "infill" / "Output_Metadata_S2_2021-01-01_2022-01-01.csv"
    gapfree = read_stack(out / "infill" / "NDVI_gapfree_S2_2021-01-01_2022-01-01.tif", meta)
    mask = read_stack(out / "infill" / "NDVI_Mask_S2_2021-01-01_2022-01-01.tif", meta).values
    truth = read_stack(ROOT / "optsar_nb" / "demo_scene" / "NDVI_Truth_S2_2021-01-01_2022-01-01.tif")
    err = np.abs(gapfree.values - truth.sel(time=gapfree.time).values)[mask == 0]
    assert mae == pytest.approx(float(np.nanmean(err)), abs=1e-4)
    # a second run keeps the first run's files and says how to replace them
    assert main(["demo", "--out", str(out), "--no-notebooks"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_infill_refuses_a_too_small_work_disk_before_any_work(tmp_path, capsys, monkeypatch):
    """The staging need is checked first: a clear error naming the sizes and --work-dir, nothing left behind."""
    import shutil

    from optsar_nb.local import _store

    free = 10**6
    monkeypatch.setattr(_store.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    sample = ROOT / "optsar_nb" / "demo_scene"
    args = ["infill", "--inputs", str(sample), "--start", "2021-01-01", "--end", "2022-01-01"]
    work = tmp_path / "scratch"
    assert main([*args, "--out", str(tmp_path / "out"), "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err
    # 74 images and 60 S1 images of 80 x 80 px, all stored as int16: per pixel 74 x (2 + 1 + 0.8)
    # bytes (observations, states, scores) + 60 x 4 (S1) + 96 (coefficients, reliability) = 617.2
    # bytes, x 6400 px
    assert "about 4.0 MB of temporary stacks (74 images of 80 x 80 px)" in err and "1.0 MB free" in err
    assert "--work-dir" in err
    assert list(work.iterdir()) == [] and list((tmp_path / "out").iterdir()) == []


def test_infill_stages_in_the_work_dir(tmp_path, monkeypatch):
    from optsar_nb.local import _store

    used = []
    create_in = _store.Store.create_in
    monkeypatch.setattr(_store.Store, "create_in", lambda parent, prefix: used.append(Path(parent)) or
                        create_in(parent, prefix))
    sample = ROOT / "optsar_nb" / "demo_scene"
    work = tmp_path / "scratch"
    assert main(["infill", "--inputs", str(sample), "--start", "2021-01-01", "--end", "2022-01-01", "--workers", "1",
                 "--out", str(tmp_path / "out"), "--work-dir", str(work), "--method", "paper"]) == 0
    # the temporary stacks go there (the output set is staged in the output folder), removed afterwards
    assert used == [work] and list(work.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []
    assert (tmp_path / "out" / "NDVI_gapfree_S2_2021-01-01_2022-01-01.tif").exists()
    # --method reaches the job: the report says which fill NDVI_gapfree holds
    report = (tmp_path / "out" / "Infill_Report_S2_2021-01-01_2022-01-01.md").read_text()
    assert 'NDVI_gapfree holds the S1 regression (paper) estimate' in report and '`method="paper"`' in report


def test_an_unmeasured_mae_is_said_not_printed_as_nan(capsys):
    from types import SimpleNamespace

    import pandas as pd

    from optsar_nb.cli import _print_validation

    metrics = pd.DataFrame([{"split": s, "method": m, "MAE": float("nan")} for s in ("validation", "test")
                            for m in ("model", "fusion", "pixel_mean", "interpolation")])
    _print_validation(SimpleNamespace(metrics=metrics, params=InfillParams()))
    out = capsys.readouterr().out
    assert "fusion not measured" in out and "nan" not in out and "No validation pixels could be scored" in out
