"""A numpy interpreter of serialized Earth Engine graphs, for tests.

``Evaluator.evaluate(obj)`` serializes an ``ee`` object with the client's own serializer
(``ee.serializer.encode(obj, for_cloud_api=True)``, the request body the server would get) and
interprets that expression: ``constantValue``, ``arrayValue``, ``dictionaryValue``,
``valueReference`` (shared subexpressions, each closed one computed once),
``functionInvocationValue`` (a named algorithm, or ``functionReference`` to a defined function),
``functionDefinitionValue`` with ``argumentReference`` (the bodies of ``map``, ``iterate`` and
``List.map``, evaluated with lexical scoping). Algorithm arguments omitted in the graph take the
defaults of the client's algorithm table, so each implementation sees the server's signature.

Data come from local cubes registered under Earth Engine collection ids (``register``), all on
one pixel grid. What this interpreter deliberately does not model, so tests cannot see it:

* projections and scales: ``scale``, ``crs``, ``crsTransform``, ``reproject`` and export
  projections are accepted and ignored; every image is already on the one grid, aligned by the
  test's cube loader with nearest-neighbour resampling (Earth Engine's default);
* image footprints: every image covers the whole grid, so ``filterBounds`` keeps an image when the
  geometry touches the grid, and ``unmask(sameFootprint=...)`` cannot differ;
* weighted reductions: masks are on/off, so weighted and unweighted reducers agree;
* ``maxPixels``, ``bestEffort``, ``tileScale``, ``parallelScale``: no limits are enforced;
* the percentile family (percentile, median, intervalMean) is exact with linear interpolation
  between order statistics (``percentile_mode="exact"``); Earth Engine computes these exactly
  only up to ``maxRaw`` inputs and from a histogram beyond. ``percentile_mode="histogram"``
  emulates the histogram path (buckets of ``minBucketWidth``) so tests can bound the difference.

An algorithm the evaluator lacks raises NotImplementedError naming it.
"""

from __future__ import annotations

from typing import Any

import ee

from . import algorithms as _algorithms
from .values import Closure, Collection, Grid

PERCENTILE_MODES = ("exact", "histogram")


