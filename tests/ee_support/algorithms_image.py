"""Image algorithms: band algebra, masks, selection, casts, neighbourhoods, arrays, regions.

Properties: band algebra and casts return images without properties (as the server does, so a
graph that forgets ``copyProperties``/``set`` fails here too); selection, renaming, masking,
clipping, ``addBands`` and ``set`` keep the input's properties.
"""

from __future__ import annotations

import re

import numpy as np

from .algorithms import algorithm
from .values import DEFAULT, NATIVE, OTHER, Band, Geometry, Image, Kernel, Projection


def constant_image(ev, value, name: str = "constant") -> Image:
    if isinstance(value, Image):
        return value
    arr = np.asarray(value, dtype="float64")
    full = np.broadcast_to(arr, (*ev.grid.shape, *arr.shape)).copy()
    # a constant has Earth Engine's default projection (WGS84 at 1 degree), as composites do
    return Image({name: Band(full, np.ones(ev.grid.shape, bool), DEFAULT)})


@algorithm("Image.constant")
def _constant(ev, value):
    if isinstance(value, list):
        names = ["constant"] + [f"constant_{i}" for i in range(1, len(value))]
        bands = {n: constant_image(ev, v).bands["constant"] for n, v in zip(names, value)}
        return Image(bands)
    return constant_image(ev, value)


@algorithm("Image.random")
def _random(ev, seed=0, distribution="uniform"):
    """ee.Image.random: "Generates a random number at each pixel location. When using the
    'uniform' distribution, outputs are in the range of [0, 1)." Deterministic per seed, as the
    server's; not its values."""
    rng = np.random.default_rng(int(seed))
    data = rng.random(ev.grid.shape) if distribution == "uniform" else rng.standard_normal(ev.grid.shape)
    return Image({"random": Band(data, np.ones(ev.grid.shape, bool), DEFAULT)})


def _proj_of(*bands: Band) -> str:
    """The projection of a band computed from ``bands``: the first that has one, DEFAULT if none.

    Earth Engine does not document how band math propagates projections; this assumes that
    constants and composites (DEFAULT) do not constrain an image that has a projection. Graphs
    should not rely on it: every reduction names its projection (see ``Image.reduceRegion``).
    """
    return next((b.proj for b in bands if b.proj != DEFAULT), DEFAULT)


def _pairs(a: Image, b: Image):
    """Earth Engine's band matching: a 1-band image applies to every band of the other."""
    na, nb = len(a.bands), len(b.bands)
    la, lb = list(a.bands.values()), list(b.bands.values())
    if na == 1 and nb > 1:
        return list(b.bands), [(la[0], x) for x in lb]
    if nb == 1:
        return list(a.bands), [(x, lb[0]) for x in la]
    if na != nb:
        raise ValueError(f"band count mismatch {a.names} vs {b.names}")
    return list(a.bands), list(zip(la, lb))


def binary(fn):
    def impl(ev, image1, image2):
        a, b = constant_image(ev, image1), constant_image(ev, image2)
        names, pairs = _pairs(a, b)
        with np.errstate(all="ignore"):
            bands = {n: Band(np.asarray(fn(x.data, y.data), "float64"), x.mask & y.mask, _proj_of(x, y))
                     for n, (x, y) in zip(names, pairs)}
        return Image(bands)

    return impl


def _divide(x, y):
    # Earth Engine returns 0 for division by zero
    return np.where(y == 0, 0.0, x / np.where(y == 0, 1.0, y))


for _name, _fn in {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": _divide,
    "max": np.maximum, "min": np.minimum, "pow": np.power,
    "eq": lambda x, y: x == y, "neq": lambda x, y: x != y, "gt": lambda x, y: x > y,
    "gte": lambda x, y: x >= y, "lt": lambda x, y: x < y, "lte": lambda x, y: x <= y,
    "and": lambda x, y: (x != 0) & (y != 0), "or": lambda x, y: (x != 0) | (y != 0),
    "bitwiseAnd": lambda x, y: np.bitwise_and(x.astype("int64"), y.astype("int64")),
}.items():
    algorithm(f"Image.{_name}")(binary(_fn))


def unary(fn):
    def impl(ev, value):
        img = constant_image(ev, value)
        with np.errstate(all="ignore"):
            return Image({n: Band(np.asarray(fn(b.data), "float64"), b.mask, b.proj) for n, b in img.bands.items()})

    return impl


