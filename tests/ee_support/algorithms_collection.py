"""Collection algorithms: load, filter, map, iterate, joins, pixelwise reductions, columns."""

from __future__ import annotations

import numpy as np

from .algorithms import algorithm
from .values import DEFAULT, Band, Collection, Image, get_property, replace


@algorithm("ImageCollection.load")
def _load(ev, id, version=None):
    if id not in ev.collections:
        raise KeyError(f"collection {id!r} is not registered with the evaluator (registered: {sorted(ev.collections)})")
    return ev.collections[id]


@algorithm("ImageCollection.fromImages")
def _from_images(ev, images):
    return Collection(list(images))


@algorithm("Collection.filter")
def _filter(ev, collection, filter):
    return replace(collection, images=[e for e in collection.images if filter(e)])


@algorithm("Collection.map")
def _map(ev, collection, baseAlgorithm, dropNulls=False):
    out = [baseAlgorithm(e) for e in collection.images]
    return replace(collection, images=[e for e in out if e is not None or not dropNulls])


@algorithm("Collection.iterate")
def _iterate(ev, collection, function, first=None):
    acc = first
    for element in collection.images:
        acc = function(element, acc)
    return acc


@algorithm("Collection.size")
def _size(ev, collection):
    return len(collection.images)


@algorithm("Collection.first")
def _first(ev, collection):
    return collection.images[0] if collection.images else None


@algorithm("Collection.limit")
def _limit(ev, collection, limit=None, key=None, ascending=True):
    images = list(collection.images)
    if key is not None:
        images.sort(key=lambda e: get_property(e, key), reverse=not ascending)
    return replace(collection, images=images if limit is None else images[: int(limit)])


@algorithm("Collection.merge", "ImageCollection.merge")
def _merge(ev, collection1, collection2):
    return Collection(collection1.images + collection2.images)


@algorithm("AggregateFeatureCollection.array")
def _aggregate_array(ev, collection, property):
    return [v for v in (get_property(e, property) for e in collection.images) if v is not None]


@algorithm("Collection.reduceColumns")
def _reduce_columns(ev, collection, reducer, selectors, weightSelectors=None):
    rows = [[get_property(e, s) for s in selectors] for e in collection.images]
    if reducer.kind != "toList":
        cols = [np.array([np.nan if r[i] is None else r[i] for r in rows], "float64")[:, None]
                for i in range(len(selectors))]
        valid = np.logical_and.reduce([~np.isnan(c) for c in cols]) if cols else np.zeros((0, 1), bool)
        res = reducer.reduce(cols, valid, percentile_mode=ev.percentile_mode)
        return {o: (np.asarray(v)[0].tolist() if bool(np.asarray(ok)[0]) else None) for o, (v, ok) in res.items()}
    keep = [r for r in rows if all(v is not None for v in r)]
    if reducer.params.get("tupleSize") is None and len(selectors) == 1:
        keep = [r[0] for r in keep]
    return {reducer.outputs[0]: keep}


@algorithm("Collection.randomColumn")
def _random_column(ev, collection, columnName="random", seed=0, distribution="uniform", rowKeys=None):
    """Deterministic per element (a hash of seed and row keys), as the server's; not its values."""
    import hashlib

    keys = rowKeys or ["system:index"]
    images = []
    for e in collection.images:
        text = f"{seed}|" + "|".join(str(get_property(e, k)) for k in keys)
        u = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0 ** 64
        images.append(replace(e, props={**e.props, columnName: u}))
    return replace(collection, images=images)


# --------------------------------------------------------------------------------------------
# joins
@algorithm("Join.saveFirst", "Join.saveAll")
def _join(ev, matchKey, ordering=None, ascending=True, measureKey=None, outer=False, **kw):
    return {"kind": "saveFirst" if "maxMatches" not in kw else "saveAll", "matchKey": matchKey,
            "ordering": ordering, "ascending": ascending, "outer": outer}


@algorithm("Join.apply")
def _join_apply(ev, join, primary, secondary, condition):
    out = []
    for p in primary.images:
        matches = [s for s in secondary.images if condition.pair(p, s)]
        if join["ordering"]:
            matches.sort(key=lambda s: get_property(s, join["ordering"]), reverse=not join["ascending"])
        if not matches and not join["outer"]:
            continue
        value = (matches[0] if matches else None) if join["kind"] == "saveFirst" else matches
        out.append(replace(p, props={**p.props, join["matchKey"]: value}))
    return replace(primary, images=out)


# --------------------------------------------------------------------------------------------
# pixelwise reductions
def _stack(images: list[Image], name: str):
    data = np.stack([img.bands[name].data for img in images])
    mask = np.stack([img.bands[name].mask for img in images])
    return data, mask


