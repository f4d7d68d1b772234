"""Projections in the offline evaluator: each rule cites the Earth Engine documentation it follows,
and a graph with the bug the rules exist for (an AOI-wide reduction on a composite's 1-degree
default grid) fails here as it would silently go wrong on the server."""

from __future__ import annotations

import ee
import pytest
from ee_support.cubes import flanders_aoi

from optsar_nb.ee import collections as col
from optsar_nb.missions import S1
from optsar_nb.params import InfillParams

PARAMS = InfillParams(mission="S2", start="2017-08-01", end="2018-12-01")


@pytest.fixture(scope="module")
def setting(flanders_ee):
    ev, _ = flanders_ee
    region = col.region_of(flanders_aoi())
    s1 = ee.ImageCollection(S1.collection_id).filterDate("2017-08-01", "2017-09-01").select(["VV"])
    return ev, region, s1, col.optical_grid(region, PARAMS)


def test_a_reduction_on_a_composites_projection_is_caught(setting):
    """The Projections guide: "Image collections reduced into composites or mosaics with different
    projections will have a default WGS84 projection with a 1-degree scale"; reduceRegion's
    reference: "crs: The projection to work in. If unspecified, the projection of the image's
    first band is used." Either way, a composite's AOI mean would run on a ~111 km grid."""
    ev, region, s1, grid = setting
    composite = s1.mean()
    for bad in (composite.reduceRegion(ee.Reducer.mean(), region, crs=composite.projection()),
                composite.reduceRegion(ee.Reducer.mean(), region),
                composite.subtract(1).reduceRegion(ee.Reducer.mean(), region)):
        with pytest.raises(ValueError, match="default projection"):
            ev.evaluate(bad)
    good = ev.evaluate(composite.reduceRegion(ee.Reducer.mean(), region, crs=grid))
    assert -30 < good["VV"] < 0  # dB


def test_a_reduction_on_another_grid_is_refused(setting):
    """The evaluator computes on the cube's grid only: asking for 100 m (a coarser statistics
    scale) or another CRS would need resampling, which it refuses rather than ignores."""
    ev, region, s1, grid = setting
    image = ee.Image(s1.first())
    with pytest.raises(ValueError, match="grid other than the cube's"):
        ev.evaluate(image.reduceRegion(ee.Reducer.mean(), region, crs=grid, scale=100))
    with pytest.raises(ValueError, match="grid other than the cube's"):
        ev.evaluate(image.reduceRegion(ee.Reducer.mean(), region, crs="EPSG:4326"))
    assert ev.evaluate(image.reduceRegion(ee.Reducer.mean(), region))["VV"] < 0  # a catalogue image's own grid


def test_a_constant_has_the_default_projection_and_mixed_bands_have_none(setting):
    """ee.Image.projection: "Returns the default projection of an Image. Throws an error if the
    bands of the image don't all have the same projection." """
    ev, _, s1, grid = setting
    assert ev.evaluate(ee.Image.constant(1).projection()).kind == "default"
    assert ev.evaluate(ee.Image(s1.first()).projection()).kind == "native"
    with pytest.raises(ValueError, match="do not all have the same projection"):
        ev.evaluate(ee.Image(s1.first()).addBands(ee.Image.constant(1)).projection())


def test_a_neighbourhood_of_a_composite_needs_a_grid(setting):
    """The Projections guide: "inputs are requested in the output projection": a kernel counted
    in pixels of a composite is counted in pixels of whatever grid the output is asked in, so the
    composite must be given the optical grid first (ee.Image.setDefaultProjection: "Set a default
    projection to be applied to this image")."""
    ev, region, s1, grid = setting
    kernel = ee.Kernel.square(2, "pixels")
    with pytest.raises(ValueError, match="default projection"):
        ev.evaluate(s1.mean().reduceNeighborhood(ee.Reducer.mean(), kernel)
                    .reduceRegion(ee.Reducer.mean(), region, crs=grid))
    gridded = s1.mean().setDefaultProjection(grid).reduceNeighborhood(ee.Reducer.mean(), kernel)
    assert ev.evaluate(gridded.projection()).kind == "native"
    assert ev.evaluate(gridded.reduceRegion(ee.Reducer.mean(), region, crs=grid))["VV_mean"] < 0


