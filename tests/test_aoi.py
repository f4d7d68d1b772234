"""AOI loading and validation: every bad input gets a message naming the problem and the fix."""

from __future__ import annotations

import json

import pytest
import shapely
from conftest import ROOT
from shapely.geometry import Polygon

from optsar_nb.aoi import check_area, load_aoi, load_aois, tile_aoi
from optsar_nb.errors import AOITooLarge, InvalidAOI

AOIS = ROOT / "data" / "test_aois"


def test_case_sites_areas_match_published_km2():
    fc = json.loads((AOIS / "case_sites_au.geojson").read_text())
    for feature in fc["features"]:
        aoi = load_aoi(feature)
        # the reference file states each site's area; the geodesic area agrees to 1 %
        assert aoi.area_km2 == pytest.approx(feature["properties"]["area_km2"], rel=0.01), aoi.name
        assert aoi.name == feature["properties"]["name"]


def test_sources_agree():
    bbox = (148.75, -31.34, 148.79, -31.30)
    from_bbox = load_aoi(bbox)
    from_shapely = load_aoi(shapely.box(*bbox))
    from_dict = load_aoi(shapely.geometry.mapping(shapely.box(*bbox)))
    from_json = load_aoi(json.dumps(shapely.geometry.mapping(shapely.box(*bbox))))

    class GeoInterface:
        __geo_interface__ = shapely.geometry.mapping(shapely.box(*bbox))

    from_geo = load_aoi(GeoInterface())
    for other in (from_shapely, from_dict, from_json, from_geo):
        assert other.geometry.equals(from_bbox.geometry)
    # 0.04 deg lon x 0.04 deg lat at 31.3 S: 3.80 km x 4.44 km (by hand: 111.32 cos(lat) and 110.9 km/deg)
    assert from_bbox.area_km2 == pytest.approx(0.04 * 111.32 * 0.8545 * 0.04 * 110.9, rel=0.01)


def test_file_sources(tmp_path):
    aoi = load_aoi(AOIS / "case_central_tas.geojson")
    assert aoi.name == "Central Tas"
    import shapefile

    shp = tmp_path / "site.shp"
    with shapefile.Writer(str(shp), shapeType=shapefile.POLYGON) as w:
        w.field("name", "C")
        w.poly([list(map(list, aoi.geometry.exterior.coords))])
        w.record("tas")
    from_shp = load_aoi(shp)
    assert from_shp.geometry.symmetric_difference(aoi.geometry).area < 1e-12


def test_projected_geojson_with_crs_is_reprojected(shared_data):
    aoi = load_aoi(shared_data / "slovenia_s2_clouds" / "bbox.geojson")
    west, south, east, north = aoi.bounds
    assert 14 < west < east < 15 and 45 < south < north < 46  # Slovenia, in degrees
    assert aoi.area_km2 == pytest.approx(1.0095 * 1.0097, rel=0.01)  # ~1 km x 1 km in UTM 33N


def test_self_intersecting_polygon():
    with pytest.raises(InvalidAOI, match="Self-intersection.*edges do not cross"):
        load_aoi(AOIS / "invalid_self_intersecting.geojson")


def test_swapped_lon_lat():
    with pytest.raises(InvalidAOI, match="swapped.*\\[longitude, latitude\\]"):
        load_aoi(AOIS / "invalid_swapped_latlon.geojson")


def test_out_of_range_coordinates():
    with pytest.raises(InvalidAOI, match="out of range.*EPSG:4326"):
        load_aoi(Polygon([(500000, 5600000), (501000, 5600000), (501000, 5601000)]))


@pytest.mark.parametrize(
    "source",
    [
        Polygon(),
        {"type": "FeatureCollection", "features": []},
        {"type": "Feature", "properties": {}, "geometry": None},
    ],
)
def test_empty_geometry(source):
    with pytest.raises(InvalidAOI, match="empty|no features|no geometry"):
        load_aoi(source)


def test_not_a_polygon_and_inverted_bbox():
    with pytest.raises(InvalidAOI, match="not a polygon"):
        load_aoi({"type": "Point", "coordinates": [4.0, 51.0]})
    with pytest.raises(InvalidAOI, match="inverted"):
        load_aoi((5.0, 51.0, 4.0, 52.0))
    with pytest.raises(InvalidAOI, match="does not exist"):
        load_aoi(AOIS / "nope.geojson")


def test_area_limit_says_to_tile():
    aoi = load_aoi(AOIS / "case_north_nt.geojson")  # 24.3 km2
    with pytest.raises(AOITooLarge, match="tile it.*tile_aoi"):
        load_aoi(AOIS / "case_north_nt.geojson", max_area_km2=10)
    check_area(aoi, 30)
    tiles = tile_aoi(aoi, 10)
    assert all(t.area_km2 <= 10 for t in tiles)
    assert sum(t.area_km2 for t in tiles) == pytest.approx(aoi.area_km2, rel=1e-6)


def test_load_aois_keeps_every_feature():
    items = load_aois(AOIS / "case_sites_au.geojson")
    assert [i["name"] for i in items][:2] == ["North NT", "South West Qld"] and len(items) == 7
