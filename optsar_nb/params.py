"""Parameters of the method: every constant of docs/method.md lives here, once, with its source.

Both engines, the command line, the widgets and the papermill parameter cells read them
from these frozen dataclasses. ``to_dict``/``from_dict`` convert to and from plain
JSON-able dicts (dates as ISO strings), which is what papermill passes to notebooks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidParameter
from .missions import MASK_RULES, get_mission

DateLike = str | dt.date | dt.datetime

MASK_CHOICES = ("qa", "cloudscore", *MASK_RULES)
LANDSAT_MASKS = ("qa_pixel", "pixel_qa")
METHODS = ("fusion", "paper")  # how NDVI_gapfree fills cloudy pixels (docs/method.md part C)
N_COEFFICIENTS = 9  # B.6: constant + 8 covariates
# Part C: accuracy is reported per bin of days to the nearest clear training observation: <= 10,
# 10-20, 20-40, > 40 (two-sided) and one-sided; the fusion's weights follow the same bins
GAP_BIN_EDGES_DAYS = (10.0, 20.0, 40.0)


def _to_date(value: DateLike, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    try:
        return dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text).date()
    except ValueError:
        raise InvalidParameter(
            f"{name}={value!r} is not a date: write it as YYYY-MM-DD, e.g. '2019-01-01'"
        ) from None


def _typed(name: str, value: Any, kind: str) -> Any:
    """``value`` as the field's type ``kind`` (its annotation), or InvalidParameter naming the field.

    Whole numbers are accepted for floats, and floats with a whole value for integers (JSON and
    papermill give 10.0 for 10); booleans are never numbers here.
    """
    if kind.endswith(" | None"):
        return None if value is None else _typed(name, value, kind[: -len(" | None")])
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if kind == "int":
        if numeric and float(value).is_integer():
            return int(value)
        raise InvalidParameter(f"{name}={value!r} must be a whole number, e.g. {name}=10")
    if kind == "float":
        if numeric and math.isfinite(float(value)):
            return float(value)
        raise InvalidParameter(f"{name}={value!r} must be a finite number")
    if kind == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise InvalidParameter(f"{name}={value!r} must be True or False")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise InvalidParameter(f"{name}={value!r} must be text, e.g. {name}=\"...\"")
    if kind == "tuple[float, float]":
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return tuple(_typed(name, v, "float") for v in value)
        raise InvalidParameter(f"{name}={value!r} must be two numbers (low, high)")
    return value  # dates: checked by _to_date


def _check_mask(mask: str, mission) -> None:
    if mask not in MASK_CHOICES:
        raise InvalidParameter(f"mask={mask!r} is unknown: choose one of {MASK_CHOICES}")
    if mask in LANDSAT_MASKS and not mission.name.startswith("L"):
        raise InvalidParameter(f"mask={mask!r} is a Landsat quality band but mission={mission.name!r}: give "
                               "mission='L8' or 'L9' (it sets the revisit time and the file names too)")
    if mask == "scl" and mission.name != "S2":
        raise InvalidParameter(f"mask='scl' is Sentinel-2's scene classification but mission={mission.name!r}: "
                               "give mission='S2', or mask='qa' for the mission's own quality band")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise InvalidParameter(f"{name}={value!r} is out of range: choose a value in [{low}, {high}]")


@dataclass(frozen=True)
class _Params:
    """Shared behaviour: validation on construction, dict round trip."""

    mission: str = "S2"
    start: DateLike = "2019-01-01"
    end: DateLike = "2020-01-01"  # exclusive, as Earth Engine's filterDate

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _typed(f.name, getattr(self, f.name), str(f.type)))
        mission = get_mission(self.mission)
        object.__setattr__(self, "mission", mission.name)
        start, end = _to_date(self.start, "start"), _to_date(self.end, "end")
        if end <= start:
            raise InvalidParameter(
                f"end date {end} is not after start date {start}: swap them or extend the period"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @property
    def suffix(self) -> str:
        """File name suffix ``_<Mission>_<Start>_<End>`` of docs/method.md."""
        return f"_{self.mission}_{self.start.isoformat()}_{self.end.isoformat()}"

    @property
    def period_days(self) -> int:
        return (self.end - self.start).days

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.isoformat() if isinstance(v, dt.date) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise InvalidParameter(
                f"unknown {cls.__name__} field(s) {sorted(unknown)}: valid fields are {sorted(names)}"
            )
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**kwargs)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class GapParams(_Params):
    """Gap characterization (docs/method.md part A).

    revisit_days: initial condition ``day_count = start - revisit_days`` (A.4); ``None`` takes
    the mission's revisit time from the catalogue (5 days for S2).
    mask: "qa" uses the mission's own quality band (SCL / QA_PIXEL); "cloudscore" uses Cloud
    Score+ (S2 only) with ``cloudscore_threshold``; "scl", "qa_pixel", "pixel_qa" (Landsat
    Collection 1 exports) or "binary" (ready 0/1 masks) name a rule directly.
    max_aoi_km2: AOIs larger than this are refused with a request to tile them.
    """

    revisit_days: int | None = None
    mask: str = "qa"
    cloudscore_threshold: float = 0.60  # docs/method.md: cloudy when cs_cdf < 0.60
    max_aoi_km2: float = 10_000.0  # seed: gaps tested up to 100 km x 100 km (1e8 px)
    project_title: str = "optsar_nb"

    def __post_init__(self) -> None:
        super().__post_init__()
        mission = get_mission(self.mission)
        if self.revisit_days is None:
            object.__setattr__(self, "revisit_days", mission.revisit_days)
        if int(self.revisit_days) != self.revisit_days or self.revisit_days < 1:
            raise InvalidParameter(f"revisit_days={self.revisit_days!r} must be a positive whole number of days")
        object.__setattr__(self, "revisit_days", int(self.revisit_days))
        _check_mask(self.mask, mission)
        if self.mask == "cloudscore" and mission.cloudscore_collection_id is None:
            raise InvalidParameter(f"mask='cloudscore' exists for S2 only, not {self.mission}: use mask='qa'")
        _check_range("cloudscore_threshold", self.cloudscore_threshold, 0.0, 1.0)
        if self.max_aoi_km2 <= 0:
            raise InvalidParameter(f"max_aoi_km2={self.max_aoi_km2!r} must be positive")

    @property
    def mask_rule_name(self) -> str:
        """The MASK_RULES key used for this run ("qa" resolves to the mission's own rule)."""
        return get_mission(self.mission).mask if self.mask == "qa" else self.mask


@dataclass(frozen=True)
class InfillParams(_Params):
    """Gap infilling (docs/method.md part B); defaults are the published ones."""

    mask: str = "qa"
    cloudscore_threshold: float = 0.60
    min_valid_pixels: int = 100  # B.2: drop images with <= 100 valid AOI pixels
    s1_window_days: int = 12  # B.3: S1 mean within +-12 days of the optical date
    s1_min_db: float = -40.0  # S1 backscatter below -40 dB is masked (dark swath edges)
    # S1 backscatter above +30 dB is masked too (beyond the paper): calibrated sigma0 of land stays
    # below about +20 dB; higher values are artefacts (linear power x 10000, amplitudes read as dB)
    s1_max_db: float = 30.0
    neighbourhood_radius_px: int = 10  # B.3: square kernel radius for Nmean/Ndiff
    focal_median_radius_px: float = 1.5  # B.4 and B.10: circular focal median radius
    min_pairs: int = 10  # B.5: fewer pairs is an error
    train_fraction: float = 0.6  # B.6: train/test split at 0.6
    validation_fraction: float = 0.2  # B.6: training pairs with random < 0.2 are validation
    artificial_cloud_range: tuple[float, float] = (0.50, 0.55)  # B.6: donor pair cloud cover
    random_split: bool = True  # B.6: False splits by time (first 60 % train)
    seed: int = 0  # random column and donor choice are reproducible
    irls_max_iterations: int = 50
    # B.6 Talwar cost: a sample is an outlier when |residual| > talwar_tuning x MAD/0.6745. 2.795 is
    # the Talwar constant of MATLAB's robustfit (95 % efficiency under normal errors); Earth
    # Engine's robustLinearRegression computes its own default `beta`, which is undocumented.
    talwar_tuning: float = 2.795
    # B.6 rank-revealing solve: singular values <= lstsq_rcond x the largest (of the design with
    # columns scaled to unit norm) are dropped (minimum-norm solution). The covariates are
    # collinear to ~1e-16 by construction; 1e-6 keeps every direction the data resolve.
    lstsq_rcond: float = 1e-6
    # B.6 guard rail (beyond the paper): a pixel needs this many clear training samples per
    # coefficient (9) for a per-pixel model; fewer, and the fit interpolates noise (measured on
    # real Flanders patches: 9-14 samples gave predictions far outside [-1, 1]). Three per
    # coefficient is the usual minimum for a regression's residual degrees of freedom to
    # outnumber its parameters twice. Pixels below it are filled by the fusion (part C).
    min_samples_per_coefficient: float = 3.0
    pca_fraction: float = 0.1  # B.8: keep floor(0.1 x n_images) components
    standardize_max_cloud: float = 0.5  # B.9: standardize images with cloud cover < 50 %
    standardize_upper: tuple[float, float] = (0.85, 0.95)  # B.9 upper interval (quantiles)
    standardize_lower: tuple[float, float] = (0.05, 0.15)  # B.9 lower interval (quantiles)
    # Part C: NDVI_gapfree is the "fusion" of clear views and S1 (default), or the paper's fill
    # ("paper": calibrated S1 prediction under clouds, then the focal median), to reproduce it.
    method: str = "fusion"
    # Part C: a pixel's own estimate of how far the S1 correction holds is shrunk towards the
    # AOI's with the weight of this many leave-out samples (measured on Flanders 2017: 10 to 120
    # change MAE by under 1 %).
    fusion_prior_samples: float = 30.0
    max_aoi_km2: float = 10_000.0
    project_title: str = "optsar_nb"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise InvalidParameter(f"method={self.method!r} is unknown: choose one of {METHODS}")
        if self.min_samples_per_coefficient < 1:
            raise InvalidParameter(f"min_samples_per_coefficient={self.min_samples_per_coefficient!r} must be at "
                                   "least 1 (3 is the default)")
        if self.fusion_prior_samples < 0:
            raise InvalidParameter(f"fusion_prior_samples={self.fusion_prior_samples!r} must be >= 0")
        _check_mask(self.mask, get_mission(self.mission))
        for name in ("train_fraction", "validation_fraction", "pca_fraction", "standardize_max_cloud"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        for name in ("artificial_cloud_range", "standardize_upper", "standardize_lower"):
            low, high = getattr(self, name)
            _check_range(name, low, 0.0, 1.0)
            _check_range(name, high, low, 1.0)
            object.__setattr__(self, name, (float(low), float(high)))
        if self.s1_min_db >= self.s1_max_db:
            raise InvalidParameter(f"s1_min_db={self.s1_min_db!r} must be below s1_max_db={self.s1_max_db!r}: S1 "
                                   "values outside [s1_min_db, s1_max_db] dB are masked (defaults -40 and 30)")
        for name in ("min_pairs", "s1_window_days", "neighbourhood_radius_px", "irls_max_iterations"):
            if getattr(self, name) < 1:
                raise InvalidParameter(f"{name}={getattr(self, name)!r} must be at least 1")
        if self.talwar_tuning <= 0:
            raise InvalidParameter(f"talwar_tuning={self.talwar_tuning!r} must be positive (2.795 is the usual value)")
        _check_range("lstsq_rcond", self.lstsq_rcond, 0.0, 1.0)
        if self.focal_median_radius_px < 0:
            raise InvalidParameter("focal_median_radius_px must be >= 0 (0 switches the focal median off)")

    @property
    def mask_rule_name(self) -> str:
        return get_mission(self.mission).mask if self.mask == "qa" else self.mask

    @property
    def min_train_samples(self) -> int:
        """Clear training samples a pixel needs for its own model (at least one per coefficient)."""
        return max(N_COEFFICIENTS, math.ceil(self.min_samples_per_coefficient * N_COEFFICIENTS))
