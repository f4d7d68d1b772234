"""Cloud states of a quality band stack (docs/method.md A.2, B.2): CLEAR, CLOUDY or MISSING per
pixel and image by a mission's mask rule. Part of :mod:`optsar_nb.local.gaps`, which re-exports
:func:`cloud_state`; the infilling classifies its quality band the same way."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import InvalidParameter
from ..missions import CLEAR, CLOUDY, MASK_RULES, MISSING, BinaryRule, BitRule, SCLRule
from ._blocks import _grid_attrs

STATE_DTYPE = np.int8


def cloud_state(
    qa: xr.DataArray,
    rule: str | SCLRule | BitRule | BinaryRule,
    *,
    valid: xr.DataArray | None = None,
    threshold: float | None = None,
) -> xr.DataArray:
    """Classify every pixel of every image as CLEAR (1), CLOUDY (0) or MISSING (-1).

    ``qa``: the quality band stack (SCL classes, QA_PIXEL/pixel_qa bits, a 0/1 mask, or
    Cloud Score+ ``cs_cdf`` when ``rule == "cloudscore"``, cloudy below ``threshold``).
    NaN and the stack's ``nodata`` value are missing; so are pixels where ``valid`` is 0 and
    values the rule does not define (SCL outside its classes 0-11, negative, fractional or
    too large quality bits, a binary mask other than 0/1, Cloud Score+ outside [0, 1]): an
    invalid value never counts as clear.

    A quality band of 8 or 16-bit integers is classified through a table of the state of every
    value it can hold (made by the same rule), in one pass over the pixels.
    """
    if qa.dtype.kind in "iu" and qa.dtype.itemsize <= 2:
        bits = f"uint{8 * qa.dtype.itemsize}"
        every = xr.DataArray(np.arange(2 ** (8 * qa.dtype.itemsize)).astype(bits).view(qa.dtype), dims="value",
                             attrs=qa.attrs)  # in the order of the values' unsigned bit patterns
        table = _classify(every, rule, None, threshold).values

        def lookup(q, v=None):
            state = table[q.view(bits)]
            if v is None:
                return state
            return np.where((v == 0) | (np.isnan(v) if v.dtype.kind in "fc" else False), STATE_DTYPE(MISSING), state)

        args = (qa,) if valid is None else (qa, valid)
        return _named_state(xr.apply_ufunc(lookup, *args, dask="parallelized", output_dtypes=[STATE_DTYPE]), qa)
    return _classify(qa, rule, valid, threshold)


def _named_state(state: xr.DataArray, qa: xr.DataArray) -> xr.DataArray:
    """``state`` named so, with the grid attributes of ``qa`` and no others."""
    state = state.rename("state")
    state.attrs = _grid_attrs(qa)
    return state


def _classify(qa: xr.DataArray, rule, valid: xr.DataArray | None, threshold: float | None) -> xr.DataArray:
    if isinstance(rule, str):
        if rule == "cloudscore":
            if threshold is None:
                raise InvalidParameter("rule='cloudscore' needs a threshold (GapParams.cloudscore_threshold)")
            state = xr.where(qa < threshold, CLOUDY, CLEAR)
            return _finish_state(state, qa, valid, in_domain=(qa >= 0) & (qa <= 1))
        if rule not in MASK_RULES:
            raise InvalidParameter(f"unknown mask rule {rule!r}: choose one of {sorted(MASK_RULES)} or 'cloudscore'")
        rule = MASK_RULES[rule]
    if isinstance(rule, SCLRule):
        state = xr.where(qa.isin(rule.cloudy_values), CLOUDY, CLEAR)
        state = xr.where(qa.isin(rule.missing_values), MISSING, state)
        in_domain = qa.isin(rule.classes)
    elif isinstance(rule, BitRule):
        in_domain = (qa >= 0) & (qa <= BitRule.MAX_VALUE)
        if qa.dtype.kind == "f":
            in_domain = in_domain & (qa == np.floor(qa))
        values = qa.where(in_domain, 0).astype("int64")
        state = xr.where((values & rule.cloudy_bitmask) != 0, CLOUDY, CLEAR)
        state = xr.where((values & rule.fill_bitmask) != 0, MISSING, state)
    elif isinstance(rule, BinaryRule):
        state = xr.where(qa == rule.cloud_value, CLOUDY, CLEAR)
        in_domain = qa.isin((0, 1))
    else:
        raise InvalidParameter(f"unknown mask rule {rule!r}")
    return _finish_state(state, qa, valid, in_domain=in_domain)


def _finish_state(state: xr.DataArray, qa: xr.DataArray, valid: xr.DataArray | None, *,
                  in_domain: xr.DataArray) -> xr.DataArray:
    """MISSING where the quality value is NaN, the stack's no-data value, outside the rule's
    values (``in_domain``: e.g. SCL 200, a negative or infinite value) or where ``valid`` is 0."""
    missing = qa.isnull() | ~in_domain
    nodata = qa.attrs.get("nodata")
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        missing = missing | (qa == nodata)
    if valid is not None:
        missing = missing | (valid == 0) | valid.isnull()
    return _named_state(xr.where(missing, MISSING, state).astype(STATE_DTYPE), qa)
