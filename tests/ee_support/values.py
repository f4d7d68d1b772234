"""The values the evaluator computes with: images, collections, geometries, dates, reducers.

An image is an ordered dict of named bands plus a property dict. Every band lives on the one
pixel grid of the evaluator (:class:`Grid`): ``data`` is float64 ``(H, W)`` for scalar pixels or
``(H, W, *shape)`` for array pixels (``ee.Image.toArray`` and friends), and ``mask`` is a bool
``(H, W)``. Earth Engine's masks are fractional in [0, 1]; here they are only on/off, which is
what every mask in optsar_nb.ee is (comparisons, updateMask with 0/1 images, clip).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Grid:
    """The single pixel grid every image lives on (CRS as WKT or EPSG string, affine transform)."""

    crs: str
    transform: tuple[float, ...]
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)


# A band's projection (see :class:`Projection`): the cube's grid, or Earth Engine's default
NATIVE, DEFAULT, OTHER = "native", "default", "other"


@dataclass
class Band:
    data: np.ndarray
    mask: np.ndarray
    proj: str = NATIVE  # NATIVE (the cube's grid) or DEFAULT (WGS84 at 1 degree: composites, constants)

    def copy(self) -> Band:
        return Band(self.data, self.mask, self.proj)


@dataclass
class Image:
    bands: dict[str, Band] = field(default_factory=dict)
    props: dict[str, Any] = field(default_factory=dict)

    def with_bands(self, bands: dict[str, Band]) -> Image:
        return Image(dict(bands), dict(self.props))

    @property
    def names(self) -> list[str]:
        return list(self.bands)


@dataclass
class Collection:
    images: list[Any]
    props: dict[str, Any] = field(default_factory=dict)


@dataclass
class Feature:
    geometry: Any
    props: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Date:
    """An instant in milliseconds since the epoch, UTC (ee.Date)."""

    millis: float


class Projection(dict):
    """An ee.Projection as far as the evaluator can tell: the cube's grid (NATIVE), Earth Engine's
    default of composites and constants (DEFAULT: WGS84 at 1 degree), or any other grid (OTHER).

    As a dict it is what ``getInfo`` of a projection returns: ``type``, ``crs``, ``transform``
    (the cube's affine coefficients for NATIVE; 1-degree pixels for DEFAULT).
    """

    def __init__(self, crs: str = "EPSG:4326", kind: str = DEFAULT, transform=None):
        if transform is None:
            transform = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        super().__init__(type="Projection", crs=crs, transform=[float(v) for v in transform])
        self.kind = kind

    @property
    def crs(self) -> str:
        return self["crs"]


@dataclass
class Geometry:
    """A GeoJSON geometry in longitude/latitude (geodesic flag kept, not used)."""

    geojson: dict
    geodesic: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def shapely(self):
        from shapely.geometry import shape

        return shape(self.geojson)

    def pixel_mask(self, grid: Grid) -> np.ndarray:
        """Pixels whose centre lies inside the geometry (as optsar_nb.local.gaps.aoi_mask); for a
        point, the pixel containing it (none when it lies outside the grid)."""
        if "mask" not in self._cache and self.geojson["type"] == "Point":
            self._cache["mask"] = self._point_mask(grid)
        if "mask" not in self._cache:
            import shapely
            from pyproj import CRS, Transformer
            from rasterio.features import geometry_mask
            from rasterio.transform import Affine
            from shapely.geometry import mapping

            tr = Transformer.from_crs("EPSG:4326", CRS.from_user_input(grid.crs), always_xy=True)
            geom = shapely.transform(self.shapely(), lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
            self._cache["mask"] = ~geometry_mask([mapping(geom)], out_shape=grid.shape,
                                                 transform=Affine(*grid.transform[:6]))
        return self._cache["mask"]

    def _point_mask(self, grid: Grid) -> np.ndarray:
        from pyproj import CRS, Transformer
        from rasterio.transform import Affine, rowcol

        lon, lat = self.geojson["coordinates"][:2]
        x, y = Transformer.from_crs("EPSG:4326", CRS.from_user_input(grid.crs), always_xy=True).transform(lon, lat)
        row, col = (int(v) for v in rowcol(Affine(*grid.transform[:6]), x, y, op=np.floor))
        mask = np.zeros(grid.shape, bool)
        if 0 <= row < grid.height and 0 <= col < grid.width:
            mask[row, col] = True
        return mask


@dataclass
class Filter:
    """A predicate: ``fn(element, other)``; ``other`` is the secondary element in a join."""

    fn: Any

    def __call__(self, element) -> bool:
        return bool(self.fn(element, None))

    def pair(self, primary, secondary) -> bool:
        return bool(self.fn(primary, secondary))


@dataclass
class Kernel:
    weights: np.ndarray  # (2r+1, 2r+1)


@dataclass
class Closure:
    """A function definition of the graph bound to the environment it was defined in."""

    arg_names: list[str]
    body: str
    env: dict
    evaluator: Any

    def __call__(self, *args):
        return self.evaluator.call_closure(self, args)


def replace(obj, **changes):
    return dataclasses.replace(obj, **changes)


def element_props(element) -> dict:
    if isinstance(element, (Image, Feature, Collection)):
        return element.props
    if isinstance(element, dict):
        return element
    raise TypeError(f"{type(element).__name__} has no properties")


def get_property(element, name: str):
    """A property, with the system properties Earth Engine derives on the fly."""
    props = element_props(element)
    if name in props:
        return props[name]
    if name == "system:band_names" and isinstance(element, Image):
        return element.names
    return None