for _name, _fn in {
    "not": lambda x: x == 0, "abs": np.abs, "sqrt": np.sqrt, "log10": np.log10, "round": np.round,
    # float images are 32-bit on the server: round, then compute on in float64
    "toFloat": lambda x: x.astype("float32").astype("float64"),
    "float": lambda x: x.astype("float32").astype("float64"),
    "toDouble": lambda x: x, "double": lambda x: x,
    "toInt8": np.trunc, "toInt16": np.trunc, "toInt32": np.trunc, "toUint8": np.trunc, "int": np.trunc,
}.items():
    algorithm(f"Image.{_name}")(unary(_fn))


@algorithm("Image.select")
def _select(ev, input, bandSelectors, newNames=None):
    names = input.names
    chosen: list[str] = []
    for sel in bandSelectors:
        if isinstance(sel, (int, float)):
            chosen.append(names[int(sel)])
            continue
        matched = [n for n in names if re.fullmatch(sel, n)]
        if not matched:
            raise KeyError(f"Image.select: pattern {sel!r} matches none of {names}")
        chosen.extend(matched)
    out = {(newNames[i] if newNames else n): input.bands[n] for i, n in enumerate(chosen)}
    return input.with_bands(out)


@algorithm("Image.rename")
def _rename(ev, input, names):
    if len(names) != len(input.bands):
        raise ValueError(f"Image.rename: {len(names)} names for bands {input.names}")
    return input.with_bands(dict(zip(names, input.bands.values())))


@algorithm("Image.addBands")
def _add_bands(ev, dstImg, srcImg, names=None, overwrite=False):
    """ee.Image.addBands: without ``overwrite`` "the new band will be renamed with a numerical
    suffix (`foo` to `foo_1` unless `foo_1` exists, then `foo_2` unless it exists, etc)"; the
    result keeps the first image's metadata."""
    bands = dict(dstImg.bands)
    for n, b in srcImg.bands.items():
        if names is not None and n not in names:
            continue
        name, k = n, 0
        while name in bands and not overwrite:
            k += 1
            name = f"{n}_{k}"
        bands[name] = b
    return dstImg.with_bands(bands)


@algorithm("Image.updateMask")
def _update_mask(ev, image, mask):
    m = constant_image(ev, mask)
    if len(m.bands) > 1:
        names, pairs = _pairs(image, m)
    else:
        only = list(m.bands.values())[0]
        names, pairs = image.names, [(b, only) for b in image.bands.values()]
    return image.with_bands({n: Band(x.data, x.mask & y.mask & (y.data != 0), x.proj)
                             for n, (x, y) in zip(names, pairs)})


@algorithm("Image.mask")
def _mask(ev, image, mask=None):
    if mask is not None:
        return _update_mask(ev, image, mask)
    full = np.ones(ev.grid.shape, bool)
    return Image({n: Band(b.mask.astype("float64"), full, b.proj) for n, b in image.bands.items()})


@algorithm("Image.selfMask")
def _self_mask(ev, image):
    return image.with_bands({n: Band(b.data, b.mask & (b.data != 0), b.proj) for n, b in image.bands.items()})


@algorithm("Image.unmask")
def _unmask(ev, input, value=None, sameFootprint=True):
    # footprints are not modelled (every image covers the grid), so sameFootprint cannot matter
    fill = constant_image(ev, 0.0 if value is None else value)
    names, pairs = _pairs(input, fill)
    return input.with_bands({
        n: Band(np.where(x.mask, x.data, y.data), x.mask | y.mask, _proj_of(x, y)) for n, (x, y) in zip(names, pairs)
    })


@algorithm("Image.where")
def _where(ev, input, test, value):
    """ee.Image.where: "For each pixel in each band of 'input', if the corresponding pixel in
    'test' is nonzero, output the corresponding pixel in value, otherwise output the input pixel.
    If at a given pixel, either test or value is masked, the input value is used. If the input is
    masked, nothing is done. [...] The output image retains the metadata and footprint of the
    input image." """
    t, v = constant_image(ev, test), constant_image(ev, value)
    out = {}
    for i, (n, b) in enumerate(input.bands.items()):
        tb = list(t.bands.values())[min(i, len(t.bands) - 1)]
        vb = list(v.bands.values())[min(i, len(v.bands) - 1)]
        replace = b.mask & tb.mask & (tb.data != 0) & vb.mask
        out[n] = Band(np.where(replace, vb.data, b.data), b.mask, b.proj)
    return input.with_bands(out)


