"""Gap infilling on Earth Engine (docs/method.md parts B and C), step by step.

Step names follow :mod:`optsar_nb.local.infill`: ``observations`` (B.1-B.2), ``s1_window_mean``
and ``covariates`` (B.3-B.4), ``pair_images`` and ``check_pairs`` (B.5), ``split_pairs``,
``training_collection`` and ``robust_regression`` (B.6), ``predict`` (B.7), then in
:mod:`optsar_nb.ee.postprocess` ``pca_smooth`` (B.8), ``standardize`` (B.9), ``gap_fill`` and
``image_mae`` (B.10), the fusion of part C in :mod:`optsar_nb.ee.fusion`; :func:`build_infill`
wires them into an :class:`InfillRun`.

Building makes two requests to the server. :func:`check_pairs` needs the number of
optical-SAR pairs to decide whether to go on (B.5), and the same request returns the pairs'
ids, times and cloud cover. With those, the split (B.6) is drawn on the client by the engines'
shared :func:`optsar_nb.method.split_pairs` (same seed, same pairs, same labels and
donor on both engines), and the per-image steps are written per pair id. The second request
fetches the fusion's leave-out rows of a sample of pixels, from which the client fits its
weights and standard errors as the local engine does (:func:`optsar_nb.ee.fusion.fetch_fit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ee
import pandas as pd

from .. import method
from ..method import COEFFICIENT_BANDS, COVARIATES, covariate_halo
from ..missions import CLEAR, CLOUDY, get_mission
from ..params import InfillParams
from . import collections as col
from . import fusion
from .postprocess import PRED, _focal_median, gap_fill, image_mae, pca_smooth, standardize

S1_COUNT = "S1_COUNT"
PAIR_COLUMNS = ("ID", "CollectionTime", col.CLOUD_PERCENTAGE, col.PIXEL_COUNT, S1_COUNT)
Fetch = Any  # callable(ee.ComputedObject) -> its value


# ---------------------------------------------------------------------------------------------
# B.1-B.2
def observations(aoi: Any, params: InfillParams) -> ee.ImageCollection:
    """Optical images as bands ``NDVI`` and ``state`` (clipped to the AOI), with AOI cloud stats.

    A clear pixel without NDVI (a band masked) is missing, as in the local engine's
    ``observed_state``. Images with at most ``min_valid_pixels`` valid AOI pixels are dropped.
    """
    mission = get_mission(params.mission)
    region = col.region_of(aoi)
    collection = col.optical_collection(region, mission=mission, start=params.start, end=params.end)
    if params.mask_rule_name == "cloudscore":
        collection = col.with_cloudscore(collection, mission=mission)

    def one(image):
        image = ee.Image(image)
        ndvi = col.ndvi(image, mission=mission).clip(region)
        state = col.cloud_state(image, params.mask_rule_name, threshold=params.cloudscore_threshold).clip(region)
        state = state.updateMask(state.eq(CLOUDY).Or(ndvi.mask()))
        state = col.aoi_cloud_stats(state, region, projection=image.select(mission.red).projection())
        return ndvi.addBands(state).copyProperties(state).copyProperties(image, ["system:time_start", "system:index"])

    return collection.map(one).filter(ee.Filter.gt(col.PIXEL_COUNT, params.min_valid_pixels))


# ---------------------------------------------------------------------------------------------
# B.3-B.4
def s1_window_mean(optical: ee.ImageCollection, aoi: Any, params: InfillParams,
                   grid: ee.Projection) -> ee.ImageCollection:
    """Per optical image, ``VV``/``VH`` = mean of the S1 images in [t - w, t + w) and ``S1_COUNT``.

    A composite has Earth Engine's default projection (WGS84, 1 degree); the window mean is given
    the optical ``grid``, so that the neighbourhoods of B.3-B.4 count its pixels. S1 is read on
    the AOI and the pixels around it that the AOI's covariates read (:func:`covariate_support`)."""
    region = col.region_of(aoi)
    pad = pd.Timedelta(days=params.s1_window_days)
    s1 = col.s1_collection(region, start=(pd.Timestamp(params.start) - pad).date(),
                           end=(pd.Timestamp(params.end) + pad).date(), min_db=params.s1_min_db,
                           max_db=params.s1_max_db, support=covariate_support(region, params, grid))
    window_ms = params.s1_window_days * col.MS_PER_DAY

    def one(image):
        image = ee.Image(image)
        t = ee.Number(image.get("system:time_start"))
        window = s1.filter(ee.Filter.rangeContains("system:time_start", t.subtract(window_ms), t.add(window_ms - 1)))
        mean = window.mean().select(["VV", "VH"]).setDefaultProjection(grid)
        return image.addBands(mean).set(S1_COUNT, window.size())

    return optical.map(one)


