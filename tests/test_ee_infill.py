"""Gap infilling: graphs built by optsar_nb.ee.infill, evaluated on the real Flanders data,
equal the local engine's results (optsar_nb.local.infill.infill on the same inputs)."""

from __future__ import annotations

import ee
import numpy as np
import pytest
from ee_support.cubes import band_array, flanders_aoi

from optsar_nb.ee import infill as ee_infill
from optsar_nb.errors import NotEnoughPairs
from optsar_nb.local import infill as local_infill
from optsar_nb.local.stack import read_geotiff
from optsar_nb.params import InfillParams

# The Earth Engine engine fills clouds the paper's way; the local engine is asked for the same.
# One sample per coefficient: most pixels keep a model, so that the parity of the regression,
# PCA and standardization is tested on them (the guard rail's own parity: test_guard_rail_*).
PARAMS = InfillParams(mission="S2", start="2017-08-01", end="2018-12-01", method="paper",
                      min_samples_per_coefficient=1)
TOL = 1e-4  # NDVI units
ALL_PIXELS = 10**6  # the fusion's weights from every pixel's leave-out rows, as the local engine on this AOI
FLOAT32_ULP_NDVI = 1.2e-7  # one float32 ulp at |NDVI| < 1


@pytest.fixture(scope="module")
def aoi():
    return flanders_aoi()


@pytest.fixture(scope="module")
def local_run(flanders_ee, aoi, tmp_path_factory):
    _, cubes = flanders_ee
    ndvi = local_infill.ndvi(cubes.red, cubes.nir)
    state = local_infill.cloud_mask(cubes.scl, PARAMS)
    out = tmp_path_factory.mktemp("local_infill")
    return local_infill.infill(ndvi, state, cubes.vv, cubes.vh, PARAMS, out, aoi=aoi, report=False)


@pytest.fixture(scope="module")
def ee_run(flanders_ee, aoi):
    ev, _ = flanders_ee
    fetches = []

    def fetch(obj):
        fetches.append(obj)
        return ev.evaluate(obj)

    run = ee_infill.build_infill(aoi, PARAMS, fetch=fetch, fusion_sample_pixels=ALL_PIXELS)
    # one evaluation of everything, so that shared steps are computed once
    result = ev.evaluate(ee.Dictionary({"coefficients": run.coefficients, **run.outputs, "mae": run.mae}))
    return run, result, fetches


def _stack(image, ids):
    return np.stack([band_array(image, i) for i in ids])


def _inside(flanders_ee, aoi):
    from optsar_nb.local.gaps import aoi_mask

    _, cubes = flanders_ee
    return aoi_mask(cubes.red, aoi).values


def test_building_makes_two_round_trips(ee_run):
    _, _, fetches = ee_run
    assert len(fetches) == 2  # the pair count check (B.5), the fusion's leave-out rows (C)


def test_pairs_split_and_donor_equal_local(ee_run, local_run):
    run, _, _ = ee_run
    local = local_run
    assert run.ids == list(local.metadata["ID"])
    assert run.donor_id == local.donor_id
    np.testing.assert_array_equal(run.table["SplitLabel"], local.metadata["SplitLabel"])
    np.testing.assert_array_equal(run.table["Random"], local.metadata["Random"])
    np.testing.assert_array_equal(run.table["S1_COUNT"], local.metadata["S1_COUNT"])
    np.testing.assert_allclose(run.table["CLOUD_PERCENTAGE_AOI"], local.metadata["CLOUD_PERCENTAGE_AOI"], rtol=1e-12)


def test_observations_and_masks_equal_local(flanders_ee, aoi, ee_run, local_run):
    run, result, _ = ee_run
    local = local_run
    inside = _inside(flanders_ee, aoi)
    obs_l = read_geotiff(local.paths["NDVI_Obs"]).values.astype("float64")
    obs_e = _stack(result["NDVI_Obs"], run.ids)
    np.testing.assert_array_equal(np.isnan(obs_e), np.isnan(obs_l))
    assert np.nanmax(np.abs(obs_e - obs_l)) <= FLOAT32_ULP_NDVI  # both store float32
    mask_l = read_geotiff(local.paths["NDVI_Mask"]).values.astype("float64")
    mask_e = _stack(result["NDVI_Mask"], run.ids)
    np.testing.assert_array_equal(mask_e[:, inside], mask_l[:, inside])