@algorithm("Image.remap")
def _remap(ev, image, to, defaultValue=None, bandName=None, **kw):
    src = kw["from"]
    name = bandName or image.names[0]
    b = image.bands[name]
    out = np.full(b.data.shape, np.nan if defaultValue is None else float(defaultValue))
    hit = np.zeros(b.data.shape, bool)
    for f, t in zip(src, to):
        sel = b.data == f
        out[sel], hit = float(t), hit | sel
    mask = b.mask & (hit if defaultValue is None else True)
    return Image({name: Band(out, mask, b.proj)})


@algorithm("Image.clip")
def _clip(ev, input, geometry):
    inside = (geometry.geometry if not isinstance(geometry, Geometry) else geometry).pixel_mask(ev.grid)
    return input.with_bands({n: Band(b.data, b.mask & inside, b.proj) for n, b in input.bands.items()})


@algorithm("Image.projection")
def _projection(ev, image):
    """ee.Image.projection: "Returns the default projection of an Image. Throws an error if the
    bands of the image don't all have the same projection." """
    kinds = {b.proj for b in image.bands.values()}
    if len(kinds) > 1:
        raise ValueError(f"Image.projection: the bands {image.names} do not all have the same projection ({kinds})")
    kind = kinds.pop() if kinds else DEFAULT
    if kind == NATIVE:
        return Projection(crs=ev.grid.crs, kind=kind, transform=ev.grid.transform[:6])
    return Projection(kind=kind)


@algorithm("Image.reproject", "Image.setDefaultProjection")
def _reproject(ev, image, crs=None, crsTransform=None, scale=None):
    """The image in the projection ``crs`` (with ``crsTransform`` or ``scale``): the cube's grid
    only (an image on another grid would need resampling, which the evaluator refuses)."""
    kind = requested_grid(ev, "Image.reproject/setDefaultProjection", crs, crsTransform, scale, None)
    if kind != NATIVE:
        raise NotImplementedError("Image.reproject/setDefaultProjection onto a grid other than the cube's is not "
                                  "modelled: the evaluator computes on the cube's grid only")
    return image.with_bands({n: Band(b.data, b.mask, NATIVE) for n, b in image.bands.items()})


def requested_grid(ev, call: str, crs, crsTransform, scale, first: Band | None) -> str:
    """The kind of grid (NATIVE, DEFAULT, OTHER) a call asks for with its ``crs``, ``crsTransform``
    and ``scale`` (``first``: the input's first band, whose projection applies when ``crs`` is
    not given, as reduceRegion's reference says: "crs: The projection to work in. If
    unspecified, the projection of the image's first band is used. If specified in addition to
    scale, rescaled to the specified scale")."""
    if crs is None:
        kind = first.proj if first is not None else DEFAULT
    elif isinstance(crs, Projection):
        kind = crs.kind
    else:
        kind = NATIVE if _same_crs(str(crs), ev.grid.crs) else OTHER
    if crsTransform is not None and kind != DEFAULT:
        kind = NATIVE if np.allclose(np.asarray(crsTransform, float), ev.grid.transform[:6]) else OTHER
    if scale is not None:
        kind = NATIVE if kind == NATIVE and np.isclose(float(scale), abs(ev.grid.transform[0])) else OTHER
    return kind


def _same_crs(a: str, b: str) -> bool:
    from pyproj import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def require_grid(ev, call: str, crs, crsTransform, scale, first: Band | None) -> None:
    """Refuse a reduction asked of any grid but the cube's: on the server a reduction in Earth
    Engine's default projection (a composite's or a constant's ``projection()``, or no ``crs``
    on such an image) runs on a 1-degree grid, and another grid would need resampling."""
    kind = requested_grid(ev, call, crs, crsTransform, scale, first)
    if kind == DEFAULT:
        raise ValueError(f"{call} would run in Earth Engine's default projection (WGS84, 1 degree pixels): it was "
                         "given no crs, or the projection() of a composite or constant. Pass the optical native "
                         "projection (crs with crsTransform or scale)")
    if kind != NATIVE:
        raise ValueError(f"{call} asks for a grid other than the cube's ({crs!r}, crsTransform={crsTransform}, "
                         f"scale={scale}); the evaluator would have to resample")


@algorithm("Image.bandNames")
def _band_names(ev, image):
    return image.names


@algorithm("Image.copyProperties", "Element.copyProperties")
def _copy_properties(ev, destination=None, source=None, properties=None, exclude=None):
    from .values import replace

    keys = properties if properties is not None else [k for k in source.props if not k.startswith("system:")]
    copied = {k: source.props[k] for k in keys if k in source.props and k not in (exclude or [])}
    return replace(destination, props={**destination.props, **copied})


