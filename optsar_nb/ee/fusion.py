"""The fused gap-free NDVI on Earth Engine (docs/method.md part C), as the local engine computes it.

The local engine walks each pixel's series in compiled loops; here the same estimate is band
arithmetic on images with one band per pair (in time order), so nothing loops over pixels:

* an anchor's *rank* is the number of anchors up to and including its date, a per-pixel
  cumulative sum over bands; the nearest anchors before and after date i are those of rank
  R_i - A_i and R_i + 1 (``skip`` anchors away for the leave-out rows), and any quantity "at
  the anchor of rank r" is the sum over bands of that quantity where rank == r;
* from those, :func:`estimate` gives the interpolation, the distance to the nearest anchor, the
  S1 departures and the climatology term of one date, for the fused estimate (anchors = clear
  views) and for the leave-out rows (anchors = training observations);
* the weights are fitted on the client, exactly as the local engine fits them
  (:mod:`optsar_nb.fusion_fit`), from the leave-out rows of a sample of pixels fetched in one
  request (every pixel of an AOI of up to ``SAMPLE_PIXELS``); each pixel's reliability is then
  server-side sums over its rows, and the standard errors come from the sampled rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ee
import numpy as np

from .. import fusion_fit as fit
from . import collections as col

# pixels whose leave-out rows are fetched to fit the weights (all of them in smaller AOIs): about
# 40 000 rows per 1000 pixels with a year of Sentinel-2, ample for 9 weights, and a response of
# some megabytes
SAMPLE_PIXELS = 1000
ROW_BANDS = ("ok", "resid", "dep_VV", "dep_VH", "dep_M", "signed_distance")  # one leave-out row
Fetch = Any


def _sum(image: ee.Image) -> ee.Image:
    return image.reduce(ee.Reducer.sum())


@dataclass(frozen=True)
class Anchors:
    """A pixel's series as unmasked bands (one per pair id, in time order) and its anchors.

    ``anchor`` 1 at the anchors (0 elsewhere), ``value`` the NDVI there (0 elsewhere), ``s1`` the
    VV/VH neighbourhood means (0 where missing, ``s1_ok`` 1 where both exist), ``day`` days since
    the start, ``rank`` the number of anchors up to and including each date, ``cumsum`` the sum of
    their values; ``count`` and ``total`` the pixel's number and sum of anchors (one band).
    """

    ids: list[str]
    days: list[float]
    anchor: ee.Image
    value: ee.Image
    s1: tuple[ee.Image, ee.Image]
    s1_ok: ee.Image
    day: ee.Image
    rank: ee.Image
    cumsum: ee.Image
    count: ee.Image
    total: ee.Image

    @classmethod
    def of(cls, ids: list[str], days: list[float], obs: ee.Image, anchor: ee.Image,
           s1: tuple[ee.Image, ee.Image]) -> Anchors:
        """``obs`` NDVI (masked where unknown), ``anchor`` which of its values are anchors,
        ``s1`` (VV_Nmean, VH_Nmean); all with one band per id."""
        a = anchor.unmask(0, False).rename(ids)
        value = obs.unmask(0, False).multiply(a).rename(ids)
        rank = col.bands_by_id([_sum(a.select(ids[: i + 1])) for i in range(len(ids))], ids)
        cumsum = col.bands_by_id([_sum(value.select(ids[: i + 1])) for i in range(len(ids))], ids)
        return cls(ids=ids, days=list(days), anchor=a, value=value,
                   s1=tuple(s.unmask(0, False).rename(ids) for s in s1),
                   s1_ok=s1[0].mask().And(s1[1].mask()).rename(ids),
                   day=ee.Image.constant(list(days)).rename(ids), rank=rank, cumsum=cumsum,
                   count=_sum(a), total=_sum(value))

    def at(self, rank: ee.Image) -> dict[str, ee.Image]:
        """Value, day, S1 (and their validity) and cumulative sum at the anchor of ``rank`` (0 where none)."""
        match = self.rank.eq(rank).And(self.anchor)

        def get(x):
            return _sum(x.multiply(match))

        return {"value": get(self.value), "day": get(self.day), "vv": get(self.s1[0]), "vh": get(self.s1[1]),
                "s1_ok": get(self.s1_ok), "cumsum": get(self.cumsum)}


def estimate(a: Anchors, i: int, skip: int = 1) -> dict[str, ee.Image]:
    """The pieces of the fused estimate at date ``i`` from the ``skip``-th anchors around it.

    Returns one-band images: ``has`` (an anchor exists on some side), ``both`` (two-sided),
    ``interp``, ``distance`` (days to the nearest anchor), ``dep`` (VV and VH departures from
    their interpolation, climatology minus interpolation), ``s1_ok`` (the departures exist) and
    ``left_ok`` (anchors remain for the climatology). At an anchor's own date the estimate
    ignores that anchor. The climatology is the mean of the anchors outside the two used (all
    of them for the fused estimate, whose anchors are adjacent), as in the local engine's rows.
    """
    band = [a.ids[i]]
    own, rank, t = a.anchor.select(band), a.rank.select(band), float(a.days[i])
    p_rank = rank.subtract(own).subtract(skip - 1)
    q_rank = rank.add(skip)
    has_p, has_q = p_rank.gte(1), q_rank.lte(a.count)
    both = has_p.And(has_q)
    p, q = a.at(p_rank), a.at(q_rank)

    def ends(key):  # one-sided: both ends at the one anchor
        return p[key].where(has_p.Not(), q[key]), q[key].where(has_q.Not(), p[key])

    dp, dq = ends("day")
    day = ee.Image.constant(t)
    frac = day.subtract(dp).divide(dq.subtract(dp)).where(both.Not(), 0)

    def line(key):
        xp, xq = ends(key)
        return xp.add(frac.multiply(xq.subtract(xp)))

    interp = line("value")
    distance = day.subtract(dp).min(dq.subtract(day)).where(both.Not(), day.subtract(dp).abs())
    ok_p, ok_q = ends("s1_ok")
    s1_ok = a.s1_ok.select(band).And(ok_p).And(ok_q)
    lo_n, lo_s = p_rank.multiply(has_p), p["cumsum"].multiply(has_p)
    hi_n = q_rank.subtract(1).where(has_q.Not(), a.count)
    hi_s = q["cumsum"].subtract(q["value"]).where(has_q.Not(), a.total)
    left = a.count.subtract(hi_n.subtract(lo_n))
    climatology = a.total.subtract(hi_s.subtract(lo_s)).divide(left)
    dep = (a.s1[0].select(band).subtract(line("vv")), a.s1[1].select(band).subtract(line("vh")),
           climatology.subtract(interp))
    return {"has": has_p.Or(has_q), "both": both, "interp": interp, "distance": distance, "dep": dep,
            "s1_ok": s1_ok, "left_ok": left.gt(0)}


def by_bin(values, distance: ee.Image, both: ee.Image) -> ee.Image:
    """A per-GAP_BINS value (two-sided bins by distance, then one-sided) as an image."""
    out = ee.Image.constant(float(values[0]))
    for edge, v in zip(fit.GAP_EDGES, values[1: len(fit.GAP_EDGES) + 1]):
        out = out.where(distance.gt(edge), float(v))
    return out.where(both.Not(), float(values[-1]))


def by_se_bin(values, distance: ee.Image, both: ee.Image) -> ee.Image:
    """A per-SE-bin value (:func:`optsar_nb.fusion_fit.se_bin`) as an image."""
    n_two = len(fit.SE_EDGES_TWO_SIDED) + 1
    two, one = ee.Image.constant(float(values[0])), ee.Image.constant(float(values[n_two]))
    for edge, v in zip(fit.SE_EDGES_TWO_SIDED, values[1:n_two]):
        two = two.where(distance.gt(edge), float(v))
    for edge, v in zip(fit.SE_EDGES_ONE_SIDED, values[n_two + 1:]):
        one = one.where(distance.gt(edge), float(v))
    return two.where(both.Not(), one)


def _corrections(e: dict, weights: np.ndarray) -> tuple[ee.Image, ee.Image]:
    """(S1 correction w_bin . departures, 0 where a departure is missing; climatology term m_bin dep_M)."""
    w = [by_bin(weights[:, k], e["distance"], e["both"]) for k in range(weights.shape[1])]
    s1 = e["dep"][0].multiply(w[0]).add(e["dep"][1].multiply(w[1])).where(e["s1_ok"].Not(), 0)
    return s1, e["dep"][2].multiply(w[2])


def _rows(a: Anchors, dates: list[int]):
    """(name, estimate pieces, ``ok`` 1 where the row exists, residual) of each leave-out row of
    the training observations at ``dates`` (indices), every skip."""
    for i in dates:
        band = [a.ids[i]]
        for skip in fit.LEAVE_OUT_SKIPS:
            e = estimate(a, i, skip)
            ok = a.anchor.select(band).And(e["has"]).And(e["left_ok"]).And(e["s1_ok"])
            yield f"{i}_{skip}", e, ok, a.value.select(band).subtract(e["interp"])


def leave_out_rows(a: Anchors, dates: list[int]) -> ee.Image:
    """The leave-out rows as bands ``<date>_<skip>_<ROW_BANDS>`` (all 0 where a row does not exist)."""
    rows, names = [], []
    for name, e, ok, resid in _rows(a, dates):
        signed = e["distance"].where(e["both"].Not(), e["distance"].multiply(-1))
        bands = [ok, resid, *e["dep"], signed]
        rows.append(ee.Image.cat([b.multiply(ok).rename(n) for b, n in zip(bands, ROW_BANDS)]))
        names.append(name)
    return col.bands_by_id(rows, names, rename=False)


@dataclass(frozen=True)
class Fit:
    """What the client learns from the sampled rows."""

    weights: np.ndarray  # (len(GAP_BINS), 3) VV, VH departures, climatology
    se: np.ndarray  # (N_SE_BINS,) the fused estimate's standard error per SE bin
    n_rows: int
    n_pixels: int


def rows_table(values: dict[str, list], names: list[str]) -> dict[str, np.ndarray]:
    """Fetched rows (``reduceRegion(toList)`` of :func:`leave_out_rows`: one list per band, one
    entry per sampled pixel) as the local engine's ``leave_out_rows`` gives them: ``pixel`` (index
    in the sample), ``bin``, ``se_bin``, ``resid`` and ``dep`` (n, 3)."""
    n_pixels = len(values[f"{names[0]}_ok"]) if names else 0
    arr = np.array([[values[f"{n}_{b}"] for b in ROW_BANDS] for n in names], dtype="float64").reshape(
        len(names), len(ROW_BANDS), n_pixels)
    ok = arr[:, 0] == 1
    distance, two = np.abs(arr[:, 5][ok]), arr[:, 5][ok] > 0
    return {"pixel": np.broadcast_to(np.arange(n_pixels), ok.shape)[ok], "bin": fit.gap_bin(distance, two),
            "se_bin": fit.se_bin(distance, two), "resid": arr[:, 1][ok],
            "dep": np.stack([arr[:, 2][ok], arr[:, 3][ok], arr[:, 4][ok]], axis=1), "n_pixels": n_pixels}


def fit_from_rows(rows: dict[str, np.ndarray], prior_samples: float) -> Fit:
    """The weights and standard errors from the rows of :func:`rows_table`, as the local engine fits them."""
    weights = fit.fit_weights(rows["bin"], rows["resid"], rows["dep"])
    _, errors = fit.reliability_from_rows(rows["pixel"], rows["bin"], rows["resid"], rows["dep"], weights,
                                          prior_samples, rows["n_pixels"])
    se = fit.se_scale(fit.error_histogram(rows["se_bin"], errors))
    return Fit(weights=weights, se=se, n_rows=int(rows["resid"].size), n_pixels=rows["n_pixels"])


def fetch_fit(train: Anchors, dates: list[int], region: ee.Geometry, projection: ee.Projection,
              aoi_pixels: float, params, *, sample_pixels: int = SAMPLE_PIXELS, fetch: Fetch | None = None) -> Fit:
    """Fit the weights and standard errors on the leave-out rows of a sample of pixels (one request).

    Every pixel when the AOI has at most ``sample_pixels`` of them, else a seeded random share.
    """
    from .tasks import fetch_info

    rows = leave_out_rows(train, dates)
    share = sample_pixels / max(aoi_pixels, 1.0)
    if share < 1:
        rows = rows.updateMask(ee.Image.random(params.seed).lt(share))
    names = [f"{i}_{skip}" for i in dates for skip in fit.LEAVE_OUT_SKIPS]
    values = fetch_info(rows.reduceRegion(ee.Reducer.toList(), region, crs=projection, maxPixels=col.MAX_PIXELS),
                        fetch=fetch)
    return fit_from_rows(rows_table(values, names), params.fusion_prior_samples)


def reliability(train: Anchors, dates: list[int], weights: np.ndarray, prior_samples: float) -> ee.Image:
    """Each pixel's reliability of the S1 correction (band ``alpha``), from its own leave-out rows:
    the server-side form of :func:`optsar_nb.fusion_fit.reliability_from_rows`."""
    cc, cr, n = [], [], []
    for _, e, ok, resid in _rows(train, dates):
        s1, clim = _corrections(e, weights)
        cc.append(s1.multiply(s1).multiply(ok))
        cr.append(s1.multiply(resid.subtract(clim)).multiply(ok))
        n.append(ok)
    names = [str(j) for j in range(len(n))]
    scc, scr, count = (_sum(col.bands_by_id(x, names)) for x in (cc, cr, n))
    own = scr.divide(scc).where(scc.gt(0).Not(), 1)
    prior = ee.Image.constant(prior_samples).divide(count.max(1))
    return own.add(prior).divide(prior.add(1)).max(0).min(2).rename("alpha")


def fused(a: Anchors, i: int, weights: np.ndarray, alpha: ee.Image, se: np.ndarray) -> tuple[ee.Image, ee.Image]:
    """(the fused estimate at date ``i`` from the clear views ``a``, its standard error); masked
    where the pixel has no clear view."""
    e = estimate(a, i)
    s1, clim = _corrections(e, weights)
    value = e["interp"].add(alpha.multiply(s1)).add(clim)
    error = by_se_bin(se, e["distance"], e["both"])
    return value.updateMask(e["has"]), error.updateMask(e["has"])
