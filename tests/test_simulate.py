"""The scene simulator and the committed demo scene (optsar_nb/demo_scene)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest

from optsar_nb.aoi import load_aoi
from optsar_nb.errors import OutputExists
from optsar_nb.local import simulate as sim
from optsar_nb.local.gaps import aoi_cloud_stats, aoi_mask, clip_to_aoi, cloud_state, composite_same_day
from optsar_nb.local.stack import read_stack

SMALL = sim.Scene(height=37, width=45, start="2021-03-01", end="2021-07-01")
DEMO_LIMIT_BYTES = 5 * 2**20


@pytest.fixture(scope="module")
def optical():
    return sim.simulate_optical(sim.DEMO).compute()


@pytest.fixture(scope="module")
def radar():
    return sim.simulate_radar(sim.DEMO).compute()


def _arrays(ds):
    return {name: ds[name].values for name in ds.data_vars}


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=True), name


# --------------------------------------------------------------------------------------------
# determinism
def test_same_seed_same_arrays():
    _assert_same(_arrays(sim.simulate_optical(SMALL)), _arrays(sim.simulate_optical(SMALL)))
    _assert_same(_arrays(sim.simulate_radar(SMALL)), _arrays(sim.simulate_radar(SMALL)))


def test_chunking_does_not_change_values():
    # chunk edges (7, 16 px) that divide neither the scene nor the parcel or cloud lattices
    for simulate in (sim.simulate_optical, sim.simulate_radar):
        whole = _arrays(simulate(SMALL, chunk_px=512))
        for chunk in (7, 16):
            _assert_same(whole, _arrays(simulate(SMALL, chunk_px=chunk)))


def test_values_depend_on_global_position_only_in_a_benchmark_stack():
    scene = sim.benchmark_scene(3)
    window = dict(y=slice(1000, 1040), x=slice(3000, 3030), time=slice(100, 140))
    a = sim.simulate_optical(scene, chunk_px=64)["mask"].isel(window).values
    b = sim.simulate_optical(scene, chunk_px=45)["mask"].isel(window).values
    assert np.array_equal(a, b)
    assert 0 < (a == 0).mean() < 1  # clouds there, not everywhere


def test_other_seed_other_scene():
    other = dataclasses.replace(SMALL, seed=SMALL.seed + 1)
    a, b = sim.simulate_optical(SMALL)["truth"].values, sim.simulate_optical(other)["truth"].values
    assert np.abs(a - b).mean() > 0.05


# --------------------------------------------------------------------------------------------
# what the demo scene looks like
def test_grid_times_and_ids(optical, radar):
    assert optical.sizes == {"time": 74, "y": 80, "x": 80}
    assert radar.sizes["time"] == 60  # every 6 days, S1B gone after 2021-12-23
    assert optical.truth.attrs["transform"] == (10.0, 0.0, 667990.0, 0.0, -10.0, 6534030.0)
    assert "UTM zone 55S" in optical.truth.attrs["crs"]
    assert float(optical.x[0]) == 667995.0 and float(optical.y[0]) == 6534025.0
    assert all(re.fullmatch(r"\d{8}T\d{6}_\d{8}T\d{6}_T55J[A-Z]{2}", i) for i in optical.id.values)
    assert all(re.fullmatch(r"S1[AB]_IW_GRDH_1SDV_\d{8}T\d{6}_\d{8}T\d{6}_\d{6}_[0-9A-F]{6}_[0-9A-F]{4}", i)
               for i in radar.id.values)
    days = pd.DatetimeIndex(optical.time.values).normalize().unique()
    assert set(np.diff(days).astype("timedelta64[D]").astype(int)) == {5}
    t = pd.DatetimeIndex(radar.time.values)
    assert t.min() >= pd.Timestamp("2021-01-01") and t.max() < pd.Timestamp("2022-01-01")


def test_cloudy_share_in_range(optical):
    mask = optical["mask"].values
    valid = mask != sim.MASK_NODATA
    share = (mask == 0).sum() / valid.sum()
    assert 0.30 <= share <= 0.50
    per_image = np.array([(m == 0).sum() / max((m != sim.MASK_NODATA).sum(), 1) for m in mask])
    assert (per_image == 0).sum() >= 10  # fully clear dates
    assert (per_image == 1).sum() >= 2  # fully cloudy dates
    assert ((per_image > 0.05) & (per_image < 0.95)).sum() >= 10  # partly cloudy


def test_same_day_duplicate_with_different_footprints(optical):
    days = pd.DatetimeIndex(optical.time.values).normalize()
    assert days.duplicated().sum() == 1
    i, j = np.flatnonzero(days == days[days.duplicated()][0])
    assert optical.id.values[i].split("_")[2] != optical.id.values[j].split("_")[2]  # two tiles
    valid_i, valid_j = optical["scl"].values[i] != 0, optical["scl"].values[j] != 0
    assert (valid_i & ~valid_j).any() and (valid_j & ~valid_i).any() and (valid_i & valid_j).any()
    # the composite of that day is clear wherever either granule is clear
    state = cloud_state(optical["mask"], "clear_mask")
    day = composite_same_day(state).sel(time=days[i]).values
    assert np.array_equal(day, np.maximum(state.values[i], state.values[j]))


def test_swath_edges_missing(optical, radar):
    scl = optical["scl"].values
    edge_dates = [t for t in range(len(scl)) if (scl[t] == 0).any() and (scl[t, :, 0] != 0).all()]
    assert len(edge_dates) >= 3
    for t in edge_dates:  # the east edge is missing, a contiguous strip
        missing = scl[t] == 0
        assert missing[:, -1].all() and not missing[:, 0].any()
        assert np.isnan(optical["ndvi"].values[t][missing]).all()
    vh = radar["VH"].values
    s1_edges = [t for t in range(len(vh)) if np.isnan(vh[t]).any()]
    assert len(s1_edges) >= 3
    for t in s1_edges:  # the west edge is missing in both polarisations
        assert np.isnan(vh[t][:, 0]).all() and not np.isnan(vh[t][:, -1]).any()
        assert np.array_equal(np.isnan(vh[t]), np.isnan(radar["VV"].values[t]))


def test_observed_equals_truth_where_clear(optical):
    obs, truth, mask, scl = (optical[v].values for v in ("ndvi", "truth", "mask", "scl"))
    clear = mask == 1
    assert clear.sum() > 200_000
    assert np.array_equal(obs[clear], truth[clear])
    assert np.array_equal(np.isnan(obs), mask == sim.MASK_NODATA)
    assert np.array_equal(scl == 0, mask == sim.MASK_NODATA)
    assert np.array_equal(mask == 0, np.isin(scl, (3, 8, 9, 10)))
    assert not np.isnan(truth).any()
    thick = scl == 9
    assert abs(np.mean(obs[thick]) - 0.03) < 0.01 and np.mean(truth[thick]) > 0.25
    shadow = scl == 3
    assert np.mean(truth[shadow] - obs[shadow]) > 0.05 and np.std(obs[shadow] - 0.75 * truth[shadow]) > 0.06
    assert set(np.unique(scl)) == {0, 3, 4, 5, 6, 8, 9, 10}


def test_land_covers_and_seasons(optical):
    cover = sim.land_cover(sim.DEMO).values
    assert set(np.unique(cover)) == set(range(len(sim.LAND_COVERS)))
    truth = optical["truth"].values
    month = pd.DatetimeIndex(optical.time.values).month
    winter = cover == [c.name for c in sim.LAND_COVERS].index("winter crop")
    # winter crop: green in August, bare in February; water stays negative
    assert truth[month == 8][:, winter].mean() > 0.6 > 0.25 > truth[month == 2][:, winter].mean()
    assert truth[:, cover == sim.WATER].max() < 0
    assert np.array_equal(optical["scl"].values[:, cover == sim.WATER] == 6,
                          (optical["mask"].values == 1)[:, cover == sim.WATER])


def test_radar_follows_vegetation(optical, radar):
    t_opt, t_s1 = pd.DatetimeIndex(optical.time.values), pd.DatetimeIndex(radar.time.values)
    pairs = [(i, int(np.argmin(abs(t_opt - t)))) for i, t in enumerate(t_s1)]
    pairs = [(i, j) for i, j in pairs if abs(t_opt[j] - t_s1[i]) <= pd.Timedelta(days=3)]
    assert len(pairs) >= 50
    vh = np.concatenate([radar["VH"].values[i].ravel() for i, _ in pairs])
    vv = np.concatenate([radar["VV"].values[i].ravel() for i, _ in pairs])
    ndvi = np.concatenate([optical["truth"].values[j].ravel() for _, j in pairs])
    ok = np.isfinite(vh)
    r_vh, r_vv = np.corrcoef(vh[ok], ndvi[ok])[0, 1], np.corrcoef(vv[ok], ndvi[ok])[0, 1]
    assert r_vh > 0.6 and r_vh > r_vv > 0
    assert -25 < np.nanpercentile(radar["VV"], 5) and np.nanpercentile(radar["VV"], 95) < -5
    assert -32 < np.nanpercentile(radar["VH"], 5) and np.nanpercentile(radar["VH"], 95) < -12


def test_benchmark_sizes():
    for case, (height, width, images) in sim.BENCHMARK_CASES.items():
        scene = sim.benchmark_scene(case)
        stack = sim.simulate_optical(scene)["ndvi"]  # lazy: nothing is computed here
        assert stack.shape == (images, height, width)
        assert max(stack.data.chunksize[1:]) <= 512


# --------------------------------------------------------------------------------------------
# the committed demo scene
def test_sample_is_small(sample_dir):
    files = [p for p in sample_dir.iterdir() if p.is_file()]
    assert len(files) == len(sim.scene_files())
    assert sum(p.stat().st_size for p in files) < DEMO_LIMIT_BYTES


def test_sample_matches_generator(sample_dir, tmp_path):
    written = sim.write_scene(tmp_path, sim.DEMO)
    files = sim.scene_files(sim.DEMO)
    stacks = {"ndvi": "ndvi_csv", "mask": "ndvi_csv", "scl": "scl_csv", "truth": "truth_csv",
              "vv": "s1_csv", "vh": "s1_csv"}
    for tif, csv in stacks.items():
        new = read_stack(written[tif], written[csv])
        old = read_stack(sample_dir / files[tif], sample_dir / files[csv])
        assert np.array_equal(new.values, old.values, equal_nan=True), tif
        assert list(new.id.values) == list(old.id.values)
        assert np.array_equal(new.time.values, old.time.values)
    for key in ("ndvi_csv", "scl_csv", "truth_csv", "s1_csv"):
        pd.testing.assert_frame_equal(pd.read_csv(written[key]), pd.read_csv(sample_dir / files[key]))
    for key in ("aoi", "readme"):
        assert written[key].read_text() == (sample_dir / files[key]).read_text(), key
    with pytest.raises(OutputExists):
        sim.write_scene(tmp_path, sim.DEMO)


def test_sample_reads_back(sample_dir, optical):
    files = sim.scene_files(sim.DEMO)
    ndvi = read_stack(sample_dir / files["ndvi"], sample_dir / files["ndvi_csv"])
    acq = sim.optical_acquisitions(sim.DEMO)
    assert list(ndvi.id.values) == list(acq.ID)
    assert np.array_equal(ndvi.time.values, acq.time.values.astype(ndvi.time.dtype))
    # int16 packing: within half a step of the simulated values
    assert np.nanmax(np.abs(ndvi.values - optical["ndvi"].values)) <= 0.5e-4 + 1e-6
    mask = read_stack(sample_dir / files["mask"], sample_dir / files["ndvi_csv"])
    state = cloud_state(mask, "clear_mask").values
    assert np.array_equal(state, cloud_state(optical["scl"], "scl").values)
    assert np.array_equal(state, np.where(optical["mask"].values == 255, -1, optical["mask"].values.astype(np.int16)))
    # the CSV's cloud statistics are those of the AOI file, computed by the gap engine
    aoi = load_aoi(sample_dir / "aoi.geojson")
    inside = aoi_mask(mask, aoi)
    assert inside.values.all()
    stats = aoi_cloud_stats(clip_to_aoi(cloud_state(mask, "clear_mask"), inside))
    np.testing.assert_allclose(stats.CLOUD_PERCENTAGE_AOI, ndvi.CLOUD_PERCENTAGE_AOI.values)
    assert np.array_equal(stats.PIXEL_COUNT_AOI, ndvi.PIXEL_COUNT_AOI.values)
    readme = (sample_dir / "README.md").read_text()
    assert "SIMULATED" in readme and "python -m optsar_nb.local.simulate --out optsar_nb/demo_scene" in readme
    assert json.loads((sample_dir / "aoi.geojson").read_text())["features"][0]["properties"]["simulated"]


def test_command_line_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "README.md").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        sim.main(["--out", str(tmp_path)])  # the demo's files are absent but README.md exists
    assert exc.value.code == 2 and "exists" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == "mine"
