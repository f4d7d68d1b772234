"""Names of the outputs both engines produce: files, statistic bands, units.

File names follow the seed's Test folder convention: ``<Product>_<Mission>_<Start>_<End>``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Statistic:
    name: str
    unit: str
    description: str
    palette: str  # matplotlib colormap name, also used for map layers


# docs/method.md A.5: the required statistic bands, in output band order.
GAP_STATISTICS: tuple[Statistic, ...] = (
    Statistic("clear_count", "days", "days with a clear observation", "viridis"),
    Statistic("gap_count", "gaps", "gaps closed by a clear day (= clear_count)", "viridis"),
    Statistic("gap_mean", "days", "mean gap between clear days", "magma_r"),
    Statistic("gap_median", "days", "median gap between clear days", "magma_r"),
    Statistic("gap_std", "days", "population standard deviation of gaps", "cividis"),
    Statistic("gap_min", "days", "shortest gap", "magma_r"),
    Statistic("gap_max", "days", "longest gap", "magma_r"),
    Statistic("gap_p90", "days", "90th percentile of gaps", "magma_r"),
    Statistic("open_gap", "days", "end date minus the last clear day (censored gap)", "magma_r"),
    Statistic("valid_count", "days", "days with valid data, clear or cloudy", "viridis"),
    Statistic("clear_fraction", "fraction", "clear days / valid days", "RdYlGn"),
)
GAP_STATISTIC_NAMES = tuple(s.name for s in GAP_STATISTICS)
STATISTICS_BY_NAME = {s.name: s for s in GAP_STATISTICS}

GAP_STATISTICS_FILE = "Gap_Statistics"
# each job's manifest, written last, lists its complete output set: <job>_Manifest<suffix>.json
GAP_MANIFEST_JOB = "Gap"
INFILL_MANIFEST_JOB = "Infill"
MASK_INPUT_FILE = "Mask_Input"
MASK_METADATA_FILE = "InputMask_Metadata"

# docs/method.md B outputs and the exported inputs for offline infilling
INFILL_OUTPUT_FILES = ("NDVI_gapfree", "NDVI_Mask", "NDVI_Pred", "NDVI_Obs")
INFILL_METADATA_FILE = "Output_Metadata"
INFILL_INPUT_FILES = ("NDVI_Input", "VV_Input", "VH_Input", "NDVI_Mask")
INFILL_INPUT_METADATA_FILES = ("InputNDVI_Metadata", "InputS1_Metadata")


def file_name(product: str, suffix: str, ext: str) -> str:
    """``product + suffix + ext``, e.g. ``Gap_Statistics_S2_2019-01-01_2020-01-01.tif``."""
    return f"{product}{suffix}{ext}"
