"""The registry of Earth Engine algorithms the evaluator implements (name -> function).

Each implementation takes the evaluator and the algorithm's arguments by their Earth Engine
names (omitted optional arguments arrive with the algorithm table's defaults).
"""

from __future__ import annotations

REGISTRY: dict = {}


def algorithm(*names: str):
    """Register a function under one or more Earth Engine algorithm names."""

    def wrap(fn):
        for name in names:
            if name in REGISTRY:
                raise RuntimeError(f"algorithm {name} registered twice")
            REGISTRY[name] = fn
        return fn

    return wrap


from . import algorithms_collection, algorithms_image, algorithms_misc  # noqa: E402,F401  (registration)
