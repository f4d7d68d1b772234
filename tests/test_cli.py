"""The optsar command line: gaps on real data, clear errors with exit code 2."""

from __future__ import annotations

import numpy as np
from conftest import ROOT

from optsar_nb.cli import main
from optsar_nb.local.stack import read_geotiff


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
