"""The mission catalogue: Earth Engine collection ids, band names, scaling and cloud rules.

Every collection id used anywhere in optsar_nb is written here and nowhere else
(docs/method.md, "Missions and masks"). The cloud rules are data; the engines apply them
(``optsar_nb.local.gaps`` with numpy, ``optsar_nb.ee.collections`` with Earth Engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UnknownMission

# Pixel states shared by both engines. Composites of several images of one day take the
# maximum, which yields "clear if clear in any image, missing only if missing in all".
MISSING = -1
CLOUDY = 0
CLEAR = 1


@dataclass(frozen=True)
class SCLRule:
    """Sentinel-2 scene classification: pixel classes that are cloudy or missing."""

    band: str = "SCL"
    # docs/method.md: cloudy when SCL == 3 (shadow) or SCL >= 7 (unclassified, cloud medium/high,
    # cirrus, snow); SCL 0 (no data) and 1 (saturated/defective) are missing.
    cloudy_values: tuple[int, ...] = (3, 7, 8, 9, 10, 11)
    missing_values: tuple[int, ...] = (0, 1)
    kind: str = "scl"
    classes: tuple[int, ...] = tuple(range(12))  # every SCL class (ESA L2A product specification)


@dataclass(frozen=True)
class BitRule:
    """A quality band whose bits flag cloud (any set bit in ``cloudy_bits``) and fill."""

    band: str
    cloudy_bits: tuple[int, ...]
    fill_bit: int
    kind: str = "bits"
    MAX_VALUE = 2**16 - 1  # the quality bands are 16-bit

    @property
    def cloudy_bitmask(self) -> int:
        return sum(1 << b for b in self.cloudy_bits)

    @property
    def fill_bitmask(self) -> int:
        return 1 << self.fill_bit


@dataclass(frozen=True)
class BinaryRule:
    """A ready 0/1 mask: ``cloud_value`` marks cloud, the other value clear.

    Missing where the optional validity band is 0, where the mask is NaN, or where it equals
    the file's no-data value. The default is s2cloudless's CLM (1 = cloud) with IS_DATA.
    """

    band: str = "CLM"
    valid_band: str | None = "IS_DATA"
    cloud_value: int = 1
    kind: str = "binary"


# Landsat Collection 2 QA_PIXEL: bit 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 shadow
# (USGS LSDS-1619 Landsat 8-9 C2 L2 product guide, table 6-3).
QA_PIXEL = BitRule(band="QA_PIXEL", cloudy_bits=(1, 2, 3, 4), fill_bit=0)
# Landsat Collection 1 pixel_qa (the seed's LANDSAT/LC08/C01/T1_SR): bit 0 fill,
# 3 cloud shadow, 5 cloud (USGS LSDS-1368 L8 SR product guide, table 6-3).
PIXEL_QA = BitRule(band="pixel_qa", cloudy_bits=(3, 5), fill_bit=0)
SCL = SCLRule()
BINARY = BinaryRule()

# The seed's exported Mask_Input: 1 = clear, 0 = cloudy, no data = missing.
CLEAR_MASK = BinaryRule(band="mask", valid_band=None, cloud_value=0)

MASK_RULES = {"scl": SCL, "qa_pixel": QA_PIXEL, "pixel_qa": PIXEL_QA, "binary": BINARY, "clear_mask": CLEAR_MASK}


@dataclass(frozen=True)
class Mission:
    """One optical mission as the method uses it."""

    name: str
    collection_id: str
    red: str
    nir: str
    mask: str  # key of MASK_RULES used by default
    revisit_days: int  # docs/method.md A.4 initial condition uses the revisit time
    pixel_size_m: float  # native resolution of the red/NIR bands, the export scale
    scale: float = 1.0  # reflectance = DN * scale + offset
    offset: float = 0.0
    cloudscore_collection_id: str | None = None
    deprecated_ids: tuple[str, ...] = field(default=())

    @property
    def mask_rule(self):
        return MASK_RULES[self.mask]


MISSIONS: dict[str, Mission] = {
    "S2": Mission(
        name="S2",
        collection_id="COPERNICUS/S2_SR_HARMONIZED",
        red="B4",
        nir="B8",
        mask="scl",
        revisit_days=5,  # Sentinel-2A+B combined revisit at the equator
        pixel_size_m=10,  # B4/B8 (ESA Sentinel-2 MSI user guide)
        scale=1e-4,
        cloudscore_collection_id="GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED",
        deprecated_ids=("COPERNICUS/S2_SR",),
    ),
    "L8": Mission(
        name="L8",
        collection_id="LANDSAT/LC08/C02/T1_L2",
        red="SR_B4",
        nir="SR_B5",
        mask="qa_pixel",
        revisit_days=16,  # single Landsat satellite repeat cycle
        pixel_size_m=30,  # OLI surface reflectance (USGS Collection 2 L2 product guide)
        scale=2.75e-05,  # USGS Collection 2 surface reflectance scale
        offset=-0.2,
        deprecated_ids=("LANDSAT/LC08/C01/T1_SR",),
    ),
    "L9": Mission(
        name="L9",
        collection_id="LANDSAT/LC09/C02/T1_L2",
        red="SR_B4",
        nir="SR_B5",
        mask="qa_pixel",
        revisit_days=16,
        pixel_size_m=30,
        scale=2.75e-05,
        offset=-0.2,
    ),
}


@dataclass(frozen=True)
class RadarMission:
    """Sentinel-1 GRD as the infilling uses it."""

    collection_id: str = "COPERNICUS/S1_GRD"
    instrument_mode: str = "IW"
    bands: tuple[str, ...] = ("VV", "VH")


S1 = RadarMission()

# Every deprecated id the project knows about, so that tests can assert none is used.
DEPRECATED_COLLECTION_IDS = tuple(i for m in MISSIONS.values() for i in m.deprecated_ids)


def get_mission(name: str) -> Mission:
    """Return the catalogue entry for ``name`` (case-insensitive), or raise UnknownMission."""
    key = str(name).strip().upper()
    if key not in MISSIONS:
        raise UnknownMission(
            f"unknown mission {name!r}: choose one of {', '.join(MISSIONS)} "
            "(S2 = Sentinel-2 L2A, L8/L9 = Landsat 8/9 Collection 2 L2)"
        )
    return MISSIONS[key]
