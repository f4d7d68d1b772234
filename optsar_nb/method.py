"""What both engines share of the method (docs/method.md part B), engine-neutral: the covariates'
names, the pairing rule (B.5), the train/validation/test split and the donor of artificial
clouds (B.6), the number of PCA components (B.8). Plain numpy and pandas on the client: the Earth
Engine engine draws its split here too, so both engines split a given AOI identically.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import NotEnoughPairs
from .params import InfillParams

# docs/method.md B.6: the regressors, in the order of the coefficient image's bands
COVARIATES = ("VV_mean", "VH_mean", "VV_diff", "VH_diff", "VV_Nmean", "VH_Nmean", "VV_Ndiff", "VH_Ndiff")
COEFFICIENT_BANDS = ("constant", *COVARIATES)
SPLIT_LABELS = ("train", "validation", "test")
# part C: the fusion's S1 covariates
FUSION_COVARIATES = ("VV_Nmean", "VH_Nmean")


def pair_images(table: pd.DataFrame, s1_count: np.ndarray, params: InfillParams) -> np.ndarray:
    """B.5: indices of the optical images with at least one S1 image in their window.

    Raises NotEnoughPairs (naming the dates without S1 and what to widen) when fewer than
    ``min_pairs`` remain.
    """
    keep = np.flatnonzero(np.asarray(s1_count) > 0)
    if keep.size < params.min_pairs:
        times = pd.to_datetime(table["CollectionTime"].to_numpy(), unit="ms")
        lonely = [t.strftime("%Y-%m-%d") for t, n in zip(times, s1_count) if n == 0]
        shown = ", ".join(lonely[:10]) + (" ..." if len(lonely) > 10 else "")
        raise NotEnoughPairs(
            f"only {keep.size} of {len(table)} optical images have a Sentinel-1 image within "
            f"+-{params.s1_window_days} days, fewer than min_pairs={params.min_pairs}. Optical dates "
            f"without S1: {shown or 'none'}. Widen s1_window_days, extend start/end "
            f"({params.start} to {params.end}), or supply VV/VH stacks covering those dates."
        )
    return keep


def split_pairs(table: pd.DataFrame, params: InfillParams) -> tuple[pd.DataFrame, int]:
    """B.6: add ``Random`` and ``SplitLabel`` (train / validation / test) and choose the donor.

    ``Random`` is uniform [0, 1) from ``numpy.random.default_rng(params.seed)``, one draw per
    pair in time order. Train when ``Random < train_fraction`` (or, with ``random_split=False``,
    for the first ``train_fraction`` of the pairs in time); validation = training pairs with
    ``Random < validation_fraction``. The donor is a pair whose cloud cover lies in
    ``artificial_cloud_range`` (drawn with the same generator); when none does, the pair
    closest to that range. Returns the table and the donor's row position.
    """
    table = table.sort_values("CollectionTime").reset_index(drop=True)
    rng = np.random.default_rng(params.seed)
    rand = rng.random(len(table))
    if params.random_split:
        train = rand < params.train_fraction
    else:
        train = np.arange(len(table)) < int(np.floor(params.train_fraction * len(table)))
    label = np.where(train, "train", "test").astype(object)
    label[train & (rand < params.validation_fraction)] = "validation"
    cloud = table["CLOUD_PERCENTAGE_AOI"].to_numpy() / 100.0
    low, high = params.artificial_cloud_range
    candidates = np.flatnonzero((cloud >= low) & (cloud <= high))
    if candidates.size:
        donor = int(rng.choice(candidates))
    else:
        distance = np.where(cloud < low, low - cloud, cloud - high)
        donor = int(np.nanargmin(distance))
    return table.assign(Random=rand, SplitLabel=label), donor


def pca_components(n_images: int, params: InfillParams) -> int:
    """B.8: number of components kept, floor(pca_fraction x n_images)."""
    return int(np.floor(params.pca_fraction * n_images + 1e-9))


def covariate_halo(params: InfillParams) -> int:
    """B.3-B.4: how far (pixels, square) a pixel's covariates read the S1 window means: the
    neighbourhood radius plus the focal median's. The covariates of the AOI's pixels read the
    S1 values within this distance of the AOI, inside it or not (docs/method.md B.3)."""
    return int(params.neighbourhood_radius_px + np.ceil(params.focal_median_radius_px))
