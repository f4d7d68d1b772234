"""Parameters: defaults from docs/method.md, validation messages, papermill dict round trip."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from optsar_nb.errors import InvalidParameter, UnknownMission
from optsar_nb.missions import DEPRECATED_COLLECTION_IDS, MISSIONS, QA_PIXEL, get_mission
from optsar_nb.params import GapParams, InfillParams


def test_defaults_are_the_published_ones():
    g = GapParams()
    assert g.revisit_days == 5 and g.mask_rule_name == "scl" and g.cloudscore_threshold == 0.6
    p = InfillParams()
    assert (p.s1_window_days, p.neighbourhood_radius_px, p.focal_median_radius_px) == (12, 10, 1.5)
    assert (p.min_pairs, p.train_fraction, p.validation_fraction, p.pca_fraction) == (10, 0.6, 0.2, 0.1)
    assert p.artificial_cloud_range == (0.5, 0.55) and p.min_valid_pixels == 100
    assert (p.s1_min_db, p.s1_max_db) == (-40, 30)


def test_dict_round_trip_is_plain_and_lossless():
    g = GapParams(mission="l8", start="2019-03-01", end=dt.date(2019, 9, 1), mask="pixel_qa")
    d = g.to_dict()
    assert d["start"] == "2019-03-01" and d["mission"] == "L8" and d["revisit_days"] == 16
    assert GapParams.from_dict(d) == g
    p = InfillParams(artificial_cloud_range=[0.4, 0.45])
    assert InfillParams.from_dict(p.to_dict()) == p
    assert p.suffix == "_S2_2019-01-01_2020-01-01"


def test_frozen():
    with pytest.raises(AttributeError):
        GapParams().mission = "L8"  # type: ignore[misc]


def test_end_before_start():
    with pytest.raises(InvalidParameter, match="end date 2019-01-01 is not after start date 2019-06-01"):
        GapParams(start="2019-06-01", end="2019-01-01")


def test_unknown_mission_lists_choices():
    with pytest.raises(UnknownMission, match="'S3'.*S2, L8, L9"):
        GapParams(mission="S3")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": "2019-13-01"}, "not a date.*YYYY-MM-DD"),
        ({"mask": "fmask"}, "mask='fmask' is unknown"),
        ({"mission": "L8", "mask": "cloudscore"}, "S2 only"),
        ({"revisit_days": 0}, "positive whole number"),
        ({"cloudscore_threshold": 1.5}, "out of range"),
    ],
)
def test_bad_gap_params(kwargs, message):
    with pytest.raises(InvalidParameter, match=message):
        GapParams(**kwargs)


def test_unknown_field_in_dict():
    with pytest.raises(InvalidParameter, match="unknown GapParams field.*'aoi_size'"):
        GapParams.from_dict({"aoi_size": 3})


def test_catalogue_uses_current_collections():
    assert get_mission("S2").collection_id == "COPERNICUS/S2_SR_HARMONIZED"
    assert get_mission("L9").collection_id == "LANDSAT/LC09/C02/T1_L2"
    assert not {m.collection_id for m in MISSIONS.values()} & set(DEPRECATED_COLLECTION_IDS)
    assert QA_PIXEL.cloudy_bitmask == 0b11110 and QA_PIXEL.fill_bitmask == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_pairs": 10.5}, "min_pairs=10.5 must be a whole number"),
        ({"seed": "abc"}, "seed='abc' must be a whole number"),
        ({"random_split": 1}, "random_split=1 must be True or False"),
        ({"train_fraction": "0.6"}, "train_fraction='0.6' must be a finite number"),
        ({"talwar_tuning": float("inf")}, "talwar_tuning=inf must be a finite number"),
        ({"artificial_cloud_range": (0.5,)}, "must be two numbers"),
        ({"method": 3}, "method=3 must be text"),
        ({"start": "2019-01-01junk"}, "is not a date"),
    ],
)
def test_every_field_has_a_strict_type(kwargs, message):
    with pytest.raises(InvalidParameter, match=message):
        InfillParams(**kwargs)


def test_the_s1_range_must_be_ordered():
    for low, high in ((10, -5), (0, 0)):
        with pytest.raises(InvalidParameter, match=f"s1_min_db={float(low)} must be below s1_max_db={float(high)}"):
            InfillParams(s1_min_db=low, s1_max_db=high)
    with pytest.raises(InvalidParameter, match="s1_max_db=inf must be a finite number"):
        InfillParams(s1_max_db=float("inf"))
    p = InfillParams(s1_min_db=-35, s1_max_db=25)
    assert (p.s1_min_db, p.s1_max_db) == (-35.0, 25.0) and InfillParams.from_dict(p.to_dict()) == p


def test_whole_numbers_from_json_and_iso_times_are_accepted():
    p = InfillParams(min_pairs=10.0, seed=np.int64(3), train_fraction=1, start="2019-01-01T00:00:00")
    assert (p.min_pairs, p.seed, p.train_fraction, p.start.isoformat()) == (10, 3, 1.0, "2019-01-01")
    assert type(p.min_pairs) is int and type(p.seed) is int and type(p.train_fraction) is float
    with pytest.raises(InvalidParameter, match="revisit_days=True must be a whole number"):
        GapParams(revisit_days=True)
