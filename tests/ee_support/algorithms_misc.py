"""Elements, dictionaries, lists, numbers, dates, filters, geometries, reducers and arrays."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from . import reducers as R
from .algorithms import algorithm
from .values import NATIVE, OTHER, Date, Feature, Filter, Geometry, Projection, get_property, replace


# --------------------------------------------------------------------------------------------
# elements and dictionaries
@algorithm("Element.get")
def _get(ev, object, property):
    return get_property(object, property)


@algorithm("Element.set")
def _set(ev, object, key, value=None):
    return replace(object, props={**object.props, key: value})


@algorithm("Element.setMulti")
def _set_multi(ev, object, properties):
    return replace(object, props={**object.props, **properties})


@algorithm("Dictionary")
def _dictionary(ev, input=None):
    return dict(input or {})


@algorithm("Dictionary.get")
def _dict_get(ev, dictionary, key, defaultValue=None):
    if key not in dictionary and defaultValue is None:
        raise KeyError(f"Dictionary.get: no key {key!r} in {sorted(dictionary)}")
    return dictionary.get(key, defaultValue)


@algorithm("Dictionary.combine")
def _dict_combine(ev, first, second, overwrite=True):
    return {**first, **second} if overwrite else {**second, **first}


# --------------------------------------------------------------------------------------------
# lists
@algorithm("List.add")
def _list_add(ev, list, element):
    return [*list, element]


@algorithm("List.get")
def _list_get(ev, list, index):
    return list[int(index)]


@algorithm("List.slice")
def _list_slice(ev, list, start, end=None, step=None):
    return list[int(start): None if end is None else int(end): None if step is None else int(step)]


@algorithm("List.size")
def _list_size(ev, list):
    return len(list)


@algorithm("List.distinct")
def _list_distinct(ev, list):
    out = []
    for v in list:
        if v not in out:
            out.append(v)
    return out


@algorithm("List.sort")
def _list_sort(ev, list, keys=None):
    if keys is None:
        return sorted(list)
    return [v for _, v in sorted(zip(keys, list), key=lambda kv: kv[0])]


@algorithm("List.map")
def _list_map(ev, list, baseAlgorithm, dropNulls=False):
    out = [baseAlgorithm(v) for v in list]
    return [v for v in out if v is not None] if dropNulls else out


@algorithm("List.iterate")
def _list_iterate(ev, list, function, first):
    acc = first
    for v in list:
        acc = function(v, acc)
    return acc


@algorithm("List.sequence")
def _list_sequence(ev, start, end=None, step=1, count=None):
    if count is not None:
        return [start + i * step for i in range(int(count))]
    return list(np.arange(start, end + step / 2, step).tolist())


@algorithm("List.zip")
def _list_zip(ev, list, other):
    return [[a, b] for a, b in zip(list, other)]


@algorithm("List.indexOf")
def _list_index(ev, list, element):
    return list.index(element) if element in list else -1


# --------------------------------------------------------------------------------------------
# numbers
def _num(fn):
    return lambda ev, left, right: float(fn(left, right))


for _name, _fn in {
    "add": lambda a, b: a + b, "subtract": lambda a, b: a - b, "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a / b if b != 0 else 0.0, "max": max, "min": min,
    "lt": lambda a, b: a < b, "gt": lambda a, b: a > b, "lte": lambda a, b: a <= b, "gte": lambda a, b: a >= b,
    "eq": lambda a, b: a == b, "pow": lambda a, b: a ** b,
}.items():
    algorithm(f"Number.{_name}")(_num(_fn))


@algorithm("Number.floor")
def _floor(ev, input):
    return float(math.floor(input))


@algorithm("Number.int", "Number.toInt", "Number.round")
def _int(ev, input):
    return float(int(round(input)))


# --------------------------------------------------------------------------------------------
# dates
def to_millis(value) -> float:
    if isinstance(value, Date):
        return value.millis
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp() * 1000.0


@algorithm("Date")
def _date(ev, value, timeZone=None):
    return Date(to_millis(value))


@algorithm("Date.millis")
def _date_millis(ev, date):
    return date.millis


@algorithm("Date.advance")
def _date_advance(ev, date, delta, unit, timeZone=None):
    ms = {"second": 1e3, "minute": 6e4, "hour": 3.6e6, "day": 8.64e7, "week": 6.048e8}
    if unit not in ms:
        raise NotImplementedError(f"Date.advance by {unit!r}")
    return Date(date.millis + delta * ms[unit])


@algorithm("DateRange")
def _date_range(ev, start, end=None, timeZone=None):
    s = to_millis(start)
    return (s, to_millis(end) if end is not None else s + 1)


# --------------------------------------------------------------------------------------------
# filters
def _field_filter(compare):
    def impl(ev, leftField=None, rightValue=None, rightField=None, leftValue=None, **kw):
        def fn(element, other):
            left = get_property(element, leftField) if leftField is not None else leftValue
            if rightField is not None:
                right = get_property(other if other is not None else element, rightField)
            else:
                right = rightValue
            return left is not None and right is not None and compare(left, right, kw)

        return Filter(fn)

    return impl


algorithm("Filter.equals")(_field_filter(lambda a, b, kw: a == b))
algorithm("Filter.notEquals")(_field_filter(lambda a, b, kw: a != b))
algorithm("Filter.lessThan")(_field_filter(lambda a, b, kw: a < b))
algorithm("Filter.greaterThan")(_field_filter(lambda a, b, kw: a > b))
algorithm("Filter.lessThanOrEquals")(_field_filter(lambda a, b, kw: a <= b))
algorithm("Filter.greaterThanOrEquals")(_field_filter(lambda a, b, kw: a >= b))
algorithm("Filter.listContains")(_field_filter(lambda a, b, kw: b in a))
algorithm("Filter.inList")(_field_filter(lambda a, b, kw: a in b))
algorithm("Filter.maxDifference")(_field_filter(lambda a, b, kw: abs(to_millis(a) - to_millis(b)) <= kw["difference"]))


@algorithm("Filter.dateRangeContains")
def _date_range_contains(ev, leftField=None, rightValue=None, rightField=None, leftValue=None):
    start, end = leftValue

    def fn(element, other):
        t = get_property(element, rightField) if rightField is not None else to_millis(rightValue)
        return t is not None and start <= t < end  # end exclusive, as filterDate

    return Filter(fn)


@algorithm("Filter.intersects")
def _intersects(ev, leftField=None, rightValue=None, rightField=None, leftValue=None, maxError=None):
    """Every image covers the grid (footprints are not modelled): keep all if the geometry touches it."""
    geometry = rightValue.geometry if isinstance(rightValue, Feature) else rightValue
    touches = bool(geometry.pixel_mask(ev.grid).any())
    return Filter(lambda element, other: touches)


@algorithm("Filter.and")
def _and(ev, filters):
    return Filter(lambda e, o: all(f.fn(e, o) for f in filters))


@algorithm("Filter.or")
def _or(ev, filters):
    return Filter(lambda e, o: any(f.fn(e, o) for f in filters))


@algorithm("Filter.not")
def _not(ev, filter):
    return Filter(lambda e, o: not filter.fn(e, o))


@algorithm("Filter.rangeContains")
def _range_contains(ev, field, minValue, maxValue):
    return Filter(lambda e, o: get_property(e, field) is not None and minValue <= get_property(e, field) <= maxValue)


# --------------------------------------------------------------------------------------------
# geometries and projections
@algorithm("GeometryConstructors.Polygon", "GeometryConstructors.MultiPolygon")
def _polygon(ev, coordinates, crs=None, geodesic=None, maxError=None, evenOdd=True):
    if crs is not None and crs.crs not in ("EPSG:4326",):
        raise NotImplementedError(f"geometries in {crs.crs}: the evaluator models EPSG:4326 geometries only")
    depth = 0
    c = coordinates
    while isinstance(c, list):
        depth, c = depth + 1, c[0] if c else None
    kind = "Polygon" if depth == 3 else "MultiPolygon"
    return Geometry({"type": kind, "coordinates": coordinates}, bool(geodesic))


@algorithm("GeometryConstructors.Point")
def _point(ev, coordinates, crs=None):
    if crs is not None and crs.crs not in ("EPSG:4326",):
        raise NotImplementedError(f"geometries in {crs.crs}: the evaluator models EPSG:4326 geometries only")
    return Geometry({"type": "Point", "coordinates": [float(c) for c in coordinates]})


@algorithm("Feature")
def _feature(ev, geometry=None, metadata=None, geometryKey=None):
    return Feature(geometry, dict(metadata or {}))


@algorithm("Projection")
def _projection(ev, crs, transform=None, transformWkt=None):
    """ee.Projection(crs, transform): the cube's grid (NATIVE) when both match it, else OTHER."""
    from pyproj import CRS

    same = CRS.from_user_input(crs) == CRS.from_user_input(ev.grid.crs)
    if transform is not None:
        same = same and np.allclose(np.asarray(transform, float), ev.grid.transform[:6])
    return Projection(crs=crs, kind=NATIVE if same else OTHER, transform=transform)


