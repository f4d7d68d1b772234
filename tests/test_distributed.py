"""Gap characterization on a dask.distributed cluster gives the same files as on one machine.

A LocalCluster of two worker processes on 127.0.0.1 stands for a user's cluster (dask-jobqueue,
Kubernetes, ...): the job is given nothing but the active ``Client``, as a user would do it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster, get_task_stream

from optsar_nb.aoi import load_aoi
from optsar_nb.local.gaps import characterize_gaps, cloud_state
from optsar_nb.local.stack import read_geotiff, read_stack
from optsar_nb.params import GapParams

pytestmark = pytest.mark.allow_hosts(["127.0.0.1", "::1"])
SUFFIX = "_S2_2021-01-01_2022-01-01"


def test_gap_statistics_on_a_distributed_cluster_equal_one_machine(demo_dir, tmp_path):
    params = GapParams(mission="S2", start="2021-01-01", end="2022-01-01")
    aoi = load_aoi(demo_dir / "aoi.geojson")
    state = cloud_state(read_stack(demo_dir / f"SCL_Input{SUFFIX}.tif"), params.mask_rule_name)
    here = characterize_gaps(state, params, tmp_path / "here", aoi=aoi, plot=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster), get_task_stream() as stream:
        there = characterize_gaps(state, params, tmp_path / "cluster", aoi=aoi, plot=False)
    workers = {task["worker"] for task in stream.data}
    assert len(stream.data) > 0 and len(workers) == 2  # the work ran on the cluster's two workers
    np.testing.assert_array_equal(read_geotiff(there["statistics"]).values, read_geotiff(here["statistics"]).values)
    pd.testing.assert_frame_equal(pd.read_csv(there["metadata"]), pd.read_csv(here["metadata"]))


def test_infilling_on_a_distributed_cluster_equals_one_machine(demo_dir, tmp_path, monkeypatch):
    """The whole infilling job on a two-worker LocalCluster, its staged stacks at an fsspec URL
    (``file://``, as a shared filesystem or bucket would be given), writes the files the job
    writes on one machine; many blocks, so that both workers take part."""
    import rasterio

    from optsar_nb.local import _pipeline
    from optsar_nb.local.infill import infill, load_seed_inputs
    from optsar_nb.params import InfillParams

    monkeypatch.setattr(_pipeline, "_edge", lambda n: 24)  # 16 blocks of the 80 x 80 px scene
    params = InfillParams(start="2021-01-01", end="2022-01-01")
    inputs = load_seed_inputs(demo_dir, params)
    aoi = load_aoi(demo_dir / "aoi.geojson")
    here = infill(*inputs, params, tmp_path / "here", aoi=aoi, report=False)
    shared = tmp_path / "shared"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster), get_task_stream() as stream:
        there = infill(*inputs, params, tmp_path / "cluster", aoi=aoi, report=False, work_dir=shared.as_uri())
    fused = [task for task in stream.data if "fit_predict_block" in str(task["key"])]
    assert len(fused) == 16 and len({task["worker"] for task in fused}) == 2
    assert list(shared.iterdir()) == []  # the staged stacks were removed
    for name, path in here.paths.items():
        if path.suffix == ".tif":
            with rasterio.open(path) as a, rasterio.open(there.paths[name]) as b:
                np.testing.assert_allclose(b.read(), a.read(), rtol=0, atol=1e-6, err_msg=name)
    pd.testing.assert_frame_equal(pd.read_csv(there.paths["metadata"]), pd.read_csv(here.paths["metadata"]))
    np.testing.assert_array_equal(there.fusion_weights, here.fusion_weights)