def test_predictions_equal_local(flanders_ee, aoi, ee_run, local_run):
    """NDVI_Pred (after regression, PCA and standardization) and the gap-free NDVI (the paper's
    fill, the fused estimate where a pixel has no model, the focal median, clipped to [-1, 1]).

    Both engines fit every pixel with Talwar IRLS, whose weights are hard (0/1): a sample whose
    residual lies within rounding of the threshold c x scale would be kept by one engine and
    dropped by the other, and on the rank-deficient designs of this data (condition ~1e17) that
    changes the pixel's fit. The engines therefore feed the regression the same float32
    covariates (computed in float64, rounded once), and the local engine standardizes the
    float64 PCA reconstruction, as the graph does. With one sample per coefficient every pixel
    has a model, the least determined fits included: the median difference is 3e-8 NDVI, the 99th
    percentile 1.8e-7, and one pixel near the AOI's edge (whose covariates read S1 beyond the AOI)
    differs by up to 1.7e-4 on 10 of its dates (solver rounding amplified by the conditioning of a
    fit with 9 samples for 9 coefficients). Bounds: 99 % of pixel-dates within four float32 ulps,
    99.9 % within 1e-4, all within 1e-3."""
    run, result, _ = ee_run
    local = local_run
    for name in ("NDVI_Pred", "NDVI_gapfree"):
        ours = _stack(result[name], run.ids)
        theirs = read_geotiff(local.paths[name]).values.astype("float64")
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=name)
        diff = np.abs(ours - theirs)[~np.isnan(ours)]
        assert (diff <= TOL).mean() >= 0.999 and diff.max() <= 10 * TOL, name
        assert np.percentile(diff, 99) <= 4 * FLOAT32_ULP_NDVI, name


def test_coefficients_are_finite_where_trained(ee_run, local_run):
    """Rank-deficient designs give finite coefficients on both engines, masked where the
    training set is too small. Coefficients themselves are not identifiable on singular pixels
    (minimum-norm solutions differ with rounding), so parity is asserted on predictions."""
    _, result, _ = ee_run
    local = local_run
    model = read_geotiff(local.paths["NDVI_Model"]).values
    for i, name in enumerate(ee_infill.COEFFICIENT_BANDS):
        ours = band_array(result["coefficients"], name)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(model[i]))
        assert np.isfinite(ours[~np.isnan(ours)]).all()


def test_mae_equals_local(ee_run, local_run):
    """Per-image MAE over clear pixels; float32 storage of the predictions bounds the difference."""
    _, result, _ = ee_run
    local = local_run
    np.testing.assert_allclose(result["mae"], local.metadata["MAE"], atol=TOL)


def test_too_few_pairs_is_a_clear_error(flanders_ee, aoi):
    ev, _ = flanders_ee
    fetches = []

    def fetch(obj):
        fetches.append(obj)
        return ev.evaluate(obj)

    with pytest.raises(NotEnoughPairs, match="s1_window_days"):
        ee_infill.build_infill(aoi, PARAMS.replace(min_pairs=1000), fetch=fetch)
    assert len(fetches) == 1


