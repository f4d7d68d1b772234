"""The offline Earth Engine harness itself: real client, shipped algorithm table, no network."""

from __future__ import annotations

import socket

import ee
import pytest
from ee_support import offline
from ee_support.evaluator import Evaluator, implemented_algorithms
from ee_support.values import Grid
from pytest_socket import SocketBlockedError


def test_algorithm_table_is_the_clients_own(ee_offline):
    table = offline.algorithm_table()
    assert offline.ALGORITHMS_JSON.is_file()
    # the wheel's table is the full server catalogue, not a stub
    assert len(table) > 500
    assert {"Image.reduceRegion", "Collection.iterate", "Reducer.robustLinearRegression"} <= set(table)
    assert ee.data.is_initialized()


def test_every_evaluator_algorithm_exists_in_the_table(ee_offline):
    """The evaluator implements real algorithms only (names as the server knows them)."""
    # reduce.* are the client's collection shortcuts; they are in the table too
    assert implemented_algorithms() <= offline.algorithm_names()


def test_missing_table_fails_loudly(monkeypatch, tmp_path):
    monkeypatch.setattr(offline, "ALGORITHMS_JSON", tmp_path / "absent.json")
    with pytest.raises(offline.MissingAlgorithmTable, match="ships no"):
        offline.algorithm_table()


def test_network_is_guarded():
    with pytest.raises(SocketBlockedError):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def test_a_server_call_cannot_leave_the_machine(ee_offline):
    """getInfo has no API client offline; whatever it tries never reaches a network."""
    with pytest.raises(ee.EEException):
        ee.Number(1).add(1).getInfo()


def test_unknown_algorithm_is_named(ee_offline):
    ev = Evaluator(Grid("EPSG:32631", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 2, 2))
    with pytest.raises(NotImplementedError, match="Image.hsvToRgb"):
        ev.evaluate(ee.Image.constant(1).hsvToRgb())


def test_closures_scope_and_shared_values(ee_offline):
    """map inside iterate, with argument names reused at each depth, and shared subexpressions."""
    ev = Evaluator(Grid("EPSG:32631", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 2, 2))
    outer = ee.List([1, 2, 3])
    total = outer.iterate(lambda x, acc: ee.Number(acc).add(ee.Number(x).multiply(2)), 0)
    assert ev.evaluate(total) == 12.0
    nested = outer.map(lambda x: ee.List([10, 20]).map(lambda y: ee.Number(y).add(x)))
    assert ev.evaluate(nested) == [[11.0, 21.0], [12.0, 22.0], [13.0, 23.0]]
