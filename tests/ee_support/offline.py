"""The real earthengine-api client, initialized with no network and no credentials.

``ee.Initialize`` normally makes two network calls: it builds the Cloud API client from the
discovery document (``ee.data._install_cloud_api_resource``) and it fetches the data catalog's
STAC to learn which collections are deprecated (``ee.deprecation._FetchDataCatalogStac``).
Both are replaced here; the algorithm signatures come from the table the client's own wheel
ships for its tests (``ee/tests/algorithms.json``, read by ``ee.apitestcase.GetAlgorithms``),
so every ``ee.Image``/``ee.ImageCollection`` method exists with its real argument names and
serializes exactly as it would for the server. Anything that still tries to reach a server
(``getInfo``, exports) goes through ``ee.data`` functions that the caller patches or counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import ee
from ee import apitestcase

ALGORITHMS_JSON = Path(ee.__file__).resolve().parent / "tests" / "algorithms.json"
OFFLINE_PROJECT = "optsar-offline-tests"  # any non-SDK project id passes ee.Initialize's check


class MissingAlgorithmTable(RuntimeError):
    """The earthengine-api wheel does not ship ee/tests/algorithms.json."""


def algorithm_table() -> dict:
    """The algorithm signatures shipped with the installed client (name -> signature)."""
    if not ALGORITHMS_JSON.is_file():
        raise MissingAlgorithmTable(
            f"earthengine-api {ee.__version__} ships no {ALGORITHMS_JSON}: the offline Earth Engine tests "
            "need it; install an earthengine-api version within the range pinned in pyproject.toml"
        )
    return apitestcase.GetAlgorithms()


class _OfflineState:
    """What initialize() replaced, so that restore() puts it back."""

    def __init__(self) -> None:
        self.saved = {
            (ee.data, "_install_cloud_api_resource"): ee.data._install_cloud_api_resource,
            (ee.data, "getAlgorithms"): ee.data.getAlgorithms,
            (ee.deprecation, "_FetchDataCatalogStac"): ee.deprecation._FetchDataCatalogStac,
        }

    def restore(self) -> None:
        for (module, name), value in self.saved.items():
            setattr(module, name, value)
        ee.Reset()


def initialize() -> _OfflineState:
    """Initialize ``ee`` offline; returns a handle whose ``restore()`` undoes it."""
    table = algorithm_table()
    state = _OfflineState()
    ee.Reset()
    ee.data._install_cloud_api_resource = lambda: None  # discovery document fetch
    ee.data.getAlgorithms = lambda: table
    ee.deprecation._FetchDataCatalogStac = lambda: {}  # data catalog STAC fetch
    # no credentials (None) and an explicit project: nothing is read from ~/.config/earthengine
    ee.Initialize(credentials=None, project=OFFLINE_PROJECT)
    return state


@contextlib.contextmanager
def offline_ee() -> Iterator[None]:
    """Context manager form of :func:`initialize`."""
    state = initialize()
    try:
        yield
    finally:
        state.restore()


def algorithm_names() -> set[str]:
    return set(algorithm_table())
