"""optsar_nb: characterize and infill cloud gaps in optical satellite imagery.

Gap statistics between clear observations (Sentinel-2, Landsat 8/9) and gap-free NDVI
infilled from Sentinel-1 radar, on Google Earth Engine or on a local xarray + dask engine.
"""

from .aoi import AOI, load_aoi
from .errors import (
    AOITooLarge,
    InvalidAOI,
    InvalidParameter,
    NoImages,
    NotEnoughPairs,
    OptsarError,
    OutputExists,
    OutputLocked,
    StackMismatch,
    UnknownMission,
    WriteFailed,
)
from .params import GapParams, InfillParams

__version__ = "0.1.0"

__all__ = [
    "AOI",
    "AOITooLarge",
    "GapParams",
    "InfillParams",
    "InvalidAOI",
    "InvalidParameter",
    "NoImages",
    "NotEnoughPairs",
    "OptsarError",
    "OutputExists",
    "OutputLocked",
    "StackMismatch",
    "UnknownMission",
    "WriteFailed",
    "load_aoi",
]