def covariate_support(aoi: Any, params: InfillParams, grid: ee.Projection) -> ee.Image:
    """1 on the AOI and on the pixels within ``covariate_halo`` of it (a square on the optical
    ``grid``), 0 elsewhere: the S1 pixels the AOI's covariates read (B.3-B.4). The AOI's edge
    pixels thus see their real neighbours, as inside it; the AOI means stay over the AOI."""
    inside = ee.Image.constant(1).clip(col.region_of(aoi)).unmask(0, False).setDefaultProjection(grid)
    return inside.reduceNeighborhood(ee.Reducer.max(), ee.Kernel.square(covariate_halo(params), "pixels"))


def covariates(image: ee.Image, aoi: Any, params: InfillParams, grid: ee.Projection) -> ee.Image:
    """B.3 + B.4 for one image with ``VV``/``VH`` window means: the nine regression inputs.

    Bands ``COEFFICIENT_BANDS`` (a constant 1, then the eight covariates in order), all masked
    where the pixel's window mean is, and clipped to the AOI (the window means reach beyond it,
    :func:`covariate_support`). AOI means are spatially constant, so the focal median
    leaves them unchanged and is not applied to them.
    """
    region = col.region_of(aoi)
    square = ee.Kernel.square(params.neighbourhood_radius_px, "pixels")
    out = ee.Image.constant(1).rename("constant")
    parts = {}
    for band in ("VV", "VH"):
        pixel = image.select(band)
        mean = ee.Number(pixel.reduceRegion(ee.Reducer.mean(), region, crs=grid,
                                            maxPixels=col.MAX_PIXELS).get(band))
        nmean = pixel.reduceNeighborhood(ee.Reducer.mean(), square).rename(band)
        parts[f"{band}_mean"] = ee.Image.constant(mean).updateMask(pixel.mask())
        parts[f"{band}_diff"] = _focal_median(pixel.subtract(mean), params)
        parts[f"{band}_Nmean"] = _focal_median(nmean, params)
        parts[f"{band}_Ndiff"] = _focal_median(pixel.subtract(nmean), params)
    for name in COVARIATES:
        out = out.addBands(parts[name].toFloat().rename(name))
    return out.updateMask(image.select("VV").mask()).updateMask(image.select("VH").mask()).clip(region)

# ---------------------------------------------------------------------------------------------
# B.5-B.6
def pair_images(windows: ee.ImageCollection) -> ee.ImageCollection:
    """B.5: optical images with at least one S1 image in their window."""
    return windows.filter(ee.Filter.gt(S1_COUNT, 0))


def pairs_request(windows: ee.ImageCollection) -> ee.Dictionary:
    """Everything B.5 and B.6 need in one request: the pair rows and the dates without S1."""
    lonely = windows.filter(ee.Filter.eq(S1_COUNT, 0)).aggregate_array("system:time_start")
    rows = col.metadata_request(pair_images(windows), [col.CLOUD_PERCENTAGE, col.PIXEL_COUNT, S1_COUNT])
    return ee.Dictionary({"pairs": rows, "lonely": lonely})


def check_pairs(windows: ee.ImageCollection, params: InfillParams, *, fetch: Fetch | None = None) -> pd.DataFrame:
    """B.5's decision: the pair table, or NotEnoughPairs naming the dates to widen (one round trip)."""
    from .tasks import fetch_info

    info = fetch_info(pairs_request(windows), fetch=fetch)
    pairs = pd.DataFrame(info["pairs"], columns=list(PAIR_COLUMNS))
    lonely = pd.DataFrame({"ID": "", "CollectionTime": info["lonely"]})
    table = pd.concat([pairs, lonely], ignore_index=True).sort_values("CollectionTime", kind="stable")
    counts = table[S1_COUNT].fillna(0).to_numpy()
    method.pair_images(table.reset_index(drop=True), counts, params)  # raises NotEnoughPairs
    return pairs.sort_values("CollectionTime", kind="stable").reset_index(drop=True)


def split_pairs(table: pd.DataFrame, params: InfillParams) -> tuple[pd.DataFrame, str]:
    """B.6 split, drawn on the client exactly as the local engine draws it; returns (table, donor id)."""
    table, donor = method.split_pairs(table, params)
    return table, str(table["ID"].iloc[donor])


def with_split(pairs: ee.ImageCollection, table: pd.DataFrame) -> ee.ImageCollection:
    """Attach ``Random`` and ``SplitLabel`` (client-drawn) to each pair, by id."""
    random = ee.Dictionary(dict(zip(table["ID"], table["Random"].astype(float))))
    label = ee.Dictionary(dict(zip(table["ID"], table["SplitLabel"])))

    def one(image):
        image = ee.Image(image)
        key = image.get("system:index")
        return image.set({"Random": random.get(key), "SplitLabel": label.get(key)})

    return pairs.map(one)


