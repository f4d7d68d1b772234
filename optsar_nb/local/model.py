"""A saved coefficient image (``NDVI_Model``) reused without retraining (docs/method.md B.3-B.7)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from ..errors import StackMismatch
from ..params import InfillParams
from . import steps
from .stack import read_geotiff


def load_model(path: str | Path) -> xr.DataArray:
    """A saved coefficient image (``NDVI_Model...tif``) as a lazy (coef, y, x) float64 DataArray."""
    raw = read_geotiff(path)
    names = [str(b) for b in raw.band.values]
    if names != list(steps.COEFFICIENT_BANDS):
        raise StackMismatch(f"{path} is not a coefficient image: its bands are {names}, "
                            f"expected {list(steps.COEFFICIENT_BANDS)}")
    return raw.rename(band="coef")

def predict_from_model(model: xr.DataArray | str | Path, vv: xr.DataArray, vh: xr.DataArray, times,
                       params: InfillParams, *, inside: xr.DataArray | None = None) -> xr.DataArray:
    """B.3-B.7 without retraining: raw NDVI predictions for the optical ``times`` (lazy).

    ``vv``/``vh``: S1 stacks in dB (aligned to the model's grid here); the AOI means are taken
    over ``inside`` (default: the whole grid). PCA smoothing and standardization (B.8-B.9) are
    not applied: they need the observations of a run.
    """
    coef = load_model(model) if isinstance(model, (str, Path)) else model
    support = None if inside is None else inside.copy(data=steps.covariate_support(inside.values, params))
    wins = []
    for band in (vv, vh):
        band = steps.align_s1(band.sortby("time"), coef)
        band = band.where(support) if support is not None else band
        win, _ = steps.s1_window_mean(band, times, params)
        wins.append(win)
    means = [steps.aoi_mean(w if inside is None else w.where(inside)) for w in wins]
    covs = steps.covariates(wins[0], wins[1], means[0], means[1], params, inside=inside)
    return steps.predict(coef, covs)