# --------------------------------------------------------------------------------------------
# neighbourhoods
def kernel_weights(shape: str, radius: float) -> np.ndarray:
    """Earth Engine's pixel kernels: a (2 ceil(r) + 1)^2 window; circle keeps cells within r."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
    if shape == "circle":
        w = (yy ** 2 + xx ** 2 <= radius ** 2).astype("float64")
    else:
        w = ((np.abs(yy) <= radius) & (np.abs(xx) <= radius)).astype("float64")
    return w


def _windows(data: np.ndarray, mask: np.ndarray, weights: np.ndarray):
    """Stack of shifted copies (k, H, W) for the kernel's non-zero cells; outside the grid is masked."""
    r = weights.shape[0] // 2
    h, w = data.shape
    pad_d = np.pad(data, r, constant_values=np.nan)
    pad_m = np.pad(mask, r, constant_values=False)
    vals, masks = [], []
    for dy, dx in zip(*np.nonzero(weights)):
        vals.append(pad_d[dy: dy + h, dx: dx + w])
        masks.append(pad_m[dy: dy + h, dx: dx + w])
    return np.stack(vals), np.stack(masks)


@algorithm("Image.reduceNeighborhood")
def _reduce_neighborhood(ev, image, reducer, kernel, inputWeight="kernel", skipMasked=True, optimization=None):
    out = {}
    for n, b in image.bands.items():
        _require_pixels(n, b)
        if reducer.kind == "mean":
            out[f"{n}_mean"] = _kernel_mean(b, kernel.weights, skipMasked)
            continue
        vals, masks = _windows(b.data, b.mask, kernel.weights)
        k = vals.shape[0]
        res = reducer.reduce([vals.reshape(k, -1)], masks.reshape(k, -1), percentile_mode=ev.percentile_mode)
        for o, (v, ok) in res.items():
            ok = ok.reshape(b.mask.shape) & (b.mask if skipMasked else True)
            v = np.asarray(v, "float64")
            out[f"{n}_{o}"] = Band(np.asarray(v, "float64").reshape(b.data.shape), ok, b.proj)
    return image.with_bands(out)


def _require_pixels(name: str, b: Band) -> None:
    """A neighbourhood of a band in the default projection has no pixel size of its own: on the
    server its kernel is counted in pixels of whatever grid the output is requested in (the
    Projections guide: "inputs are requested in the output projection")."""
    if b.proj == DEFAULT:
        raise ValueError(f"a neighbourhood operation on band {name!r}, which has Earth Engine's default projection "
                         "(a composite or a constant): give it the optical grid first (setDefaultProjection), or its "
                         "kernel's pixels depend on the grid the output is requested in")


def _kernel_mean(b: Band, weights: np.ndarray, skip_masked: bool) -> Band:
    """Kernel-weighted mean of the unmasked in-grid neighbours (box sums, for speed)."""
    from scipy import ndimage

    sums = ndimage.correlate(np.where(b.mask, b.data, 0.0), weights, mode="constant", cval=0.0)
    norm = ndimage.correlate(b.mask.astype("float64"), weights, mode="constant", cval=0.0)
    ok = norm > 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, sums / np.where(ok, norm, 1.0), 0.0)
    return Band(mean, ok & (b.mask if skip_masked else True), b.proj)


@algorithm("Image.focalMedian", "Image.focal_median")
def _focal_median(ev, image, radius=1.5, kernelType="circle", units="pixels", iterations=1, kernel=None):
    from .reducers import simple

    weights = kernel.weights if kernel is not None else kernel_weights(kernelType, radius)
    reducer = simple("percentile", ["median"], percentiles=[50])
    for _ in range(int(iterations)):
        # focal operations are not skipMasked: a masked centre takes its neighbours' median
        res = _reduce_neighborhood(ev, image, reducer, Kernel(weights), skipMasked=False)
        image = image.with_bands({n: res.bands[f"{n}_median"] for n in image.bands})
    return image


def _kernel_of(shape):
    def impl(ev, radius, units="pixels", normalize=True, magnitude=1.0):
        if units != "pixels":
            raise NotImplementedError(f"Kernel.{shape} in {units!r}: the evaluator models pixel units only")
        w = kernel_weights(shape, radius) * magnitude
        return Kernel(w / w.sum() if normalize else w)

    return impl


algorithm("Kernel.circle")(_kernel_of("circle"))
algorithm("Kernel.square")(_kernel_of("square"))


