"""Test support for the Earth Engine engine: an offline client and a numpy graph evaluator.

Nothing here is part of the package. ``offline`` initializes the real earthengine-api client
with no network and no credentials; ``evaluator`` interprets the graphs it serializes over
local cubes registered under Earth Engine collection ids (``cubes``).
"""