def test_where_keeps_the_input_where_test_or_value_is_masked(flanders_ee):
    """ee.Image.where: "If at a given pixel, either test or value is masked, the input value is
    used. If the input is masked, nothing is done. [...] The output image retains the metadata
    and footprint of the input image." Checked against numpy on a real S1 image."""
    import numpy as np
    from ee_support.cubes import band_array

    ev, _ = flanders_ee
    vv_image = ee.Image(ee.ImageCollection(S1.collection_id).first()).select("VV")
    vv = band_array(ev.evaluate(vv_image), "VV")
    test = vv_image.lt(-15).updateMask(vv_image.lt(-10))  # masked where vv >= -10
    value = ee.Image.constant(2).updateMask(vv_image.gt(-17))  # masked where vv <= -17
    source = ee.Image.constant(1).updateMask(vv_image.gt(-20)).set("kept", 5)  # masked where vv <= -20
    out = ev.evaluate(source.where(test, value))
    got = band_array(out, "constant")
    expected = np.where(vv > -20, np.where((vv < -15) & (vv < -10) & (vv > -17), 2.0, 1.0), np.nan)
    np.testing.assert_array_equal(got, expected)
    assert out.props["kept"] == 5
    assert {1.0, 2.0} <= set(np.unique(got[np.isfinite(got)]))


def test_if_computes_the_chosen_branch_only(flanders_ee):
    """The server computes values on demand: a graph may guard an invalid value with If (an empty
    reduction's null). The condition follows ee.Algorithms.If's reference: "Numbers that are
    equal to 0 or a NaN are false. Empty strings, lists and dictionaries are false. Null is
    false. Everything else is true." """
    ev, _ = flanders_ee
    invalid = ee.Number(ee.Dictionary({}).get("missing"))  # fails whenever it is computed
    with pytest.raises(Exception):  # noqa: B017 (the error the server would give too)
        ev.evaluate(invalid.add(1))
    assert ev.evaluate(ee.Algorithms.If(0, invalid.add(1), "guarded")) == "guarded"
    for falsy in (0, float("nan"), "", [], {}, None):
        assert ev.evaluate(ee.Algorithms.If(falsy, "yes", "no")) == "no", falsy
    for truthy in (1, -0.5, "x", [0], {"a": 0}, True):
        assert ev.evaluate(ee.Algorithms.If(truthy, "yes", "no")) == "yes", truthy


# --------------------------------------------------------------------------------------------
# masks and metadata: each rule as its reference page states it, checked against numpy on a
# real S1 image (VV in dB)
def _vv(flanders_ee):
    from ee_support.cubes import band_array

    ev, _ = flanders_ee
    image = ee.Image(ee.ImageCollection(S1.collection_id).first()).select(["VV", "VH"]).set("kept", 7)
    values = ev.evaluate(image)
    return ev, image, band_array(values, "VV"), band_array(values, "VH")


def test_update_mask_only_narrows_and_keeps_the_metadata(flanders_ee):
    """ee.Image.updateMask: "Updates an image's mask at all positions where the existing mask is
    not zero. The output image retains the metadata and footprint of the input image." Its mask:
    "If this image has a single band, it is used for all bands in the input image; otherwise,
    must have the same number of bands as the input image." """
    import numpy as np
    from ee_support.cubes import band_array

    ev, image, vv, vh = _vv(flanders_ee)
    narrowed = image.updateMask(image.select("VV").lt(-15))  # masked where vv >= -15
    out = ev.evaluate(narrowed.updateMask(ee.Image.constant(1)))  # a mask of 1 unmasks nothing back
    for name, values in (("VV", vv), ("VH", vh)):
        np.testing.assert_array_equal(band_array(out, name), np.where(vv < -15, values, np.nan))
    assert out.props["kept"] == 7
    per_band = ev.evaluate(image.updateMask(image.lt(-15)))  # two bands: band by band
    np.testing.assert_array_equal(band_array(per_band, "VH"), np.where(vh < -15, vh, np.nan))


def test_unmask_fills_masked_pixels_with_the_value_and_its_mask(flanders_ee):
    """ee.Image.unmask: "Replaces mask and value of the input image with the mask and value of
    another image at all positions where the input mask is zero. The output image retains the
    metadata of the input image." value: "If not specified, defaults to constant zero image
    which is valid everywhere." """
    import numpy as np
    from ee_support.cubes import band_array

    ev, image, vv, _ = _vv(flanders_ee)
    holes = image.select("VV").updateMask(image.select("VV").lt(-15))
    value = ee.Image.constant(5).updateMask(image.select("VV").lt(-10))  # masked where vv >= -10
    out = ev.evaluate(holes.unmask(value, False))
    expected = np.where(vv < -15, vv, np.where(vv < -10, 5.0, np.nan))
    np.testing.assert_array_equal(band_array(out, "VV"), expected)
    assert out.props["kept"] == 7
    np.testing.assert_array_equal(band_array(ev.evaluate(holes.unmask()), "VV"), np.where(vv < -15, vv, 0.0))


