"""Shared fixtures. Real data is read from ../shared/data beside the project root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "optsar_nb" / "demo_scene"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; fails (never skips) in CI when it is missing."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real data folder {SHARED_DATA} is missing in CI")
        pytest.skip(f"real data folder {SHARED_DATA} is missing")
    return SHARED_DATA


@pytest.fixture(scope="session")
def flanders(shared_data) -> Path:
    return shared_data / "flanders_2017"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The bundled demo scene (tests/test_simulate.py checks it equals its generator's output)."""
    return SAMPLE


# --------------------------------------------------------------------------------------------
# Earth Engine, offline (see tests/ee_support): the real client with its shipped algorithm table
@pytest.fixture(scope="session")
def ee_offline():
    """Initialize earthengine-api with no network and no credentials for the whole session."""
    from ee_support import offline

    state = offline.initialize()
    yield
    state.restore()


@pytest.fixture(scope="session")
def flanders_ee(ee_offline, flanders):
    """(evaluator, cubes): Flanders S2 and S1 registered under their Earth Engine collection ids."""
    from ee_support.cubes import flanders_evaluator

    return flanders_evaluator(flanders)
