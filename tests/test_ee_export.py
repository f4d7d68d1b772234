"""Exports and task watching with an injected fake client: skip existing, retry FAILED, stop on
CANCELLED with the server's message, local downloads of tables, seed-format input exports."""

from __future__ import annotations

import pandas as pd
import pytest
from ee_support.cubes import flanders_aoi
from ee_support.fake_export import FakeClient

from optsar_nb.ee import export
from optsar_nb.ee import gaps as ee_gaps
from optsar_nb.params import GapParams

PARAMS = GapParams(mission="S2", start="2017-08-01", end="2018-12-01", project_title="Flanders test")


@pytest.fixture(scope="module")
def run(ee_offline):
    return ee_gaps.characterize_gaps(flanders_aoi(), PARAMS)


@pytest.fixture(scope="module")
def fetch(flanders_ee):
    """Requests (the export grid) answered by the offline evaluator."""
    ev, _ = flanders_ee
    return ev.evaluate


def test_drive_folder_is_the_project_title_and_names_follow_the_seed(run, fetch):
    client = FakeClient()
    report = export.export_gaps(run, fetch=fetch, client=client, sleep=lambda s: None)
    names = {s[0] for s in client.started}
    assert names == {"Gap_Statistics_S2_2017-08-01_2018-12-01", "InputMask_Metadata_S2_2017-08-01_2018-12-01"}
    assert all(s[2].kind == "drive" and s[2].folder == "Flanders test" for s in client.started)
    # images on the optical grid: the CRS and 10 m transform of the first image's red band
    assert all(s[3]["crs"] and s[3]["transform"][0] == 10 and s[3]["transform"][4] == -10
               for s in client.started if s[1] == "image")
    assert set(report.values()) == {"done"}


def test_existing_outputs_are_skipped(run, fetch):
    client = FakeClient(existing={"Gap_Statistics_S2_2017-08-01_2018-12-01"})
    report = export.export_gaps(run, fetch=fetch, client=client, sleep=lambda s: None)
    assert report["Gap_Statistics_S2_2017-08-01_2018-12-01"] == "skipped"
    assert [s[0] for s in client.started] == ["InputMask_Metadata_S2_2017-08-01_2018-12-01"]


def test_failed_task_is_retried_then_succeeds(run, fetch):
    name = "Gap_Statistics_S2_2017-08-01_2018-12-01"
    client = FakeClient(scripts={name: [["RUNNING", "FAILED"], ["RUNNING", "COMPLETED"]]})
    seen = []
    report = export.export_gaps(run, fetch=fetch, client=client, sleep=lambda s: None,
                                progress=lambda n, state, frac: seen.append((n, state)))
    assert report[name] == "done"
    assert sum(1 for s in client.started if s[0] == name) == 2
    assert (name, "FAILED") in seen and (name, "COMPLETED") in seen


def test_failing_task_raises_with_the_servers_message(run, fetch):
    name = "Gap_Statistics_S2_2017-08-01_2018-12-01"
    client = FakeClient(scripts={name: [["FAILED"]]}, message="boom")
    with pytest.raises(export.ExportFailed, match="boom"):
        export.export_gaps(run, fetch=fetch, client=client, sleep=lambda s: None, retries=1)
    assert sum(1 for s in client.started if s[0] == name) == 2


def test_cancelled_task_is_not_retried(run, fetch):
    name = "InputMask_Metadata_S2_2017-08-01_2018-12-01"
    client = FakeClient(scripts={name: [["RUNNING", "CANCELLED"]]})
    with pytest.raises(export.ExportCancelled, match=name):
        export.export_gaps(run, fetch=fetch, client=client, sleep=lambda s: None)


def test_timeout(run, fetch):
    client = FakeClient(scripts={"Gap_Statistics_S2_2017-08-01_2018-12-01": [["RUNNING"]]})
    ticks = iter(range(0, 10_000, 100))
    with pytest.raises(TimeoutError):
        export.export_gaps(run, fetch=fetch, client=client, sleep=lambda s: None, timeout_s=250,
                           clock=lambda: next(ticks))


def test_not_waiting_leaves_tasks_started(run, fetch):
    report = export.export_gaps(run, fetch=fetch, client=FakeClient(), wait=False)
    assert set(report.values()) == {"started"}


def test_local_download_writes_image_and_metadata_csv(run, flanders_ee, tmp_path):
    ev, _ = flanders_ee
    client = FakeClient()
    dest = export.Destination("local", folder=str(tmp_path))
    report = export.export_gap_inputs(run, destination=dest, client=client, fetch=ev.evaluate)
    assert set(report.values()) == {"done"}
    assert [path for path, _ in client.downloads] == [tmp_path / "Mask_Input_S2_2017-08-01_2018-12-01.tif"]
    table = pd.read_csv(tmp_path / "InputMask_Metadata_S2_2017-08-01_2018-12-01.csv")
    assert list(table.columns) == ["ID", "CollectionTime", "CLOUD_PERCENTAGE_AOI", "PIXEL_COUNT_AOI"]
    assert len(table) == 118