class Evaluator:
    """Interprets serialized graphs over registered collections on one grid."""

    def __init__(self, grid: Grid, *, percentile_mode: str = "exact"):
        if percentile_mode not in PERCENTILE_MODES:
            raise ValueError(f"percentile_mode must be one of {PERCENTILE_MODES}")
        from .offline import algorithm_table

        self.grid = grid
        self.percentile_mode = percentile_mode
        self.collections: dict[str, Collection] = {}
        self.signatures = algorithm_table()
        self.calls: dict[str, int] = {}  # algorithm name -> invocation count (for coverage reports)

    # ----------------------------------------------------------------------------------------
    def register(self, collection_id: str, collection: Collection) -> None:
        """Make ``ee.ImageCollection(collection_id)`` load ``collection``."""
        self.collections[collection_id] = collection

    def evaluate(self, obj: Any) -> Any:
        """Evaluate an ee object (or an already encoded expression dict)."""
        expr = obj if isinstance(obj, dict) and "values" in obj else ee.serializer.encode(obj, for_cloud_api=True)
        return self.run(expr)

    def run(self, expr: dict) -> Any:
        values = expr["values"]
        self._values = values
        self._cache: dict[str, Any] = {}
        self._free: dict[str, frozenset] = {}
        self._node_cache: dict[int, Any] = {}  # id(node) -> value, for closed inline invocations
        self._node_free_cache: dict[int, frozenset] = {}
        return self._ref(expr["result"], {})

    # ----------------------------------------------------------------------------------------
    def _free_vars(self, ref: str) -> frozenset:
        """Argument names a value refers to without binding them (closed values are cached)."""
        if ref not in self._free:
            self._free[ref] = frozenset()  # graphs are acyclic; guards against self reference
            self._free[ref] = self._node_free(self._values[ref])
        return self._free[ref]

    def _node_free(self, node: dict) -> frozenset:
        key = id(node)
        if key not in self._node_free_cache:
            self._node_free_cache[key] = self._node_free_uncached(node)
        return self._node_free_cache[key]

    def _node_free_uncached(self, node: dict) -> frozenset:
        (kind, body), = node.items()
        if kind == "argumentReference":
            return frozenset([body])
        if kind == "valueReference":
            return self._free_vars(body)
        if kind == "arrayValue":
            return frozenset().union(*(self._node_free(v) for v in body["values"]))
        if kind == "dictionaryValue":
            return frozenset().union(*(self._node_free(v) for v in body["values"].values()))
        if kind == "functionInvocationValue":
            out = frozenset().union(*(self._node_free(v) for v in body.get("arguments", {}).values()))
            if "functionReference" in body:
                out |= self._free_vars(body["functionReference"])
            return out
        if kind == "functionDefinitionValue":
            return self._free_vars(body["body"]) - set(body["argumentNames"])
        return frozenset()

    def _ref(self, ref: str, env: dict) -> Any:
        closed = not self._free_vars(ref)
        if closed and ref in self._cache:
            return self._cache[ref]
        value = self._node(self._values[ref], env if not closed else {})
        if closed:
            self._cache[ref] = value
        return value

    def _node(self, node: dict, env: dict) -> Any:
        (kind, body), = node.items()
        if kind == "constantValue":
            return body
        if kind == "integerValue":
            return int(body)
        if kind == "valueReference":
            return self._ref(body, env)
        if kind == "argumentReference":
            if body not in env:
                raise KeyError(f"unbound argument {body!r} in the graph")
            return env[body]
        if kind == "arrayValue":
            return [self._node(v, env) for v in body["values"]]
        if kind == "dictionaryValue":
            return {k: self._node(v, env) for k, v in body["values"].items()}
        if kind == "functionDefinitionValue":
            return Closure(list(body["argumentNames"]), body["body"], env, self)
        if kind == "functionInvocationValue":
            # a closed invocation inside a function body is the same value at every call:
            # compute it once (the serializer inlines such subexpressions in bodies)
            closed = env and not self._node_free(node)
            if closed and id(node) in self._node_cache:
                return self._node_cache[id(node)]
            value = self._invocation(body, env)
            if closed:
                self._node_cache[id(node)] = value
            return value
        raise NotImplementedError(f"graph node kind {kind!r} is not supported by the evaluator")

    def _invocation(self, body: dict, env: dict) -> Any:
        if body.get("functionName") == "If":  # lazy: only the chosen branch is computed
            return self._if(body.get("arguments", {}), env)
        args = {k: self._node(v, env) for k, v in body.get("arguments", {}).items()}
        if "functionReference" in body:
            return self._ref(body["functionReference"], env)(**args)
        return self.invoke(body["functionName"], args)

    def _if(self, arguments: dict, env: dict) -> Any:
        """ee.Algorithms.If: "Selects one of its inputs based on a condition" - the one chosen
        only, as the server computes values on demand; the other branch may be invalid. The
        condition is read as the reference says: "Numbers that are equal to 0 or a NaN are
        false. Empty strings, lists and dictionaries are false. Null is false. Everything else
        is true." """
        condition = self._node(arguments["condition"], env) if "condition" in arguments else None
        if isinstance(condition, bool):
            true = condition
        elif isinstance(condition, (int, float)):
            true = condition == condition and condition != 0
        elif isinstance(condition, (str, list, dict)):
            true = len(condition) > 0
        else:
            true = condition is not None
        self.calls["If"] = self.calls.get("If", 0) + 1
        chosen = arguments.get("trueCase" if true else "falseCase")
        return None if chosen is None else self._node(chosen, env)

    def call_closure(self, closure: Closure, args: tuple) -> Any:
        if len(args) != len(closure.arg_names):
            raise TypeError(f"function of {closure.arg_names} called with {len(args)} arguments")
        env = {**closure.env, **dict(zip(closure.arg_names, args))}
        return self._ref(closure.body, env)

    def invoke(self, name: str, args: dict) -> Any:
        impl = _algorithms.REGISTRY.get(name)
        if impl is None:
            raise NotImplementedError(
                f"the test evaluator does not implement the Earth Engine algorithm {name!r}: "
                f"add it to tests/ee_support (arguments: {sorted(args)})"
            )
        signature = self.signatures.get(name)
        if signature is not None:
            for arg in signature.get("args", []):
                if arg["name"] not in args and arg.get("optional"):
                    args[arg["name"]] = arg.get("default")
        self.calls[name] = self.calls.get(name, 0) + 1
        return impl(self, **args)


def implemented_algorithms() -> set[str]:
    """Names of the Earth Engine algorithms the evaluator interprets."""
    return set(_algorithms.REGISTRY)


def nodes(expr):
    """Every dict node of an encoded expression, depth first; constant values are not entered."""
    if isinstance(expr, dict):
        yield expr
        for key, value in expr.items():
            if key != "constantValue":
                yield from nodes(value)
    elif isinstance(expr, list):
        for value in expr:
            yield from nodes(value)


def algorithms_in(expr: dict) -> set[str]:
    """Every algorithm name an encoded expression invokes."""
    return {node["functionName"] for node in nodes(expr) if "functionName" in node}


def encode(obj) -> dict:
    return ee.serializer.encode(obj, for_cloud_api=True)


def constants_of(expr: dict) -> list:
    """Every constantValue in an encoded expression (for assertions on ids, bits, thresholds)."""
    return [node["constantValue"] for node in nodes(expr) if "constantValue" in node]
