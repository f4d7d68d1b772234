"""Earth Engine reducers over numpy samples.

A reducer reduces ``inputs`` (a list of ``(N, P)`` float arrays, or ``(N, P, k)`` for array
inputs) with a validity mask ``valid`` ``(N, P)`` to ``{output: (values (P, ...), ok (P,))}``:
N samples (images of a collection, or pixels of a region) for P independent reductions (pixels
of an image, or 1 for a region). Samples are used where ``valid``; for multi-input reducers a
sample is valid only where all its inputs are (Earth Engine drops a sample with any input masked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Outputs = dict  # name -> (values, ok)


@dataclass
class Reducer:
    kind: str
    outputs: list[str]
    n_inputs: int = 1
    params: dict = field(default_factory=dict)
    parts: list = field(default_factory=list)  # combine: (reducer, prefix)
    shared: bool = False

    def reduce(self, inputs: list[np.ndarray], valid: np.ndarray, *, percentile_mode: str = "exact") -> Outputs:
        if self.kind == "combine":
            out: Outputs = {}
            offset = 0
            for reducer, prefix in self.parts:
                sub = inputs if self.shared else inputs[offset: offset + reducer.n_inputs]
                offset += 0 if self.shared else reducer.n_inputs
                for name, value in reducer.reduce(sub, valid, percentile_mode=percentile_mode).items():
                    out[prefix + name] = value
            return out
        return _KINDS[self.kind](self, inputs, valid, percentile_mode)


def simple(kind: str, outputs: list[str] | None = None, n_inputs: int = 1, **params) -> Reducer:
    return Reducer(kind=kind, outputs=outputs or [kind], n_inputs=n_inputs, params=params)


def combine(first: Reducer, second: Reducer, prefix: str, shared: bool) -> Reducer:
    parts = (first.parts if first.kind == "combine" and first.shared == shared else [(first, "")]) + [(second, prefix)]
    n_inputs = first.n_inputs if shared else first.n_inputs + second.n_inputs
    outputs = [p + o for r, p in parts for o in r.outputs]
    return Reducer(kind="combine", outputs=outputs, n_inputs=n_inputs, parts=parts, shared=shared)


# --------------------------------------------------------------------------------------------
def _masked(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, x, np.nan)


def _count(r, inputs, valid, mode):
    n = valid.sum(axis=0).astype("float64")
    return {r.outputs[0]: (n, np.ones_like(n, bool))}


def _sum(r, inputs, valid, mode):
    # an empty sum is 0, as Earth Engine's reduceRegion returns for a region with no pixel
    s = np.nansum(_masked(inputs[0], valid), axis=0)
    return {r.outputs[0]: (s, np.ones_like(s, bool))}


def _moment(r, inputs, valid, mode):
    x = _masked(inputs[0], valid)
    n = valid.sum(axis=0)
    ok = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(x, axis=0) / np.maximum(n, 1)
        if r.kind == "mean":
            return {r.outputs[0]: (np.where(ok, mean, np.nan), ok)}
        var = np.nansum((x - mean) ** 2, axis=0) / np.maximum(n, 1)  # population variance
        return {r.outputs[0]: (np.where(ok, np.sqrt(var), np.nan), ok)}


def _extreme(r, inputs, valid, mode):
    x = _masked(inputs[0], valid)
    ok = valid.any(axis=0)
    with np.errstate(invalid="ignore"):
        fn = np.nanmin if r.kind == "min" else np.nanmax
        v = fn(np.where(ok[None], x, 0.0), axis=0)
    return {r.outputs[0]: (np.where(ok, v, np.nan), ok)}


def exact_quantile(x: np.ndarray, valid: np.ndarray, q: float) -> np.ndarray:
    """Linear interpolation between order statistics (numpy's default, as the local engine)."""
    s = np.sort(_masked(x, valid), axis=0)  # NaN last
    n = valid.sum(axis=0)
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype("int64")
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    a = np.take_along_axis(s, lo[None], 0)[0]
    b = np.take_along_axis(s, hi[None], 0)[0]
    return np.where(n > 0, a + (b - a) * (pos - lo), np.nan)


def histogram_quantile(x: np.ndarray, valid: np.ndarray, q: float, width: float) -> np.ndarray:
    """A percentile read from a histogram of buckets ``width`` wide, linear within the bucket.

    Emulates the histogram path of Earth Engine's percentile reducers: the result lies in the
    bucket holding the exact order statistic, so it differs from the exact value by < width.
    """
    out = np.full(x.shape[1:], np.nan)
    for p in np.ndindex(*x.shape[1:]):
        v = x[(slice(None), *p)][valid[(slice(None), *p)]]
        if v.size == 0:
            continue
        edges = np.arange(np.floor(v.min() / width) * width, v.max() + width * 1.000001, width)
        counts, edges = np.histogram(v, bins=edges)
        target = q * v.size
        cum = np.cumsum(counts)
        k = int(np.searchsorted(cum, target, side="left"))
        k = min(k, len(counts) - 1)
        before = cum[k] - counts[k]
        frac = (target - before) / counts[k] if counts[k] else 0.0
        out[p] = edges[k] + width * frac
    return out


def _percentile(r, inputs, valid, mode):
    out = {}
    for name, p in zip(r.outputs, r.params["percentiles"]):
        if mode == "histogram":
            width = r.params.get("minBucketWidth") or 1.0
            v = histogram_quantile(inputs[0], valid, p / 100.0, width)
        else:
            v = exact_quantile(inputs[0], valid, p / 100.0)
        out[name] = (v, ~np.isnan(v))
    return out


def _interval_mean(r, inputs, valid, mode):
    """Mean of the inputs whose value lies between the two percentiles (inclusive)."""
    x = inputs[0]
    lo = exact_quantile(x, valid, r.params["minPercentile"] / 100.0)
    hi = exact_quantile(x, valid, r.params["maxPercentile"] / 100.0)
    inside = valid & (x >= lo[None]) & (x <= hi[None])
    n = inside.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(inside, x, 0.0).sum(axis=0) / n
    ok = n > 0
    return {r.outputs[0]: (np.where(ok, mean, np.nan), ok)}


def _to_list(r, inputs, valid, mode):
    keep = valid[:, 0]
    if r.params.get("tupleSize") is None and len(inputs) == 1 and inputs[0].ndim == 2:
        return {r.outputs[0]: (inputs[0][keep, 0].tolist(), np.array([True]))}
    rows = [[inp[i, 0] for inp in inputs] for i in np.flatnonzero(keep)]
    if r.params.get("tupleSize") is None and len(inputs) == 1:
        rows = [row[0] for row in rows]
    return {r.outputs[0]: (rows, np.array([True]))}


def _centered_covariance(r, inputs, valid, mode):
    """Covariance of 1-D array inputs (N, P, n) already centred: X^T X / (N - 1)."""
    x = inputs[0]
    out = []
    for p in range(x.shape[1]):
        v = x[valid[:, p], p]
        out.append(v.T @ v / max(len(v) - 1, 1))
    return {r.outputs[0]: (np.stack(out), np.array([len(x) > 1] * x.shape[1]))}


def _robust_regression(r, inputs, valid, mode):
    from .regression import robust_linear_regression

    num_x, num_y = r.params["numX"], r.params["numY"]
    x = np.stack(inputs[:num_x], axis=-1)  # (N, P, numX)
    y = np.stack(inputs[num_x: num_x + num_y], axis=-1)  # (N, P, numY)
    coef, resid, ok = robust_linear_regression(x, y, valid, beta=r.params.get("beta"))
    return {"coefficients": (coef, ok), "residuals": (resid, ok)}


_KINDS = {
    "count": _count, "sum": _sum, "mean": _moment, "stdDev": _moment, "min": _extreme, "max": _extreme,
    "percentile": _percentile, "intervalMean": _interval_mean, "toList": _to_list,
    "centeredCovariance": _centered_covariance, "robustLinearRegression": _robust_regression,
}