@algorithm("ImageCollection.reduce")
def _reduce(ev, collection, reducer, parallelScale=1):
    """Per pixel over the images. The result has Earth Engine's default projection (the
    Projections guide: "Image collections reduced into composites or mosaics with different
    projections will have a default WGS84 projection with a 1-degree scale"; the server gives a
    composite that projection whatever its inputs)."""
    images = collection.images
    if not images:
        return Image()
    names = images[0].names
    shape = ev.grid.shape
    out = {}
    if reducer.n_inputs == 1:
        for n in names:
            data, mask = _stack(images, n)
            res = reducer.reduce([data.reshape(len(images), -1)], mask.reshape(len(images), -1),
                                 percentile_mode=ev.percentile_mode)
            for o, (v, ok) in res.items():
                out[f"{n}_{o}"] = Band(np.asarray(v, "float64").reshape(*shape, *np.shape(v)[1:]), ok.reshape(shape),
                                       DEFAULT)
        return Image(out)
    if reducer.n_inputs != len(names):
        raise ValueError(f"reducer takes {reducer.n_inputs} inputs but the images have bands {names}")
    stacks = [_stack(images, n) for n in names]
    valid = np.logical_and.reduce([m for _, m in stacks]).reshape(len(images), -1)
    res = reducer.reduce([d.reshape(len(images), -1) for d, _ in stacks], valid, percentile_mode=ev.percentile_mode)
    for o, (v, ok) in res.items():
        out[o] = Band(np.asarray(v, "float64").reshape(*shape, *np.shape(v)[1:]), np.asarray(ok).reshape(shape),
                      DEFAULT)
    return Image(out)


def _keep_names(kind):
    def impl(ev, collection):
        from .reducers import simple

        reduced = _reduce(ev, collection, simple(kind))
        names = collection.images[0].names if collection.images else []
        return Image({n: reduced.bands[f"{n}_{kind}"] for n in names})

    return impl


for _kind in ("count", "max", "min", "mean", "sum"):
    algorithm(f"reduce.{_kind}")(_keep_names(_kind))


@algorithm("ImageCollection.toArray")
def _to_array(ev, collection):
    """A 2-D array per pixel (images x bands); a pixel keeps only images where all bands are valid.

    Tests only use it where every image is valid at every pixel of interest.
    """
    imgs = collection.images
    data = np.stack([np.stack([b.data for b in im.bands.values()], -1) for im in imgs], axis=2)
    mask = np.stack([np.logical_and.reduce([b.mask for b in im.bands.values()]) for im in imgs], axis=0).all(0)
    return Image({"array": Band(data, mask, DEFAULT)})


@algorithm("ImageCollection.toBands")
def _to_bands(ev, collection):
    out = {}
    for im in collection.images:
        for n, b in im.bands.items():
            name = f"{im.props.get('system:index')}_{n}"
            if name in out:
                raise ValueError(f"ImageCollection.toBands: two bands named {name!r} (images without system:index?)")
            out[name] = b
    return Image(out)


# --------------------------------------------------------------------------------------------
# regions
# the reference: "Attempting to extract more than 1048576 values will result in an error."
GET_REGION_MAX_VALUES = 1048576


@algorithm("ImageCollection.getRegion")
def _get_region(ev, collection, geometry, scale=None, crs=None, crsTransform=None):
    """ee.ImageCollection.getRegion: "Output an array of values for each [pixel, band, image] tuple
    in an ImageCollection. The output contains rows of id, lon, lat, time, and all bands for each
    image that intersects each pixel in the given region."

    A list whose first row is the header ``["id", "longitude", "latitude", "time", *bands]``, then
    one row per image and pixel: ``system:index``, the pixel centre's longitude and latitude,
    ``system:time_start`` and the band values, None where a band is masked. Pixels are those of the
    geometry on the requested grid (a point: the pixel containing it; else centres inside). Every
    image covers the grid here (footprints are not modelled), so every image has a row at every
    pixel; a point off the grid gives the header alone.

    The grid must be named: without ``crs`` the reference says the call "defaults to EPSG:4326",
    1-degree pixels, which the evaluator refuses like every reduction off the cube's grid. All
    images must have the same bands, and more than 1048576 values are refused, as on the server.
    """
    from pyproj import CRS, Transformer

    from .algorithms_image import require_grid
    from .values import Projection

    if crs is not None and not isinstance(crs, Projection):
        # the algorithm table's default, EPSG:4326 at 1 degree
        crs = Projection(crs=crs["crs"], transform=crs.get("transform")) if isinstance(crs, dict) else crs
    require_grid(ev, "ImageCollection.getRegion", crs, crsTransform, scale, None)
    images = collection.images
    names = images[0].names if images else []
    for im in images:
        if im.names != names:
            raise ValueError(f"ImageCollection.getRegion: images have different bands ({im.names} vs {names})")
        for n, b in im.bands.items():
            if b.data.ndim != 2:
                raise NotImplementedError(f"ImageCollection.getRegion of array band {n!r} is not modelled")
    rows, cols = np.nonzero(geometry.pixel_mask(ev.grid))
    n_values = len(rows) * len(images) * (4 + len(names))
    if n_values > GET_REGION_MAX_VALUES:
        raise ValueError(f"ImageCollection.getRegion: too many values ({n_values} > {GET_REGION_MAX_VALUES})")
    a, b, c, d, e, f = ev.grid.transform[:6]
    xs, ys = c + a * (cols + 0.5) + b * (rows + 0.5), f + d * (cols + 0.5) + e * (rows + 0.5)
    to_lonlat = Transformer.from_crs(CRS.from_user_input(ev.grid.crs), "EPSG:4326", always_xy=True)
    lons, lats = to_lonlat.transform(xs, ys) if len(rows) else ([], [])
    out = [["id", "longitude", "latitude", "time", *names]]
    for im in images:
        for r, col, lon, lat in zip(rows, cols, lons, lats):
            values = [float(band.data[r, col]) if band.mask[r, col] else None for band in im.bands.values()]
            out.append([get_property(im, "system:index"), float(lon), float(lat), get_property(im, "system:time_start"),
                        *values])
    return out