def test_sentinel1_above_the_db_range_is_masked_as_locally(flanders_ee, aoi):
    """The real S1 cubes with values above +30 dB and +inf put in: the graph's S1 window means
    (masked with gte(s1_min_db) and lte(s1_max_db)) equal the local engine's and numpy's, on the
    AOI and the pixels within the covariates' reach of it (chessboard distance <= 12 px, by a
    distance transform), and are masked beyond."""
    import dataclasses

    import pandas as pd
    from ee_support.cubes import s1_collection, s2_collection
    from ee_support.evaluator import Evaluator
    from scipy import ndimage
    from test_infill import reference_window_mean, with_implausible_values

    from optsar_nb.ee import collections as col
    from optsar_nb.missions import MISSIONS, S1

    _, cubes = flanders_ee
    bad = dataclasses.replace(cubes, vv=with_implausible_values(cubes.vv, seed=1),
                              vh=with_implausible_values(cubes.vh, seed=2))
    ev = Evaluator(cubes.grid)
    ev.register(MISSIONS["S2"].collection_id, s2_collection(cubes))
    ev.register(S1.collection_id, s1_collection(bad))
    region = col.region_of(aoi)
    optical = col.optical_collection(region, mission=MISSIONS["S2"], start=PARAMS.start, end=PARAMS.end)
    windows = ev.evaluate(ee_infill.s1_window_mean(optical, region, PARAMS, col.optical_grid(region, PARAMS)))
    times = pd.to_datetime([image.props["system:time_start"] for image in windows.images], unit="ms").to_numpy()
    inside = _inside(flanders_ee, aoi)
    reach = ndimage.distance_transform_cdt(~inside, metric="chessboard") <= 12
    assert local_infill.covariate_halo(PARAMS) == 12 and (reach & ~inside).any() and not reach.all()
    np.testing.assert_array_equal(local_infill.covariate_support(inside, PARAMS), reach)
    for band, s1 in (("VV", bad.vv), ("VH", bad.vh)):
        ours = np.stack([band_array(image, band) for image in windows.images])
        local = local_infill.s1_window_mean(s1, times, PARAMS)[0].values
        expected = reference_window_mean(s1.values, s1.time.values, times, PARAMS.s1_window_days,
                                         PARAMS.s1_min_db, PARAMS.s1_max_db)
        assert np.isnan(ours[:, ~reach]).all()  # masked beyond the covariates' reach
        np.testing.assert_allclose(ours[:, reach], local[:, reach], rtol=1e-6, atol=0, err_msg=band)
        np.testing.assert_allclose(ours[:, reach], expected[:, reach], rtol=1e-6, atol=0, err_msg=band)
        # unmasked, the finite values put in would move most means inside the AOI by more than 1 dB
        with_them = reference_window_mean(s1.values, s1.time.values, times, PARAMS.s1_window_days,
                                          PARAMS.s1_min_db, np.inf)
        assert (np.abs(with_them - expected)[:, inside] > 1).mean() > 0.4


def test_inputs_export_in_the_seed_format(flanders_ee, ee_run, tmp_path):
    """export_infill_inputs writes NDVI_Input, NDVI_Mask, VV_Input, VH_Input and both metadata
    tables; the images evaluate to one band per image ID, on the AOI's window grown by the
    covariates' reach (12 px), and S1 holds values there beyond the AOI."""
    import pandas as pd
    from scipy import ndimage

    from optsar_nb.ee import export
    from optsar_nb.ee import tiles as tiling

    ev, cubes = flanders_ee
    run, _, _ = ee_run

    class LocalClient:
        images, grids = {}, {}

        def exists(self, destination, name):
            return False

        def download(self, image, path, *, region, grid):
            self.images[path.name] = image
            self.grids[path.name] = grid
            path.write_bytes(b"")
            return path

    client = LocalClient()
    report = export.export_infill_inputs(run, destination=export.Destination("local", folder=str(tmp_path)),
                                         client=client, fetch=ev.evaluate)
    suffix = PARAMS.suffix
    assert set(report) == {f"{n}{suffix}" for n in ("NDVI_Input", "NDVI_Mask", "VV_Input", "VH_Input",
                                                     "InputNDVI_Metadata", "InputS1_Metadata")}
    s1_table = pd.read_csv(tmp_path / f"InputS1_Metadata{suffix}.csv")
    vv = ev.evaluate(client.images[f"VV_Input{suffix}.tif"])
    assert vv.names == list(s1_table["ID"])
    ndvi_table = pd.read_csv(tmp_path / f"InputNDVI_Metadata{suffix}.csv")
    ndvi = ev.evaluate(client.images[f"NDVI_Input{suffix}.tif"])
    assert ndvi.names == list(ndvi_table["ID"]) == [str(i) for i in cubes.red["id"].values]
    # the window: the AOI's, 12 px more on each side, on the cube's grid (the same for every image)
    grid = {"crs": cubes.grid.crs, "transform": [float(v) for v in cubes.grid.transform[:6]]}
    aoi_window = tiling.aoi_window(run.aoi, grid)
    expected = tiling.tile_grid(grid, tiling.Window(aoi_window.col - 12, aoi_window.row - 12,
                                                    aoi_window.width + 24, aoi_window.height + 24))
    assert all(g == expected for g in client.grids.values()) and len(client.grids) == 4
    inside = _inside(flanders_ee, run.aoi)
    reach = ndimage.distance_transform_cdt(~inside, metric="chessboard") <= 12
    vv_mask = np.stack([vv.bands[name].mask for name in vv.names])
    assert vv_mask[:, reach & ~inside].any(axis=0).all()  # S1 beyond the AOI, within reach
    assert not vv_mask[:, ~reach].any()
    ndvi_mask = np.stack([ndvi.bands[name].mask for name in ndvi.names])
    assert not ndvi_mask[:, ~inside].any()  # the optical bands stay on the AOI


