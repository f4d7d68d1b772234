"""optsar_nb: characterize and infill cloud gaps in optical satellite imagery.

Gap statistics between clear observations (Sentinel-2, Landsat 8/9) and gap-free NDVI
infilled from Sentinel-1 radar, on Google Earth Engine or on a local xarray + dask engine.
"""

from .aoi import AOI, load_aoi
from .engine import resolve_backend
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
from .run import describe_inputs, infill_figure, list_outputs, run_gaps, run_infill
from .ui import OptsarApp  # after .run: the app is built on it

__version__ = "0.1.0"

__all__ = [
    # the jobs, as the notebooks, the app, the command line and batch run them
    "run_gaps",
    "run_infill",
    "resolve_backend",
    "describe_inputs",
    "list_outputs",
    "infill_figure",
    "OptsarApp",
    # inputs, parameters and errors
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