def donor_cloudy(pairs: ee.ImageCollection, donor_id: str) -> ee.Image:
    """1 where the donor pair is cloudy, 0 elsewhere (its missing pixels are not clouds)."""
    donor = ee.Image(pairs.filter(ee.Filter.eq("system:index", donor_id)).first())
    return donor.select(col.STATE_BAND).eq(CLOUDY).unmask(0, False)


def _training_mask(state: ee.Image, label: str, donor: ee.Image) -> ee.Image:
    """1 where a pair's pixel is a training sample (clear, on a training or validation pair, and not
    under the donor's clouds on a validation pair), as the local engine's ``training_mask``."""
    clear = state.eq(CLEAR).unmask(0, False)
    if label == "train":
        return clear
    if label == "validation":
        return clear.And(donor.Not())
    return clear.multiply(0)


def training_collection(design: ee.ImageCollection, donor: ee.Image) -> ee.ImageCollection:
    """Clear samples of training and validation pairs; validation pairs lose the donor's clouds.

    ``design`` images carry ``COEFFICIENT_BANDS``, ``NDVI`` and ``state``.
    """
    def samples(image, artificial):
        image = ee.Image(image)
        keep = image.select(col.STATE_BAND).eq(CLEAR)
        if artificial:
            keep = keep.And(donor.Not())
        return image.select([*COEFFICIENT_BANDS, col.NDVI_BAND]).updateMask(keep)

    train = design.filter(ee.Filter.eq("SplitLabel", "train")).map(lambda i: samples(i, False))
    validation = design.filter(ee.Filter.eq("SplitLabel", "validation")).map(lambda i: samples(i, True))
    return train.merge(validation)


def robust_regression(training: ee.ImageCollection, params: InfillParams) -> ee.Image:
    """B.6: pixelwise robust regression of NDVI on the nine inputs; bands ``COEFFICIENT_BANDS``.

    Masked where a pixel has fewer than ``params.min_train_samples`` training samples.

    ``beta`` is the Talwar tuning constant of the parameters (not left to the server's default).
    """
    reducer = ee.Reducer.robustLinearRegression(len(COEFFICIENT_BANDS), 1, params.talwar_tuning)
    fit = training.reduce(reducer)
    coefficients = fit.select("coefficients").arrayProject([0]).arrayFlatten([list(COEFFICIENT_BANDS)])
    # guard rail: no model where a pixel has fewer than params.min_train_samples samples
    samples = training.select(col.NDVI_BAND).count()
    return coefficients.updateMask(samples.gte(params.min_train_samples))


# ---------------------------------------------------------------------------------------------
# B.7
def predict(design: ee.Image, coefficients: ee.Image) -> ee.Image:
    """B.7: one band ``NDVI_Pred`` = sum of inputs x coefficients, masked if any is masked."""
    terms = design.select(list(COEFFICIENT_BANDS)).multiply(coefficients)
    complete = terms.mask().reduce(ee.Reducer.min())
    return terms.reduce(ee.Reducer.sum()).updateMask(complete).toFloat().rename(PRED)


# ---------------------------------------------------------------------------------------------
# the whole job
@dataclass(frozen=True)
class InfillRun:
    """A built infilling: server-side images (one band per pair id) and the client-side split.

    ``table`` holds the pairs (ID, CollectionTime, CLOUD_PERCENTAGE_AOI, PIXEL_COUNT_AOI,
    S1_COUNT, Random, SplitLabel); ``mae`` is a server-side list in the table's order.
    """

    params: InfillParams
    aoi: Any
    table: pd.DataFrame
    donor_id: str
    observations: ee.ImageCollection  # B.2 NDVI + state, before pairing (the inputs)
    s1: ee.ImageCollection  # S1 images used (the inputs)
    coefficients: ee.Image
    outputs: dict  # NDVI_gapfree, NDVI_Mask, NDVI_Pred, NDVI_Obs (and NDVI_gapfree_SE for the fusion) -> ee.Image
    mae: ee.List
    fusion_fit: fusion.Fit  # the fusion's weights and standard errors, fitted on the client

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self.table["ID"]]

    def metadata_request(self) -> ee.List:
        return self.mae

    def metadata(self, *, fetch: Fetch | None = None) -> pd.DataFrame:
        """``Output_Metadata``: ID, Cloud_cover, CollectionTime, Random, MAE, SplitLabel (one round trip)."""
        from .tasks import fetch_info

        mae = fetch_info(self.mae, fetch=fetch)
        t = self.table
        return pd.DataFrame({"ID": t["ID"], "Cloud_cover": t[col.CLOUD_PERCENTAGE],
                             "CollectionTime": t["CollectionTime"], "Random": t["Random"], "MAE": mae,
                             "SplitLabel": t["SplitLabel"]})