# --------------------------------------------------------------------------------------------
# part C: the fused gap-free NDVI (the default method), weights fitted on every pixel's rows
FUSION = InfillParams(mission="S2", start="2017-08-01", end="2018-12-01")


@pytest.fixture(scope="module")
def fusion_runs(flanders_ee, aoi, tmp_path_factory):
    ev, cubes = flanders_ee
    local = local_infill.infill(local_infill.ndvi(cubes.red, cubes.nir), local_infill.cloud_mask(cubes.scl, FUSION),
                                cubes.vv, cubes.vh, FUSION, tmp_path_factory.mktemp("local_fusion"), aoi=aoi,
                                report=False)
    run = ee_infill.build_infill(aoi, FUSION, fetch=ev.evaluate, fusion_sample_pixels=ALL_PIXELS)
    names = ("NDVI_gapfree", "NDVI_gapfree_SE", "NDVI_Obs", "NDVI_Pred")
    result = ev.evaluate(ee.Dictionary({n: run.outputs[n] for n in names}))
    return local, run, {n: _stack(result[n], run.ids) for n in names}


def test_fusion_weights_and_standard_errors_equal_local(fusion_runs):
    """Fitted on the client from the fetched rows, as the local engine fits them from its own."""
    local, run, _ = fusion_runs
    assert run.fusion_fit.n_pixels == 2724  # every AOI pixel
    np.testing.assert_allclose(run.fusion_fit.weights, local.fusion_weights, atol=1e-6)
    assert np.abs(run.fusion_fit.weights).max() > 0.05  # S1 carries weight here
    np.testing.assert_allclose(run.fusion_fit.se, local.standard_errors["fusion"], atol=1e-9)


def test_fused_gapfree_and_its_standard_error_equal_local(fusion_runs):
    """NDVI_gapfree within 1e-4 on at least 99.9 % of pixel-dates (the same float32 covariates,
    float32 storage); NDVI_gapfree_SE the same table looked up by the same distances; 0 at clear views."""
    local, _, ours = fusion_runs
    for name in ("NDVI_gapfree", "NDVI_gapfree_SE"):
        theirs = read_geotiff(local.paths[name]).values.astype("float64")
        np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(theirs), err_msg=name)
        diff = np.abs(ours[name] - theirs)[np.isfinite(theirs)]
        assert np.mean(diff <= TOL) >= 0.999, name
        assert diff.max() < 1e-3, name
    gapfree = ours["NDVI_gapfree"]
    assert np.nanmax(np.abs(gapfree)) <= 1
    clear = np.isfinite(ours["NDVI_Obs"])
    se = ours["NDVI_gapfree_SE"]
    assert (se[clear] == 0).all() and (se[~clear & np.isfinite(gapfree)] > 0).all()
    assert np.abs(gapfree[clear] - ours["NDVI_Obs"][clear]).max() <= FLOAT32_ULP_NDVI


