"""The serialized graphs themselves: current collection ids, no deprecated collection, the
right mask bits and thresholds, and no server round trip while building."""

from __future__ import annotations

import ee
import pytest
from ee_support.cubes import flanders_aoi
from ee_support.evaluator import algorithms_in, constants_of, encode, nodes

from optsar_nb.ee import collections as col
from optsar_nb.ee import gaps as ee_gaps
from optsar_nb.missions import DEPRECATED_COLLECTION_IDS, MISSIONS, S1, SCL
from optsar_nb.params import GapParams, InfillParams


def _gap_expr(mission: str, mask: str = "qa") -> dict:
    params = GapParams(mission=mission, start="2019-01-01", end="2020-01-01", mask=mask)
    return encode(ee_gaps.characterize_gaps(flanders_aoi(), params).statistics)


def _loaded_ids(expr: dict) -> set:
    return {node["arguments"]["id"]["constantValue"] for node in nodes(expr)
            if node.get("functionName") == "ImageCollection.load"}


@pytest.mark.parametrize("mission", sorted(MISSIONS))
def test_current_collection_ids_only(ee_offline, mission):
    expr = _gap_expr(mission)
    assert _loaded_ids(expr) == {MISSIONS[mission].collection_id}
    text = str(expr)
    for deprecated in DEPRECATED_COLLECTION_IDS:
        assert f"'{deprecated}'" not in text


def test_cloudscore_links_the_current_cloud_score_plus(ee_offline):
    expr = _gap_expr("S2", mask="cloudscore")
    assert _loaded_ids(expr) == {MISSIONS["S2"].collection_id, MISSIONS["S2"].cloudscore_collection_id}
    assert 0.60 in constants_of(expr) and col.CLOUDSCORE_BAND in str(expr)


def test_scl_classes(ee_offline):
    constants = constants_of(_gap_expr("S2"))
    assert list(SCL.cloudy_values) in constants  # remap from: 3, 7, 8, 9, 10, 11
    assert list(SCL.missing_values) in constants  # 0 no data, 1 saturated/defective


@pytest.mark.parametrize("mission", ["L8", "L9"])
def test_qa_pixel_bits(ee_offline, mission):
    expr = _gap_expr(mission)
    constants = constants_of(expr)
    assert 0b11110 in constants  # bits 1 dilated cloud, 2 cirrus, 3 cloud, 4 shadow
    assert 0b1 in constants  # bit 0 fill
    assert "Image.bitwiseAnd" in algorithms_in(expr)


def test_s1_filters(ee_offline):
    p = InfillParams()
    expr = encode(col.s1_collection(flanders_aoi(), start=p.start, end=p.end, min_db=p.s1_min_db, max_db=p.s1_max_db))
    constants = constants_of(expr)
    assert _loaded_ids(expr) == {S1.collection_id}
    assert S1.instrument_mode in constants and "VV" in constants and "VH" in constants
    assert -40.0 in constants and 30.0 in constants and {"Image.gte", "Image.lte"} <= algorithms_in(expr)


def test_building_gaps_makes_no_round_trip(ee_offline, monkeypatch):
    calls = []
    monkeypatch.setattr(ee.data, "computeValue", lambda obj: calls.append(obj))
    run = ee_gaps.characterize_gaps(flanders_aoi(), GapParams(mission="S2"))
    encode(run.statistics), encode(run.metadata_request())
    assert calls == []


def test_building_infill_makes_two_round_trips_through_getinfo(flanders_ee, monkeypatch):
    """The real getInfo path (ee.data.computeValue) answered by the evaluator: two calls (the
    pair check, the fusion's leave-out rows)."""
    from optsar_nb.ee import infill as ee_infill

    ev, _ = flanders_ee
    calls = []

    def compute_value(obj):
        calls.append(obj)
        return ev.evaluate(obj)

    monkeypatch.setattr(ee.data, "computeValue", compute_value)
    params = InfillParams(mission="S2", start="2017-08-01", end="2018-12-01")
    run = ee_infill.build_infill(flanders_aoi(), params)
    encode(run.outputs["NDVI_gapfree"])
    assert len(calls) == 2


def test_the_evaluator_covers_every_gap_graph(ee_offline):
    """Every algorithm of the gap graphs (all missions and masks) is interpreted by the evaluator;
    the infill graphs are covered by evaluating them in tests/test_ee_infill.py."""
    from ee_support.evaluator import implemented_algorithms

    used = set()
    for mission, mask in (("S2", "qa"), ("S2", "cloudscore"), ("L8", "qa"), ("L9", "qa")):
        params = GapParams(mission=mission, mask=mask)
        run = ee_gaps.characterize_gaps(flanders_aoi(), params)
        used |= algorithms_in(encode(run.statistics)) | algorithms_in(encode(run.metadata_request()))
    assert used <= implemented_algorithms(), sorted(used - implemented_algorithms())
