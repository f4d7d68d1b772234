"""Gap infilling on the local engine (docs/method.md part B): NDVI from Sentinel-1 where it is cloudy.

:func:`infill` runs the whole job at scale and writes the outputs; :func:`load_model` and
:func:`predict_from_model` reuse a saved coefficient image without retraining. The inputs come
from :func:`load_seed_inputs` (the seed's exported files), :func:`load_netcdf_inputs` (NetCDF
cubes) or :func:`load_flanders`. The method's steps (:mod:`optsar_nb.local.steps`), each a pure
function of labelled arrays and ``InfillParams``, are available here under the same names:

B.1 :func:`ndvi`  B.2 :func:`cloud_mask`, :func:`image_cloud_stats`, :func:`drop_sparse_images`
B.3 :func:`align_s1`, :func:`s1_window_mean`, :func:`aoi_mean`, :func:`covariates`
B.4 :func:`focal_median`  B.5 :func:`pair_images`  B.6 :func:`split_pairs`,
:func:`training_mask`, :func:`robust_regression`  B.7 :func:`predict`
B.8 :func:`pca_smooth`  B.9 :func:`standardize`  B.10 :func:`gap_fill`, :func:`image_mae`.
"""

from __future__ import annotations

from ..params import InfillParams
from ._infill_inputs import load_flanders, load_netcdf_inputs, load_seed_inputs
from ._pipeline import InfillRun, infill
from .model import load_model, predict_from_model
from .steps import (
    COEFFICIENT_BANDS,
    COVARIATES,
    FUSION_COVARIATES,
    SPLIT_LABELS,
    align_s1,
    aoi_mean,
    cloud_mask,
    covariate_halo,
    covariate_support,
    covariates,
    design,
    drop_sparse_images,
    image_cloud_stats,
    ndvi,
    observed_state,
    pair_images,
    predict,
    robust_regression,
    s1_window_mean,
    split_pairs,
    training_mask,
    validation_pixels,
)
from .steps_post import focal_median, gap_fill, image_mae, pca_smooth, standardize, standardize_one

__all__ = [
    "COEFFICIENT_BANDS", "COVARIATES", "FUSION_COVARIATES", "SPLIT_LABELS", "InfillParams", "InfillRun", "align_s1",
    "aoi_mean", "cloud_mask", "covariate_halo", "covariate_support", "covariates", "design", "drop_sparse_images",
    "focal_median", "gap_fill", "image_cloud_stats", "image_mae", "infill", "load_flanders", "load_model",
    "load_netcdf_inputs", "load_seed_inputs", "ndvi", "observed_state", "pair_images", "pca_smooth", "predict",
    "predict_from_model", "robust_regression", "s1_window_mean", "split_pairs", "standardize", "standardize_one",
    "training_mask", "validation_pixels",
]