def build_infill(aoi: Any, params: InfillParams, *, fetch: Fetch | None = None,
                 fusion_sample_pixels: int = fusion.SAMPLE_PIXELS) -> InfillRun:
    """Build parts B and C for an AOI and parameters (two server round trips: the pair check
    and the fusion's sample of leave-out rows).

    NDVI_gapfree is the fused estimate under clouds (``method="fusion"``, with NDVI_gapfree_SE),
    or the paper's fill (``method="paper"``: the calibrated S1 prediction, the fused estimate
    where a pixel has no model, then the focal median). The fusion's weights are fitted on the
    leave-out rows of ``fusion_sample_pixels`` pixels (all of them in smaller AOIs).
    """
    region = col.region_of(aoi)
    optical = observations(region, params)
    grid = col.optical_grid(region, params)
    windows = s1_window_mean(optical, region, params, grid)
    table = check_pairs(windows, params, fetch=fetch)
    table, donor_id = split_pairs(table, params)
    ids = [str(i) for i in table["ID"]]
    pairs = with_split(pair_images(windows), table).sort("system:time_start")
    design = pairs.map(lambda image: ee.Image(image).addBands(covariates(ee.Image(image), region, params, grid)))
    donor = donor_cloudy(pairs, donor_id)
    coefficients = robust_regression(training_collection(design, donor), params)

    def per_pair(fn):
        # toBands names bands after system:index; computed images lose it unless copied
        return design.map(lambda image: ee.Image(fn(ee.Image(image))).copyProperties(image, ["system:index"])
                          ).toBands().rename(ids)

    state = per_pair(lambda image: image.select(col.STATE_BAND))
    obs = per_pair(lambda image: image.select(col.NDVI_BAND).updateMask(image.select(col.STATE_BAND).eq(CLEAR)))
    predicted = pca_smooth(per_pair(lambda image: predict(image, coefficients)), ids, region, params, grid)

    # part C: the fusion's anchors, its weights and standard errors (the second round trip)
    days = ((table["CollectionTime"] - col.millis(params.start)) / col.MS_PER_DAY).tolist()
    nmean = tuple(per_pair(lambda image, b=b: image.select(b)) for b in ("VV_Nmean", "VH_Nmean"))
    labels = list(table["SplitLabel"])
    training = col.bands_by_id([_training_mask(state.select([i]), label, donor) for i, label in zip(ids, labels)],
                               ids)
    train = fusion.Anchors.of(ids, days, obs, training, nmean)
    learned = [i for i, label in enumerate(labels) if label in ("train", "validation")]
    fitted = fusion.fetch_fit(train, learned, region, grid, float(table[col.PIXEL_COUNT].max()), params,
                              sample_pixels=fusion_sample_pixels, fetch=fetch)
    alpha = fusion.reliability(train, learned, fitted.weights, params.fusion_prior_samples)
    views = fusion.Anchors.of(ids, days, obs, obs.mask(), nmean)

    calibrated, filled, errors, mae = [], [], [], []
    for i, (pair_id, label) in enumerate(zip(ids, labels)):
        st = state.select([pair_id])
        clear = st.eq(CLEAR)
        o, p = obs.select([pair_id]), predicted.select([pair_id])
        cal = standardize(p, o, _training_mask(st, label, donor) if label == "validation" else clear, clear,
                          st.gte(CLOUDY), region, params, grid)
        calibrated.append(cal)
        fused, se = fusion.fused(views, i, fitted.weights, alpha, fitted.se)
        filled.append(gap_fill(o, cal.unmask(fused, False) if params.method == "paper" else fused, region, params))
        errors.append(ee.Image.constant(0).updateMask(o.mask()).unmask(se, False).clip(region).toFloat())
        mae.append(image_mae(o, cal, clear, region, grid))
    from ..missions import MISSING

    outputs = {
        "NDVI_gapfree": col.bands_by_id(filled, ids),
        "NDVI_Mask": state.unmask(MISSING, False).clip(region),
        "NDVI_Pred": col.bands_by_id(calibrated, ids),
        "NDVI_Obs": obs,
    }
    if params.method == "fusion":
        outputs["NDVI_gapfree_SE"] = col.bands_by_id(errors, ids)
    s1 = col.s1_collection(region, start=params.start, end=params.end, min_db=params.s1_min_db,
                           max_db=params.s1_max_db, support=covariate_support(region, params, grid))
    return InfillRun(params=params, aoi=aoi, table=table, donor_id=donor_id, observations=optical, s1=s1,
                     coefficients=coefficients, outputs=outputs, mae=ee.List(mae), fusion_fit=fitted)
