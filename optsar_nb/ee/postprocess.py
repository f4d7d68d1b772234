"""The post-processing of the gap infilling on Earth Engine (docs/method.md B.8-B.10), as graphs.

B.8 :func:`pca_smooth`, B.9 :func:`standardize`, B.10 :func:`gap_fill` and :func:`image_mae`,
named as in :mod:`optsar_nb.local.steps`; :func:`optsar_nb.ee.infill.build_infill` applies them
to the prediction of each optical-SAR pair.
"""

from __future__ import annotations

from typing import Any

import ee

from .. import method
from ..params import InfillParams
from . import collections as col

OBS, PRED = "NDVI_Obs", "NDVI_Pred"


def _focal_median(image: ee.Image, params: InfillParams) -> ee.Image:
    if params.focal_median_radius_px <= 0:
        return image
    # focal operations fill masked centres from their neighbours; the method keeps them masked
    return image.focalMedian(params.focal_median_radius_px, "circle", "pixels").updateMask(image.mask())


def pca_smooth(predictions: ee.Image, ids: list[str], aoi: Any, params: InfillParams,
               grid: ee.Projection) -> ee.Image:
    """B.8 on a band-per-pair prediction image (bands ``ids``); returns the same bands smoothed.

    Pixels with the whole series valid enter the band means and covariance (AOI-wide) and are
    reconstructed from the leading floor(pca_fraction x n) components; the others keep their
    prediction, as in the local engine.
    """
    k = method.pca_components(len(ids), params)
    if k < 1 or k >= len(ids):
        return predictions
    region = col.region_of(aoi)
    complete = predictions.mask().reduce(ee.Reducer.min())
    series = predictions.updateMask(complete)
    means = series.reduceRegion(ee.Reducer.mean(), region, crs=grid,
                                maxPixels=col.MAX_PIXELS)
    mean_image = ee.Image.constant(ee.Dictionary(means).values(ids)).rename(ids)
    centred = series.subtract(mean_image).toArray()
    covariance = ee.Array(centred.reduceRegion(ee.Reducer.centeredCovariance(), region,
                                               crs=grid,
                                               maxPixels=col.MAX_PIXELS).get("array"))
    leading = covariance.eigen().slice(1, 1).slice(0, 0, k)  # k eigenvectors as rows (T long)
    projector = leading.transpose().matrixMultiply(leading)  # T x T
    smoothed = ee.Image(projector).matrixMultiply(centred.toArray(1)).arrayProject([0]).arrayFlatten([ids])
    return smoothed.add(mean_image).unmask(predictions, False).updateMask(predictions.mask())


def standardize(pred: ee.Image, obs: ee.Image, used: ee.Image, clear: ee.Image, valid: ee.Image, aoi: Any,
                params: InfillParams, grid: ee.Projection) -> ee.Image:
    """B.9 for one image: map ``pred`` onto ``obs``'s distribution over ``used`` pixels.

    Applied when the image's cloud cover (1 - clear / valid pixels) is below
    ``standardize_max_cloud``; ``used`` is ``clear`` less a validation pair's artificial clouds.
    A zero prediction range falls back to a ratio of 1 (a pure shift), as in the local engine.
    """
    region = col.region_of(aoi)
    (lo_a, lo_b), (up_a, up_b) = params.standardize_lower, params.standardize_upper
    reducer = (
        ee.Reducer.mean()
        .combine(ee.Reducer.intervalMean(lo_a * 100, lo_b * 100), "lower_", True)
        .combine(ee.Reducer.intervalMean(up_a * 100, up_b * 100), "upper_", True)
        .combine(ee.Reducer.count(), "", True)
    )
    both = obs.rename("obs").addBands(pred.rename("pred")).updateMask(used)
    both = both.updateMask(both.select("obs").mask().And(both.select("pred").mask()))
    stats = ee.Dictionary(both.reduceRegion(reducer, region, crs=grid, maxPixels=col.MAX_PIXELS))
    counts = clear.rename("n").addBands(valid.rename("v")).reduceRegion(
        ee.Reducer.sum().unweighted(), region, crs=grid, maxPixels=col.MAX_PIXELS)

    n_ok = ee.Number(stats.get("obs_count"))

    def value(key):
        # reduceRegion gives null for an empty sample; If keeps the graph valid then
        return ee.Image.constant(ee.Number(ee.Algorithms.If(n_ok.gt(0), stats.get(key), 0)))

    m_o, m_p = value("obs_mean"), value("pred_mean")

    def ratio(kind):
        num, den = value(f"obs_{kind}_mean").subtract(m_o), value(f"pred_{kind}_mean").subtract(m_p)
        return num.divide(den).where(den.eq(0), 1)

    dev = pred.subtract(m_p)
    scaled = m_o.add(dev.multiply(ratio("upper")).where(dev.lt(0), dev.multiply(ratio("lower"))))
    n_used = ee.Number(ee.Dictionary(counts).get("n"))
    n_valid = ee.Number(ee.Dictionary(counts).get("v")).max(1)
    cloud = ee.Number(1).subtract(n_used.divide(n_valid))
    apply = cloud.lt(params.standardize_max_cloud).And(n_ok.gt(0))
    return pred.where(ee.Image.constant(apply), scaled.updateMask(pred.mask())).toFloat().rename(PRED)


def gap_fill(obs: ee.Image, estimate: ee.Image, aoi: Any, params: InfillParams) -> ee.Image:
    """B.10 and part C: the observation where clear, the estimate elsewhere (the paper's method
    then takes the focal median), never outside [-1, 1]."""
    filled = obs.unmask(estimate, False).clip(col.region_of(aoi))
    if params.method == "paper":
        filled = _focal_median(filled, params)
    return filled.max(-1).min(1).toFloat().rename("NDVI_gapfree")


def image_mae(obs: ee.Image, pred: ee.Image, clear: ee.Image, aoi: Any, grid: ee.Projection) -> ee.Number:
    """B.10: mean |obs - pred| over clear pixels, -1 when there is none."""
    err = obs.subtract(pred).abs().updateMask(clear).rename("e")
    stats = ee.Dictionary(err.reduceRegion(ee.Reducer.sum().unweighted().combine(ee.Reducer.count(), "", True),
                                           col.region_of(aoi), crs=grid, maxPixels=col.MAX_PIXELS))
    n = ee.Number(stats.get("e_count"))
    return ee.Number(ee.Algorithms.If(n.gt(0), ee.Number(stats.get("e_sum")).divide(n), -1))