def test_predictions_at_default_parameters_equal_local(fusion_runs):
    """NDVI_Pred (regression, PCA, standardization) with the default parameters: 3 samples per
    coefficient, so about a third of the AOI's pixels keep a model and enter the PCA.

    Both engines compute the covariates in float64 from float64 S1 window means and round them
    to float32 once (the graph's ``toFloat``), so the regressions see the same inputs (all but
    about 0.01 % bit for bit, the rest one float32 ulp: neighbourhood sums in another order).
    Talwar's hard 0/1 weights then differ only if a residual lies within the solvers' own
    rounding (~1e-12 relative) of c x scale; what remains is that rounding amplified by the
    conditioning of the nearly collinear designs, and one ulp of the float32 outputs. Measured
    (the AOI's edge pixels reading the S1 around it): median 0, 99th percentile 1.2e-7, largest
    3.1e-6 NDVI. Bounds: 99 % of pixel-dates within four
    float32 ulps, all within 1e-4. A single flipped weight would fail both: it moves its pixel's
    prediction by up to 0.15 here, and through the AOI-wide covariance of B.8 every other pixel's
    (median 1.4e-4 on the Flanders patch, when one engine rounded covariates to float32 at every
    step)."""
    local, run, ours = fusion_runs
    mine = ours["NDVI_Pred"]
    theirs = read_geotiff(local.paths["NDVI_Pred"]).values.astype("float64")
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))
    has = np.isfinite(theirs).any(axis=0)
    assert 0.25 < has.sum() / run.fusion_fit.n_pixels < 0.9  # the guard rail leaves some pixels without a model
    diff = np.abs(mine - theirs)[np.isfinite(theirs)]
    assert np.percentile(diff, 99) <= 4 * FLOAT32_ULP_NDVI
    assert diff.max() <= TOL


# --------------------------------------------------------------------------------------------
# Landsat 8: the patch's real Landsat surface reflectance cube (26 dates, on the 10 m grid), with
# the default parameters. Its series are short and cloudy: no pixel reaches the 27 clear training
# samples of its own regression, so the product is the fusion everywhere; the regression's parity
# is tested on Sentinel-2 above. (Measured with one sample per coefficient and 90 % of the pairs
# training: every pixel keeps a model, fitted from as few as 9 samples; predictions reach |NDVI| 343,
# and the engines agree within 1e-4 on 99.87 % of pixel-dates, worst 1.7e-3: the solvers'
# rounding amplified by fits that are barely determined, not a difference of method.)
LANDSAT = InfillParams(mission="L8", start="2017-08-01", end="2018-12-01")


def _landsat_collection2(flanders, template):
    """The cube (Collection 1 reflectance, pixel_qa bits) as Collection 2 Level 2 data:
    SR_B4/SR_B5 digital numbers (reflectance = DN x 2.75e-5 - 0.2) and QA_PIXEL bits (0 fill,
    3 cloud, 4 cloud shadow, 6 clear; USGS C2 L2 product guide) from pixel_qa's (0 fill, 3 cloud
    shadow, 5 cloud). Returns (DN red, DN nir, QA_PIXEL) on the S2 grid, lazy-free."""
    from optsar_nb.local import grid, stack

    path = next(flanders.glob("L8_SR_10m_*.nc"))
    cube = stack.read_netcdf(path, ["B04", "B05", "pixel_qa"])
    cube = {name: grid.align_to(cube[name], template).compute() for name in ("B04", "B05", "pixel_qa")}
    qa1 = cube["pixel_qa"].values.astype("int64")
    fill, shadow, cloud = (qa1 >> 0) & 1, (qa1 >> 3) & 1, (qa1 >> 5) & 1
    qa2 = fill | (cloud << 3) | (shadow << 4) | ((1 - (fill | cloud | shadow)) << 6)

    def dn(band):  # read_netcdf applies the cube's scale: the values are reflectances
        return np.round((cube[band].values.astype("float64") + 0.2) / 2.75e-5)

    as_da = cube["pixel_qa"].copy
    return (as_da(data=dn("B04")).rename("SR_B4"), as_da(data=dn("B05")).rename("SR_B5"),
            as_da(data=qa2.astype("float64")).rename("QA_PIXEL"))


