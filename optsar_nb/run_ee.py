"""The notebooks' jobs on Earth Engine: graphs built by :mod:`optsar_nb.ee`, exported by
:mod:`optsar_nb.ee.export` to the destination the notebooks' ``export`` parameter names.

:func:`optsar_nb.run.run_gaps` and :func:`optsar_nb.run.run_infill` call these when the engine
is Earth Engine.
"""

from __future__ import annotations

import pandas as pd

from .aoi import AOI, load_aoi
from .engine import Engine
from .errors import InvalidParameter
from .params import GapParams, InfillParams
from .results import GapResult, InfillResult


def _ee_aoi(aoi, params) -> AOI:
    if aoi is None:
        raise InvalidParameter("the Earth Engine engine needs an AOI: draw one on the map or give a GeoJSON file")
    return load_aoi(aoi, max_area_km2=params.max_aoi_km2)


def ee_destination(export: str, params, out_dir):
    """The export destination named by the notebooks' ``export`` parameter.

    "drive": a Drive folder named after the project title; "local": download into ``out_dir``
    (small results only); "asset:projects/<project>/assets/<folder>": an Asset folder;
    "gcs:<bucket>" or "gcs:<bucket>/<prefix>": a Cloud Storage bucket.
    """
    from .ee.export import Destination

    kind, _, target = str(export).partition(":")
    if kind == "drive":
        return Destination("drive", folder=target or params.project_title)
    if kind == "local":
        return Destination("local", folder=target or str(out_dir))
    if kind == "asset" and target.startswith("projects/") and "/assets/" in target:
        return Destination("asset", folder=target)
    if kind == "gcs" and target:
        bucket, _, prefix = target.partition("/")
        return Destination("gcs", bucket=bucket, folder=prefix or params.project_title)
    raise InvalidParameter(
        f"export={export!r} is not a destination: use 'drive', 'local', "
        "'asset:projects/<project>/assets/<folder>' or 'gcs:<bucket>[/<prefix>]'"
    )


def _run_gaps_ee(params: GapParams, engine: Engine, *, aoi, export: str, out_dir, progress=None,
                 export_options: dict | None = None) -> GapResult:
    from .ee.export import export_gaps
    from .ee.gaps import characterize_gaps

    aoi_obj = _ee_aoi(aoi, params)
    built = characterize_gaps(aoi_obj, params)
    times = built.composites.aggregate_array("system:time_start").getInfo()  # one round trip
    result = GapResult(params=params, engine=engine, aoi=aoi_obj, ee_image=built.statistics,
                       ee_collection=built.composites,
                       dates=[str(pd.Timestamp(t, unit="ms").date()) for t in times])
    if out_dir is not None:
        result.tasks = [export_gaps(built, destination=ee_destination(export, params, out_dir), progress=progress,
                                    **(export_options or {}))]
    return result


def _run_infill_ee(params: InfillParams, engine: Engine, *, aoi, export: str, out_dir,
                   progress=None, export_options: dict | None = None) -> InfillResult:
    from .ee.export import export_infill
    from .ee.infill import build_infill

    aoi_obj = _ee_aoi(aoi, params)
    built = build_infill(aoi_obj, params)
    outputs = built.outputs
    result = InfillResult(params=params, engine=engine, aoi=aoi_obj, observed=outputs["NDVI_Obs"],
                          predicted=outputs["NDVI_Pred"], gapfree=outputs["NDVI_gapfree"], mask=outputs["NDVI_Mask"],
                          metadata=built.table, n_images=len(built.table),
                          dates=[str(pd.Timestamp(t, unit="ms").date()) for t in built.table["CollectionTime"]])
    if out_dir is not None:
        result.tasks = [export_infill(built, destination=ee_destination(export, params, out_dir), progress=progress,
                                      **(export_options or {}))]
    return result
