"""Areas of interest: load from GeoJSON, shapefile, bbox or shapely; validate; area; tiling.

An :class:`AOI` always holds a valid, non-empty (multi)polygon in longitude/latitude
degrees (EPSG:4326). Loading refuses what would silently produce nonsense downstream:
invalid or self-intersecting rings, swapped or out-of-range coordinates, empty geometries,
and AOIs above the configured area limit (those must be tiled, see :func:`tile_aoi`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape
from shapely.validation import explain_validity

from .errors import AOITooLarge, InvalidAOI

_GEOMETRY_TYPES = ("Polygon", "MultiPolygon", "Point", "LineString", "MultiPoint", "MultiLineString",
                   "GeometryCollection")
AOISource = Any  # path, GeoJSON dict, object with __geo_interface__, bbox tuple, shapely geometry


@dataclass(frozen=True)
class AOI:
    """A validated area of interest in EPSG:4326."""

    geometry: Polygon | MultiPolygon
    name: str = "aoi"
    properties: dict = field(default_factory=dict, compare=False)

    @property
    def area_km2(self) -> float:
        return geodesic_area_km2(self.geometry)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return tuple(self.geometry.bounds)

    def to_geojson(self) -> dict:
        """A GeoJSON Feature with the AOI's name and properties."""
        return {"type": "Feature", "properties": {"name": self.name, **self.properties},
                "geometry": mapping(self.geometry)}

    @property
    def __geo_interface__(self) -> dict:
        return mapping(self.geometry)

    def to_ee(self):
        """The AOI as an ``ee.Geometry`` (geodesic=False: edges are straight in lon/lat, as drawn)."""
        import ee

        return ee.Geometry(mapping(self.geometry), "EPSG:4326", False)


def geodesic_area_km2(geometry) -> float:
    """Area on the WGS84 ellipsoid in square kilometres."""
    from pyproj import Geod

    area_m2, _ = Geod(ellps="WGS84").geometry_area_perimeter(geometry)
    return abs(area_m2) / 1e6


def _geometry_from_geojson(obj: dict, source_name: str) -> tuple[Any, dict, str | None]:
    kind = obj.get("type")
    if kind == "FeatureCollection":
        feats = obj.get("features") or []
        if not feats:
            raise InvalidAOI(f"{source_name}: the FeatureCollection has no features: draw or add one polygon")
        if len(feats) > 1:
            geoms = [_geometry_from_geojson(f, source_name)[0] for f in feats]
            return shapely.union_all(geoms), {}, None
        return _geometry_from_geojson(feats[0], source_name)
    if kind == "Feature":
        if not obj.get("geometry"):
            raise InvalidAOI(f"{source_name}: the feature has no geometry: draw or add a polygon")
        props = dict(obj.get("properties") or {})
        geom, _, _ = _geometry_from_geojson(obj["geometry"], source_name)
        return geom, props, props.get("name")
    if kind in _GEOMETRY_TYPES:
        try:
            return shape(obj), {}, None
        except Exception as exc:  # malformed coordinates
            raise InvalidAOI(f"{source_name}: malformed {kind} coordinates ({exc}): check the GeoJSON") from None
    raise InvalidAOI(
        f"{source_name}: GeoJSON type {kind!r} is not a geometry, Feature or FeatureCollection"
    )