# --------------------------------------------------------------------------------------------
# regions
@algorithm("Image.reduceRegion")
def _reduce_region(ev, image, reducer, geometry=None, scale=None, crs=None, crsTransform=None,
                   bestEffort=False, maxPixels=1e7, tileScale=1):
    require_grid(ev, "Image.reduceRegion", crs, crsTransform, scale, next(iter(image.bands.values()), None))
    inside = geometry.pixel_mask(ev.grid) if geometry is not None else np.ones(ev.grid.shape, bool)
    bands = list(image.bands.items())
    out = {}
    if reducer.n_inputs == 1:
        for n, b in bands:
            valid = (b.mask & inside).reshape(-1, 1)
            data = b.data.reshape(valid.shape[0], 1, *b.data.shape[2:])
            res = reducer.reduce([data], valid, percentile_mode=ev.percentile_mode)
            for o, (v, ok) in res.items():
                key = n if len(reducer.outputs) == 1 else f"{n}_{o}"
                out[key] = _scalar(v, ok)
        return out
    valid = inside.copy()
    for _, b in bands:
        valid &= b.mask
    data = [b.data.reshape(-1, 1, *b.data.shape[2:]) for _, b in bands]
    res = reducer.reduce(data, valid.reshape(-1, 1), percentile_mode=ev.percentile_mode)
    return {o: _scalar(v, ok) for o, (v, ok) in res.items()}


def _scalar(v, ok):
    if not bool(np.asarray(ok).reshape(-1)[0]):
        return None
    if isinstance(v, list):
        return v
    v = np.asarray(v)[0]
    return v.tolist() if np.ndim(v) else float(v)


# --------------------------------------------------------------------------------------------
# array images
@algorithm("Image.toArray")
def _to_array(ev, image, axis=0):
    bands = list(image.bands.values())
    data = np.stack([b.data for b in bands], axis=-1)
    mask = np.logical_and.reduce([b.mask for b in bands])
    return Image({"array": Band(data, mask, _proj_of(*bands))}, dict(image.props))


@algorithm("Image.arrayProject")
def _array_project(ev, input, axes):
    (name, b), = input.bands.items()
    keep = [int(a) for a in axes]
    nd = b.data.ndim - 2
    drop = tuple(2 + i for i in range(nd) if i not in keep)
    data = b.data.reshape(*b.data.shape[:2], *[s for i, s in enumerate(b.data.shape[2:]) if i in keep]) \
        if all(b.data.shape[d] == 1 for d in drop) else None
    if data is None:
        raise ValueError("Image.arrayProject: dropped axes must have length 1")
    return Image({name: Band(data, b.mask, b.proj)})


@algorithm("Image.arrayFlatten")
def _array_flatten(ev, image, coordinateLabels, separator="_"):
    (name, b), = image.bands.items()
    labels = coordinateLabels
    out = {}
    if len(labels) == 1:
        for i, lab in enumerate(labels[0]):
            out[str(lab)] = Band(b.data[..., i], b.mask, b.proj)
    else:
        for i, a in enumerate(labels[0]):
            for j, c in enumerate(labels[1]):
                out[f"{a}{separator}{c}"] = Band(b.data[..., i, j], b.mask, b.proj)
    return Image(out)


@algorithm("Image.matrixMultiply")
def _matrix_multiply(ev, image1, image2):
    a, b = constant_image(ev, image1), constant_image(ev, image2)
    (na, x), = a.bands.items()
    (_, y), = b.bands.items()
    return Image({na: Band(np.einsum("hwij,hwjk->hwik", _as_matrix(x.data), _as_matrix(y.data)), x.mask & y.mask,
                           _proj_of(x, y))})


def _as_matrix(data):
    return data if data.ndim == 4 else data[..., None]


@algorithm("Image.reduce")
def _image_reduce(ev, image, reducer):
    """Reduce across the bands of each pixel (bands are the samples)."""
    bands = list(image.bands.values())
    data = np.stack([b.data for b in bands]).reshape(len(bands), -1)
    mask = np.stack([b.mask for b in bands]).reshape(len(bands), -1)
    res = reducer.reduce([data], mask, percentile_mode=ev.percentile_mode)
    shape = ev.grid.shape
    return Image({o: Band(np.asarray(v, "float64").reshape(shape), np.asarray(ok).reshape(shape), _proj_of(*bands))
                  for o, (v, ok) in res.items()})


@algorithm("Image.arrayGet")
def _array_get(ev, image, position):
    (name, b), = image.bands.items()
    idx = tuple(int(p) for p in position)
    return Image({name: Band(b.data[(slice(None), slice(None), *idx)], b.mask, b.proj)})