@pytest.fixture(scope="module")
def landsat_runs(flanders, flanders_ee, aoi, tmp_path_factory):
    from ee_support.cubes import s1_collection
    from ee_support.evaluator import Evaluator
    from ee_support.values import Band, Collection, Image

    from optsar_nb.local import stack
    from optsar_nb.missions import MISSIONS, S1

    _, cubes = flanders_ee
    red, nir, qa = _landsat_collection2(flanders, cubes.red)
    mission = MISSIONS["L8"]
    images = []
    for i, t in enumerate(stack.datetime_to_ms(qa.time.values)):
        ok = (qa.values[i] % 2) == 0  # the fill bit: no data there, as the server masks it
        images.append(Image({mission.red: Band(red.values[i], ok), mission.nir: Band(nir.values[i], ok),
                             "QA_PIXEL": Band(qa.values[i], ok)},
                            {"system:time_start": int(t), "system:index": str(qa["id"].values[i])}))
    ev = Evaluator(cubes.grid)
    ev.register(mission.collection_id, Collection(images))
    ev.register(S1.collection_id, s1_collection(cubes))
    run = ee_infill.build_infill(aoi, LANDSAT, fetch=ev.evaluate, fusion_sample_pixels=ALL_PIXELS)
    result = ev.evaluate(ee.Dictionary(run.outputs))
    # the local engine on the same numbers: reflectance as the graph computes it
    reflectance = [b * mission.scale + mission.offset for b in (red, nir)]
    ndvi = local_infill.ndvi(*reflectance).where((qa % 2) == 0)
    local = local_infill.infill(ndvi, local_infill.cloud_mask(qa, LANDSAT), cubes.vv, cubes.vh, LANDSAT,
                                tmp_path_factory.mktemp("local_landsat"), aoi=aoi, report=False)
    return run, result, local


def test_landsat8_infilling_equals_local(landsat_runs, flanders_ee, aoi):
    """Landsat 8 through the whole infilling graph (Collection 2 scale and offset, QA_PIXEL bits,
    the 16-day revisit's pairs, the S1 covariates, the fusion): observations and masks exactly,
    fusion weights and standard errors as fitted locally, NDVI_gapfree within 1e-4 on 99.9 % of
    pixel-dates, as Sentinel-2's."""
    run, result, local = landsat_runs
    ids = run.ids
    assert 10 <= len(ids) <= 26 and list(local.metadata["ID"].astype(str)) == ids
    inside = _inside(flanders_ee, aoi)
    mask = _stack(result["NDVI_Mask"], ids)
    np.testing.assert_array_equal(mask[:, inside], read_geotiff(local.paths["NDVI_Mask"]).values[:, inside])
    assert {0, 1} <= set(np.unique(mask[:, inside]))  # clear and cloudy pixels
    assert local.model_pixels == 0 and np.isnan(_stack(result["NDVI_Pred"], ids)).all()
    np.testing.assert_allclose(run.fusion_fit.weights, local.fusion_weights, atol=1e-6)
    np.testing.assert_allclose(run.fusion_fit.se, local.standard_errors["fusion"], atol=1e-9)
    for name in ("NDVI_Obs", "NDVI_gapfree", "NDVI_gapfree_SE"):
        ours = _stack(result[name], ids)
        theirs = read_geotiff(local.paths[name]).values.astype("float64")
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=name)
        diff = np.abs(ours - theirs)[~np.isnan(ours)]
        assert diff.size > 0.3 * ours.size, name
        if name == "NDVI_Obs":
            assert diff.max() <= FLOAT32_ULP_NDVI  # both store float32
        else:
            assert (diff <= TOL).mean() >= 0.999 and diff.max() < 1e-3, name