def reproject(geom, src_crs, dst_crs):
    """A shapely geometry from one CRS (anything pyproj understands) to another."""
    import numpy as np
    from pyproj import CRS, Transformer

    tr = Transformer.from_crs(CRS.from_user_input(src_crs), CRS.from_user_input(dst_crs), always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _crs_of(obj: dict) -> str | None:
    crs = obj.get("crs") if isinstance(obj, dict) else None
    if crs and isinstance(crs, dict):
        name = (crs.get("properties") or {}).get("name")
        if name and not any(k in name for k in ("CRS84", "4326")):
            return name
    return None


def read_shapefile(path: Path) -> dict:
    """A shapefile as a GeoJSON FeatureCollection; its .prj (if any) as the collection's 'crs'."""
    import shapefile  # pyshp

    try:
        with shapefile.Reader(str(path)) as reader:
            fc = reader.__geo_interface__
    except Exception as exc:
        raise InvalidAOI(f"{path}: cannot read the shapefile ({exc}): give the .shp with its .shx and .dbf") from None
    prj = path.with_suffix(".prj")
    if prj.exists():
        fc["crs"] = {"type": "name", "properties": {"name": prj.read_text()}}
    return fc


def _load_raw(source: AOISource) -> tuple[Any, dict, str | None, str]:
    """Return (geometry, properties, name, description of the source)."""
    if isinstance(source, AOI):
        return source.geometry, dict(source.properties), source.name, "AOI"
    if isinstance(source, (str, Path)) and not str(source).lstrip().startswith("{"):
        path = Path(source)
        if not path.exists():
            raise InvalidAOI(f"AOI file {path} does not exist: check the path")
        if path.suffix.lower() == ".shp":
            obj = read_shapefile(path)
        else:
            try:
                obj = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise InvalidAOI(f"{path} is not valid GeoJSON ({exc})") from None
        geom, props, name = _geometry_from_geojson(obj, str(path))
        if (crs := _crs_of(obj)) is not None:
            geom = reproject(geom, crs, "EPSG:4326")
        return geom, props, name or path.stem, str(path)
    if isinstance(source, str):
        return _load_raw(json.loads(source))
    if isinstance(source, (tuple, list)) and len(source) == 4 and all(isinstance(v, (int, float)) for v in source):
        west, south, east, north = map(float, source)
        if west >= east or south >= north:
            raise InvalidAOI(
                f"bbox {tuple(source)} is empty or inverted: give (west, south, east, north) in degrees"
            )
        return box(west, south, east, north), {}, None, "bbox"
    if isinstance(source, shapely.Geometry):
        return source, {}, None, "geometry"
    if isinstance(source, dict):
        geom, props, name = _geometry_from_geojson(source, "GeoJSON")
        if (crs := _crs_of(source)) is not None:
            geom = reproject(geom, crs, "EPSG:4326")
        return geom, props, name, "GeoJSON"
    if hasattr(source, "__geo_interface__"):
        return _load_raw(dict(source.__geo_interface__))
    raise InvalidAOI(
        f"cannot make an AOI from {type(source).__name__}: give a GeoJSON file or dict, a shapefile, "
        "a (west, south, east, north) bbox or a shapely polygon"
    )


def validate_geometry(geom, source_name: str = "AOI"):
    """Check a lon/lat polygon and return it as a (Multi)Polygon; raise InvalidAOI otherwise."""
    if geom is None or geom.is_empty:
        raise InvalidAOI(f"{source_name} is empty: draw or give a polygon with an area")
    if isinstance(geom, shapely.GeometryCollection) and not isinstance(geom, MultiPolygon):
        polys = [g for g in geom.geoms if isinstance(g, (Polygon, MultiPolygon))]
        geom = shapely.union_all(polys) if polys else geom
    if not isinstance(geom, (Polygon, MultiPolygon)):
        raise InvalidAOI(
            f"{source_name} is a {geom.geom_type}, not a polygon: an AOI needs an area (draw a rectangle or polygon)"
        )
    minx, miny, maxx, maxy = geom.bounds
    if any(not math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise InvalidAOI(f"{source_name} has non-finite coordinates")
    lon_ok = -180 <= minx and maxx <= 180
    lat_ok = -90 <= miny and maxy <= 90
    if not lat_ok and lon_ok and -90 <= minx and maxx <= 90 and -180 <= miny and maxy <= 180:
        raise InvalidAOI(
            f"{source_name} has latitudes outside [-90, 90] ({miny:.4f} to {maxy:.4f}): longitude and latitude "
            "look swapped; GeoJSON order is [longitude, latitude]"
        )
    if not (lon_ok and lat_ok):
        raise InvalidAOI(
            f"{source_name} coordinates ({minx:.4f}, {miny:.4f}, {maxx:.4f}, {maxy:.4f}) are out of range for "
            "longitude [-180, 180] / latitude [-90, 90]: give the AOI in degrees (EPSG:4326), or a GeoJSON "
            "with a 'crs' member naming its projection"
        )
    if not geom.is_valid:
        reason = explain_validity(geom)
        hint = (
            "the boundary crosses itself; redraw it so that edges do not cross (or split it into two polygons)"
            if "Self-intersection" in reason or "Ring Self-intersection" in reason
            else "fix the geometry (e.g. shapely.make_valid) and try again"
        )
        raise InvalidAOI(f"{source_name} is not a valid polygon ({reason}): {hint}")
    if geom.area == 0:
        raise InvalidAOI(f"{source_name} has zero area: draw a polygon, not a line or a point")
    return geom


def load_aoi(source: AOISource, *, name: str | None = None, max_area_km2: float | None = None) -> AOI:
    """Load and validate an AOI.

    ``source``: a GeoJSON/shapefile path, a GeoJSON dict or string (geometry, Feature or
    FeatureCollection; a FeatureCollection of several features becomes their union), an object
    with ``__geo_interface__`` (geojson, shapely), a ``(west, south, east, north)`` bbox in
    degrees, or a shapely geometry. ``max_area_km2``: refuse larger AOIs (AOITooLarge).
    """
    geom, props, raw_name, described = _load_raw(source)
    geom = validate_geometry(geom, f"AOI ({described})")
    aoi = AOI(geometry=geom, name=str(name or raw_name or "aoi"), properties=props)
    if max_area_km2 is not None:
        check_area(aoi, max_area_km2)
    return aoi


def check_area(aoi: AOI, max_area_km2: float) -> None:
    """Raise AOITooLarge when the AOI is above the limit, saying how to tile it."""
    area = aoi.area_km2
    if area > max_area_km2:
        n = math.ceil(area / max_area_km2)
        raise AOITooLarge(
            f"AOI {aoi.name!r} covers {area:,.0f} km2, above the limit of {max_area_km2:,.0f} km2: tile it "
            f"(optsar_nb.aoi.tile_aoi(aoi, max_area_km2={max_area_km2:g}) gives about {n} tiles, run each, "
            "e.g. with `optsar batch`) or raise max_aoi_km2 if your engine can take it"
        )


def load_aois(path: str | Path) -> list[AOI]:
    """Every feature of a GeoJSON FeatureCollection (or shapefile) as its own AOI, unvalidated names kept.

    Invalid features are not dropped here: they raise when validated, so batch runs can record
    the error per AOI. Use :func:`load_aoi` on each returned geometry dict for validation.
    """
    path = Path(path)
    obj = read_shapefile(path) if path.suffix.lower() == ".shp" else json.loads(path.read_text())
    feats = obj["features"] if obj.get("type") == "FeatureCollection" else [obj]
    out = []
    for i, feat in enumerate(feats):
        props = dict(feat.get("properties") or {})
        out.append({"name": str(props.get("name") or f"aoi_{i:03d}"), "feature": feat})
    return out


def tile_aoi(aoi: AOI, max_area_km2: float) -> list[AOI]:
    """Split an AOI into a grid of tiles each at most ``max_area_km2`` (clipped to the AOI)."""
    area = aoi.area_km2
    n = max(1, math.ceil(math.sqrt(area / max_area_km2 * 1.2)))
    while True:
        minx, miny, maxx, maxy = aoi.bounds
        dx, dy = (maxx - minx) / n, (maxy - miny) / n
        tiles = []
        for i in range(n):
            for j in range(n):
                cell = box(minx + i * dx, miny + j * dy, minx + (i + 1) * dx, miny + (j + 1) * dy)
                part = aoi.geometry.intersection(cell)
                if not part.is_empty and part.area > 0:
                    tiles.append(AOI(validate_geometry(part), name=f"{aoi.name}_r{j:02d}c{i:02d}"))
        if all(t.area_km2 <= max_area_km2 for t in tiles):
            return tiles
        n += 1
