"""Names of the files both engines read and write, of the statistic bands, and their units.

Every input and output file is ``<product><suffix><ext>``, the seed's Test folder convention, with
the suffix ``_<Mission>_<Start>_<End>`` (``GapParams.suffix``), e.g.
``NDVI_Input_S2_2021-01-01_2022-01-01.tif``. This module is the one place that spells the product
names: :func:`file_name` builds a name, :func:`find_file` finds a product of a mission in a folder,
:func:`suffix_of` reads the suffix back from a found file, and :func:`metadata_beside` names the
metadata CSV of a stack that has no metadata product of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

# extensions of the local files (Earth Engine exports name files without one)
TIF, CSV, PNG = ".tif", ".csv", ".png"

# inputs of gap characterization: the seed's mask export (1 clear, 0 cloudy) and its metadata,
# or a quality stack (e.g. Sentinel-2 SCL) whose metadata CSV has the stack's own name
MASK_INPUT_FILE = "Mask_Input"
MASK_METADATA_FILE = "InputMask_Metadata"
SCL_INPUT_FILE = "SCL_Input"

# inputs of infilling, as the seed exports them: NDVI and its mask (1 clear, 0 cloudy, -1 missing)
# described by one metadata CSV, Sentinel-1 VV and VH (dB) described by another
NDVI_INPUT_FILE = "NDVI_Input"
NDVI_MASK_FILE = "NDVI_Mask"
VV_INPUT_FILE = "VV_Input"
VH_INPUT_FILE = "VH_Input"
NDVI_METADATA_FILE = "InputNDVI_Metadata"
S1_METADATA_FILE = "InputS1_Metadata"
INFILL_INPUT_FILES = (NDVI_INPUT_FILE, VV_INPUT_FILE, VH_INPUT_FILE, NDVI_MASK_FILE)
INFILL_INPUT_METADATA_FILES = (NDVI_METADATA_FILE, S1_METADATA_FILE)
# the demo scene's cloud-free NDVI (simulated truth; its metadata CSV has its own name)
NDVI_TRUTH_FILE = "NDVI_Truth"

# docs/method.md B outputs (NDVI_Mask: the same form and name as the input mask)
INFILL_OUTPUT_FILES = ("NDVI_gapfree", NDVI_MASK_FILE, "NDVI_Pred", "NDVI_Obs")
INFILL_METADATA_FILE = "Output_Metadata"
INFILL_COMPARISON_FILE = "NDVI_Comparison"  # the notebooks' observed / predicted / gap-free figure


def file_name(product: str, suffix: str, ext: str) -> str:
    """``product + suffix + ext``, e.g. ``Gap_Statistics_S2_2019-01-01_2020-01-01.tif``."""
    return f"{product}{suffix}{ext}"


def file_pattern(product: str, mission: str, ext: str = TIF) -> str:
    """The name of a product of ``mission`` for messages: ``<product>_<mission>_<start>_<end><ext>``."""
    return file_name(product, f"_{mission}_<start>_<end>", ext)


def find_file(folder: str | Path, product: str, mission: str, ext: str = TIF) -> Path | None:
    """The file ``<product>_<mission>_<start>_<end><ext>`` in ``folder`` (the first, sorted), or None."""
    matches = sorted(Path(folder).glob(file_name(product, f"_{mission}_*", ext)))
    return matches[0] if matches else None


def suffix_of(path: str | Path, product: str) -> str:
    """The ``_<Mission>_<Start>_<End>`` of a file of ``product`` (what :func:`file_name` put after it)."""
    return Path(path).stem[len(product):]


def metadata_beside(tif_path: str | Path) -> Path:
    """The metadata CSV of a stack without a metadata product of its own: beside it, the same name."""
    return Path(tif_path).with_suffix(CSV)