# --------------------------------------------------------------------------------------------
# reducers
for _kind in ("count", "sum", "mean", "stdDev"):
    algorithm(f"Reducer.{_kind}")(lambda ev, _k=_kind: R.simple(_k))
for _kind in ("min", "max"):
    algorithm(f"Reducer.{_kind}")(lambda ev, numInputs=1, _k=_kind: R.simple(_k))


@algorithm("Reducer.median")
def _median(ev, maxBuckets=None, minBucketWidth=None, maxRaw=None):
    return R.simple("percentile", ["median"], percentiles=[50], minBucketWidth=minBucketWidth)


@algorithm("Reducer.percentile")
def _percentile(ev, percentiles, outputNames=None, maxBuckets=None, minBucketWidth=None, maxRaw=None):
    names = outputNames or [f"p{int(p) if float(p).is_integer() else p}" for p in percentiles]
    return R.simple("percentile", names, percentiles=list(percentiles), minBucketWidth=minBucketWidth)


@algorithm("Reducer.intervalMean")
def _interval_mean(ev, minPercentile, maxPercentile, maxBuckets=None, minBucketWidth=None, maxRaw=None):
    return R.simple("intervalMean", ["mean"], minPercentile=minPercentile, maxPercentile=maxPercentile)


@algorithm("Reducer.toList")
def _to_list(ev, tupleSize=None, numOptional=0):
    return R.simple("toList", ["list"], n_inputs=int(tupleSize or 1), tupleSize=tupleSize)