def test_mask_input_is_the_seed_format(run, flanders_ee):
    """Mask_Input evaluates to one band per image ID, 1 clear / 0 cloudy, masked where missing."""
    import ee
    import numpy as np
    from ee_support.cubes import band_array

    ev, cubes = flanders_ee
    ids = run.states.aggregate_array("system:index")
    image = ev.evaluate(run.states.select("state").toBands().rename(ids))
    assert image.names == [str(i) for i in cubes.red["id"].values]
    values = np.unique(band_array(image, image.names[5]))
    assert set(values[~np.isnan(values)]) <= {0.0, 1.0}
    assert ee.data.is_initialized()


def test_transient_errors_are_retried():
    import ee

    calls = []

    def flaky(obj):
        calls.append(obj)
        if len(calls) < 3:
            raise ee.EEException("Too many concurrent aggregations")
        return 42

    assert export.fetch_info("x", fetch=flaky, sleep=lambda s: None) == 42
    with pytest.raises(ee.EEException, match="Image.load"):
        export.fetch_info("x", fetch=lambda o: (_ for _ in ()).throw(ee.EEException("Image.load: not found")),
                          sleep=lambda s: None)


def test_destination_validation():
    with pytest.raises(Exception, match="bucket"):
        export.Destination("gcs")
    with pytest.raises(Exception, match="unknown"):
        export.Destination("ftp")


def test_a_finished_export_is_found_among_the_projects_operations(monkeypatch):
    """Drive files are not listed by Earth Engine: a succeeded operation of the same description
    says the file exists (ee.data.listOperations; the deprecated getTaskList is not called)."""
    import ee

    def deprecated():
        raise AssertionError("getTaskList is deprecated")

    operations = [{"name": "projects/p/operations/A", "metadata": {"description": "Gap_X", "state": "SUCCEEDED"}},
                  {"name": "projects/p/operations/B", "metadata": {"description": "Gap_Y", "state": "FAILED"}},
                  {"name": "projects/p/operations/C", "metadata": {"description": "Gap_Z", "state": "RUNNING"}}]
    monkeypatch.setattr(ee.data, "getTaskList", deprecated)
    monkeypatch.setattr(ee.data, "listOperations", lambda *a, **k: operations)
    client, drive = export.EarthEngineClient(), export.Destination("drive", folder="f")
    assert client.exists(drive, "Gap_X")
    assert not client.exists(drive, "Gap_Y") and not client.exists(drive, "Gap_Z") and not client.exists(drive, "W")


def test_real_export_tasks_are_watched_through_operations(run, fetch, monkeypatch):
    """The real client's tasks (ee.batch.Export, started with ee.data.exportImage) are polled by
    ``watch`` through ``Task.status()``, which in earthengine-api 1.7 asks ``ee.data.getOperation``
    for the task's long-running operation (the deprecated getTaskStatus is never called). A FAILED
    operation's error message reaches the user; a retry starts a new task."""
    import ee

    started, polls = [], {}
    script = {1: ["RUNNING", "FAILED"], 2: ["PENDING", "RUNNING", "SUCCEEDED"]}

    def export_image(request_id, config):
        started.append(config)
        name = f"projects/p/operations/{len(started)}"
        polls[name] = list(script.get(len(started), ["RUNNING", "FAILED"]))
        return {"name": name}

    def get_operation(name):
        state = polls[name].pop(0) if len(polls[name]) > 1 else polls[name][0]
        operation = {"name": name, "metadata": {"state": state, "description": config_description()}}
        if state in ("FAILED", "SUCCEEDED"):
            operation["done"] = True
        if state == "FAILED":
            operation["error"] = {"message": "User memory limit exceeded."}
        return operation

    def config_description():
        return started[-1].get("description", "")

    def deprecated(*args, **kwargs):
        raise AssertionError("getTaskStatus is deprecated")

    monkeypatch.setattr(ee.data, "newTaskId", lambda *a, **k: ["request-id"])
    monkeypatch.setattr(ee.data, "exportImage", export_image)
    monkeypatch.setattr(ee.data, "getOperation", get_operation)
    monkeypatch.setattr(ee.data, "getTaskStatus", deprecated)
    monkeypatch.setattr(ee.data, "listOperations", lambda *a, **k: [])
    changes = []
    out = export.Output("Gap_Statistics_test", image=run.statistics)
    report = export.export_outputs([out], destination=export.Destination("drive", folder="f"),
                                   region=ee.Geometry.Rectangle([3.0, 50.8, 3.1, 50.9]),
                                   grid={"crs": "EPSG:32631", "transform": [10, 0, 500000, 0, -10, 5600000]},
                                   poll_s=0, sleep=lambda s: None,
                                   progress=lambda name, state, fraction: changes.append(state))
    assert report == {"Gap_Statistics_test": "done"}
    assert len(started) == 2  # the FAILED attempt was started again
    assert started[0]["description"] == "Gap_Statistics_test"
    assert changes == ["RUNNING", "FAILED", "READY", "RUNNING", "COMPLETED"]  # operation states as task states
    script.clear()  # every attempt fails: the server's message is raised after the retries
    with pytest.raises(export.ExportFailed, match="failed 3 times; the server said: User memory limit exceeded"):
        export.export_outputs([out], destination=export.Destination("drive", folder="f"),
                              region=ee.Geometry.Rectangle([3.0, 50.8, 3.1, 50.9]),
                              grid={"crs": "EPSG:32631", "transform": [10, 0, 500000, 0, -10, 5600000]},
                              poll_s=0, sleep=lambda s: None)