def test_image_reduce_reduces_each_pixels_unmasked_bands(flanders_ee):
    """ee.Image.reduce: "The reducer must have a single input and will be called at each pixel
    to reduce the stack of band values." Weighted reductions guide: "By default, reducers
    applied to imagery weight the inputs according to the mask value" (a masked band weighs 0)."""
    import numpy as np
    from ee_support.cubes import band_array

    ev, image, vv, vh = _vv(flanders_ee)
    partly = image.updateMask(image.select("VV").lt(-15).rename("VV").addBands(ee.Image.constant(1).rename("VH")))
    mean = band_array(ev.evaluate(partly.reduce(ee.Reducer.mean())), "mean")
    count = band_array(ev.evaluate(partly.reduce(ee.Reducer.count())), "count")
    np.testing.assert_allclose(mean, np.where(vv < -15, (vv + vh) / 2, vh), rtol=1e-12)
    np.testing.assert_array_equal(count, np.where(vv < -15, 2, 1))


def test_add_bands_renames_a_taken_name_and_keeps_the_first_images_metadata(flanders_ee):
    """ee.Image.addBands: "The new image has the metadata and footprint from the first input
    image." overwrite: "If true, bands from `srcImg` will override bands with the same names in
    `dstImg`. Otherwise the new band will be renamed with a numerical suffix (`foo` to `foo_1`
    unless `foo_1` exists, then `foo_2` unless it exists, etc)." """
    import numpy as np
    from ee_support.cubes import band_array

    ev, image, vv, vh = _vv(flanders_ee)
    other = image.select(["VH"], ["VV"]).set("kept", 1)
    out = ev.evaluate(image.addBands(other).addBands(other))
    assert out.names == ["VV", "VH", "VV_1", "VV_2"] and out.props["kept"] == 7
    np.testing.assert_array_equal(band_array(out, "VV_2"), vh)
    replaced = ev.evaluate(image.addBands(other, None, True))
    assert replaced.names == ["VV", "VH"]
    np.testing.assert_array_equal(band_array(replaced, "VV"), vh)


def test_band_math_keeps_no_properties_unless_copied(flanders_ee):
    """Properties after band math. Documented for one operation, ee.Image.normalizedDifference:
    "the input image properties are not retained in the output image"; the reference pages of
    add, subtract, multiply, ... say nothing. The evaluator drops them after every band
    operation, the conservative reading: a graph that needs a property after band math (the
    system:index that names toBands' bands, a time) must copy or set it, and does
    (``copyProperties``), whatever the server keeps."""
    ev, image, _, _ = _vv(flanders_ee)
    assert ev.evaluate(image).props["kept"] == 7
    assert "kept" not in ev.evaluate(image.subtract(1)).props
    assert "kept" not in ev.evaluate(image.select("VV").multiply(image.select("VH"))).props
    assert ev.evaluate(image.subtract(1).copyProperties(image, ["kept"])).props["kept"] == 7


def test_gap_fill_keeps_every_clear_observation_where_no_estimate_exists(flanders_ee):
    """B.10 on the graph: the observation wherever it is clear, also where the estimate is
    masked (pixels without a model); the estimate where only it exists; nothing where neither
    does. (Written with ``where`` this lost the observations: "If at a given pixel, either test
    or value is masked, the input value is used", and the input was the prediction.)"""
    import numpy as np
    from ee_support.cubes import band_array

    from optsar_nb.ee import postprocess

    ev, image, vv, _ = _vv(flanders_ee)
    aoi = flanders_aoi()
    obs = ee.Image.constant(0.5).updateMask(image.select("VV").lt(-14)).rename("NDVI")
    estimate = ee.Image.constant(0.2).updateMask(image.select("VV").gt(-16)).rename("NDVI")
    inside = ev.evaluate(ee.Image.constant(1).clip(col.region_of(aoi))).bands["constant"].mask
    for method in ("fusion", "paper"):
        params = InfillParams(mission="S2", start="2017-08-01", end="2018-12-01", method=method,
                              focal_median_radius_px=0)
        got = band_array(ev.evaluate(postprocess.gap_fill(obs, estimate, aoi, params)), "NDVI_gapfree")
        expected = np.where(vv < -14, 0.5, np.where(vv > -16, 0.2, np.nan))
        np.testing.assert_allclose(got[inside], expected[inside], rtol=1e-7)
        assert np.isnan(got[~inside]).all()
        assert ((vv < -14) & ~(vv > -16))[inside].any()  # observations without an estimate exist