@algorithm("Reducer.centeredCovariance")
def _centered_covariance(ev):
    return R.simple("centeredCovariance", ["array"])


@algorithm("Reducer.robustLinearRegression")
def _robust(ev, numX, numY=1, beta=None):
    return R.simple("robustLinearRegression", ["coefficients", "residuals"], n_inputs=int(numX + numY),
                    numX=int(numX), numY=int(numY), beta=beta)


@algorithm("Reducer.combine")
def _combine(ev, reducer1, reducer2, outputPrefix="", sharedInputs=False):
    return R.combine(reducer1, reducer2, outputPrefix or "", bool(sharedInputs))


@algorithm("Reducer.unweighted")
def _unweighted(ev, reducer):
    return reducer  # masks are on/off here, so weights are already 1


# --------------------------------------------------------------------------------------------
# arrays (ee.Array values, not array images)
@algorithm("Array")
def _array(ev, values, pixelType=None):
    return np.asarray(values, dtype="float64")


@algorithm("Array.eigen")
def _eigen(ev, input):
    """Rows: eigenvalue then eigenvector, sorted by decreasing eigenvalue (Earth Engine's layout)."""
    w, v = np.linalg.eigh(np.asarray(input, "float64"))
    order = np.argsort(w)[::-1]
    return np.column_stack([w[order], v[:, order].T])


@algorithm("Array.slice")
def _array_slice(ev, array, axis=0, start=0, end=None, step=1):
    idx = [slice(None)] * array.ndim
    idx[int(axis)] = slice(int(start), None if end is None else int(end), int(step))
    return array[tuple(idx)]


@algorithm("Array.matrixMultiply")
def _array_matmul(ev, left, right):
    return np.asarray(left) @ np.asarray(right)


@algorithm("Array.transpose", "Array.matrixTranspose")
def _array_transpose(ev, array, axis1=0, axis2=1):
    return np.swapaxes(np.asarray(array), int(axis1), int(axis2))



# --------------------------------------------------------------------------------------------
# strings, conditionals, dictionaries of lists
@algorithm("String")
def _string(ev, input):
    return str(input)


@algorithm("If")
def _if(ev, condition, trueCase, falseCase):
    """Registered so the algorithm counts as implemented; the evaluator computes If lazily
    itself (``Evaluator._if``) and never calls this."""
    raise AssertionError("If is evaluated lazily by the evaluator")


@algorithm("Number.and")
def _num_and(ev, left, right):
    return float(bool(left) and bool(right))


@algorithm("Number.or")
def _num_or(ev, left, right):
    return float(bool(left) or bool(right))


@algorithm("Dictionary.values")
def _dict_values(ev, dictionary, keys=None):
    return [dictionary[k] for k in (keys if keys is not None else sorted(dictionary))]


@algorithm("Dictionary.fromLists")
def _dict_from_lists(ev, keys, values):
    return dict(zip(keys, values))


@algorithm("Collection")
def _collection(ev, features):
    from .values import Collection

    return Collection(list(features))
