"""Output sets under faults: a full disk, two runs at once, a stale lock, a run killed with SIGKILL
or stopped with SIGTERM, a folder the user cannot write into. Real processes, real files: the
faults are injected by the operating system (a file size limit stands for a full disk), not by
mocks."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from optsar_nb.errors import OutputLocked, WriteFailed
from optsar_nb.outputs import (
    COMMITTED,
    LOCK_FILE,
    STAGING_PREFIX,
    OutputSet,
    check_set,
    complete_sets,
    verify_geotiff,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "optsar_nb" / "demo_scene"
SUFFIX = "_S2_2021-01-01_2022-01-01"
GAPS = ["gaps", "--qa", str(SAMPLE / f"SCL_Input{SUFFIX}.tif"), "--start", "2021-01-01", "--end", "2022-01-01"]
INFILL = ["infill", "--inputs", str(SAMPLE), "--start", "2021-01-01", "--end", "2022-01-01"]


def optsar(args, *, file_size_limit: int | None = None, wait: bool = True):
    """Run the command line in a new process (optionally with a file size limit: writes beyond it
    fail as on a full disk)."""
    def limit():
        if file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    cmd = [sys.executable, "-m", "optsar_nb.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, preexec_fn=limit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True, timeout=600)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def manifest(folder: Path, job: str) -> dict:
    return json.loads((folder / f"{job}_Manifest{SUFFIX}.json").read_text())


def test_a_complete_set_has_a_manifest_with_checksums(tmp_path):
    done = optsar([*GAPS, "--out", tmp_path])
    assert done.returncode == 0, done.stderr
    m = manifest(tmp_path, "Gap")
    assert set(m["files"]) == {f"Gap_Statistics{SUFFIX}.tif", f"InputMask_Metadata{SUFFIX}.csv",
                               f"Gap_Statistics{SUFFIX}.png"}
    assert m["complete"] and m["params"]["start"] == "2021-01-01" and m["inputs"]["state"]["shape"][0] > 10
    assert check_set(tmp_path, m) == [] and list(complete_sets(tmp_path)) == [f"Gap_Manifest{SUFFIX}.json"]
    assert hidden(tmp_path) == []  # no lock, no staging folder left
    from optsar_nb.run import list_outputs

    assert list_outputs(tmp_path)["complete"].all() and len(list_outputs(tmp_path)) == 4
    (tmp_path / f"Gap_Statistics{SUFFIX}.tif").write_bytes(b"changed")
    assert complete_sets(tmp_path) == {} and check_set(tmp_path, m) == [f"Gap_Statistics{SUFFIX}.tif"]
    assert not list_outputs(tmp_path)["complete"].any()


def test_a_full_disk_fails_with_one_line_and_writes_nothing(tmp_path):
    done = optsar([*GAPS, "--out", tmp_path], file_size_limit=20_000)
    assert done.returncode == 2
    assert "error:" in done.stderr and "is incomplete" in done.stderr and "Traceback" not in done.stderr
    assert "GB free in" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_overwrite_keeps_the_good_set(tmp_path):
    assert optsar([*GAPS, "--out", tmp_path]).returncode == 0
    good = manifest(tmp_path, "Gap")
    done = optsar([*GAPS, "--out", tmp_path, "--overwrite"], file_size_limit=20_000)
    assert done.returncode == 2 and "is incomplete" in done.stderr
    assert manifest(tmp_path, "Gap") == good and check_set(tmp_path, good) == []
    assert hidden(tmp_path) == []


def test_a_truncated_geotiff_is_caught(tmp_path):
    assert optsar([*GAPS, "--out", tmp_path]).returncode == 0
    path = tmp_path / f"Gap_Statistics{SUFFIX}.tif"
    verify_geotiff(path, count=11, height=80, width=80, dtype="float32")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WriteFailed, match="incomplete|cannot be read back"):
        verify_geotiff(path, count=11, height=80, width=80, dtype="float32")


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    """The lock names the live run holding it; the folder is left as it was."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                      "started": "2026-01-01T00:00:00"}))
        done = optsar([*GAPS, "--out", tmp_path])
        assert done.returncode == 2 and f"process {sleeper.pid}" in done.stderr and "Traceback" not in done.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]
        with pytest.raises(OutputLocked, match="being written by another run"):
            with OutputSet(tmp_path, [], job="Gap", suffix=SUFFIX, params={}, inputs={}):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_runs_at_once_one_wins_the_other_is_refused(tmp_path):
    runs = [optsar([*INFILL, "--out", tmp_path, "--workers", "1", "--seed", str(seed)], wait=False) for seed in (1, 2)]
    results = [(r.wait(timeout=600), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    # refused by the lock while the other writes, or, had the other already finished, by its
    # complete set (OutputExists): either way nothing is mixed
    assert any(why in refused for why in ("being written by another run", "locked by another run", "exists"))
    m = manifest(tmp_path, "Infill")
    assert check_set(tmp_path, m) == [] and hidden(tmp_path) == []


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "x"}))
    done = optsar([*GAPS, "--out", tmp_path])
    assert done.returncode == 0 and f"took over the lock of process {gone.pid}" in done.stderr
    assert hidden(tmp_path) == []


def test_a_commit_cut_short_is_finished_by_the_next_run(tmp_path):
    """A run killed while moving its checked files into place left a committed staging folder:
    the next run finishes the moves (the set it had checked), then does its own work."""
    staging = tmp_path / f"{STAGING_PREFIX}999999-abc"
    staging.mkdir()
    (staging / "a.csv").write_text("x\n1\n")
    committed = {"manifest": "Old_Manifest.json", "job": "Old", "complete": True,
                 "files": {"a.csv": {"bytes": 4, "sha256": "-"}}}
    (staging / COMMITTED).write_text(json.dumps(committed))
    with pytest.warns(UserWarning, match="finished writing the outputs of a run"):
        with OutputSet(tmp_path, [], job="Gap", suffix=SUFFIX, params={}, inputs={}):
            pass
    assert (tmp_path / "a.csv").read_text() == "x\n1\n" and (tmp_path / "Old_Manifest.json").exists()
    assert not staging.exists()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def wide_scene(tmp_path_factory):
    """A simulated scene of four blocks, so that the regression stage starts worker processes."""
    from optsar_nb.local import simulate

    folder = tmp_path_factory.mktemp("wide_scene")
    simulate.write_scene(folder, simulate.Scene(height=200, width=200))
    return folder


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process tables from /proc (Linux)")
def test_kill_9_leaves_no_worker_and_the_next_run_cleans_up(tmp_path, wide_scene):
    """SIGKILL during the regression stage: the worker processes end on their own, and the next
    run into the folder (any job) removes the killed run's temporary stacks and staging folder,
    says so, and completes."""
    run = optsar(["infill", "--inputs", wide_scene, "--start", "2021-01-01", "--end", "2022-01-01", "--out", tmp_path,
                  "--workers", "2"], wait=False)
    deadline = time.time() + 300
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.2)
        if list(tmp_path.glob(".optsar-work-*/coef/zarr.json")):
            workers = _children(run.pid)
    assert len(workers) >= 2, "the run never started its worker processes"
    run.kill()
    run.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    survivors = [Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:200] for p in workers if _alive(p)]
    assert survivors == [], "worker processes outlived their parent"
    assert any(p.name.startswith(".optsar-") for p in tmp_path.iterdir())  # what the killed run left
    done = optsar([*GAPS, "--out", tmp_path])
    assert done.returncode == 0, done.stderr
    assert "temporary stacks of a run that was stopped" in done.stderr
    assert "unfinished outputs of a run that was stopped" in done.stderr
    assert hidden(tmp_path) == [] and check_set(tmp_path, manifest(tmp_path, "Gap")) == []


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path):
    target = tmp_path / "results"
    target.write_text("a file the user made")
    done = optsar([*INFILL, "--out", target])
    assert done.returncode == 2 and "is a file, not a folder" in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == "a file the user made"


NOBODY = 65534  # the unprivileged user and group ("nobody", "nogroup") of Debian, Ubuntu and most Linux systems


@dataclass
class Unprivileged:
    """The command line run by a user whom a folder of mode 0o555 stops: as root (permission bits do
    not stop root), the user nobody; otherwise this user."""

    folder: Path  # searchable by everyone; holds the folders of the runs
    python: str
    env: dict
    inputs: Path  # the demo scene, readable by the user
    user: int | None

    def own_folder(self, name: str) -> Path:
        """A new folder the user can write into."""
        path = self.folder / name
        path.mkdir()
        if self.user is not None:
            os.chown(path, self.user, self.user)
        return path

    def run(self, args) -> subprocess.CompletedProcess:
        ids = {} if self.user is None else {"user": self.user, "group": self.user, "extra_groups": []}
        return subprocess.run([self.python, "-m", "optsar_nb.cli", *map(str, args)], env=self.env, cwd=self.folder,
                              capture_output=True, text=True, timeout=600, **ids)


def _succeeds(python: str, code: str, *args, env: dict, cwd: Path, user: int) -> bool:
    try:
        done = subprocess.run([python, "-c", code, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                              timeout=300, user=user, group=user, extra_groups=[])
    except OSError:  # the interpreter itself cannot be reached
        return False
    return done.returncode == 0


def _interpreter_copy(folder: Path) -> tuple[str, dict]:
    """A virtual environment in ``folder`` over a copy of this interpreter (executable, shared
    library, standard library) that uses this environment's packages, for a user who cannot reach
    the interpreter itself (installed in root's home, say); returns it and the variables it needs."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base, copy = Path(sys.base_prefix), folder / "base"
    (copy / "bin").mkdir(parents=True)
    shutil.copy2(base / "bin" / version, copy / "bin" / version)
    (copy / "lib").mkdir()
    for library in (base / "lib").glob("libpython*.so*"):
        shutil.copy2(library, copy / "lib" / library.name, follow_symlinks=False)
    shutil.copytree(base / "lib" / version, copy / "lib" / version,
                    ignore=shutil.ignore_patterns("site-packages", "test", "idlelib", "tkinter", "turtledemo"))
    venv = folder / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(copy / "bin" / version)
    (venv / "pyvenv.cfg").write_text(f"home = {copy / 'bin'}\ninclude-system-site-packages = false\n")
    (venv / "lib" / version).mkdir(parents=True)
    (venv / "lib" / version / "site-packages").symlink_to(sysconfig.get_path("purelib"))
    libraries = os.pathsep.join(filter(None, [str(copy / "lib"), os.environ.get("LD_LIBRARY_PATH")]))
    return str(venv / "bin" / "python"), {"LD_LIBRARY_PATH": libraries}


@pytest.fixture(scope="module")
def unprivileged():
    # in the system's temporary folder: pytest's own is private to this user
    folder = Path(tempfile.mkdtemp(prefix="optsar-read-only-"))
    folder.chmod(0o755)
    user = NOBODY if os.geteuid() == 0 else None
    home = folder / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "PYTHONDONTWRITEBYTECODE": "1",
           "MPLCONFIGDIR": str(home / "matplotlib"), "NUMBA_CACHE_DIR": str(home / "numba")}
    python, inputs = sys.executable, SAMPLE
    if user is not None:
        os.chown(home, user, user)
        check = dict(env=env, cwd=folder, user=user)
        if not _succeeds(python, "import optsar_nb.cli", **check):
            python, extra = _interpreter_copy(folder / "python")
            env.update(extra)
            assert _succeeds(python, "import optsar_nb.cli", **check), f"user {user} cannot run {python}"
        files = sorted(SAMPLE.iterdir())
        if not _succeeds(python, "import sys\nfor f in sys.argv[1:]: open(f, 'rb').read(1)", *files, **check):
            inputs = folder / "inputs"
            shutil.copytree(SAMPLE, inputs)
            for path in [inputs, *inputs.iterdir()]:
                path.chmod(0o755 if path.is_dir() else 0o644)
    try:
        yield Unprivileged(folder, python, env, inputs, user)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("job", ["gaps", "infill"])
def test_a_read_only_output_folder_is_refused_before_any_work(unprivileged, job):
    """An output folder the user cannot write into (mode 0o555; as root, root's folder and the user
    nobody): exit 2 and one line naming the folder and the fix, before any work: nothing appears in
    the folder, and the infilling's work folder (given with --work-dir) is never made. The same
    user completes the same gap job into a folder of its own."""
    run = unprivileged
    read_only = run.folder / f"{job}-read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if run.user is None:
        try:
            tempfile.TemporaryFile(dir=read_only).close()
        except PermissionError:
            pass
        else:
            pytest.skip("this user writes into a folder of mode 0o555 (not root, yet permission bits do not stop it)")
    scratch = run.own_folder(f"{job}-scratch")
    period = ["--start", "2021-01-01", "--end", "2022-01-01"]
    args = (["gaps", "--qa", run.inputs / f"SCL_Input{SUFFIX}.tif", *period] if job == "gaps" else
            ["infill", "--inputs", run.inputs, *period, "--workers", "1", "--work-dir", scratch / "work"])
    done = run.run([*args, "--out", read_only])
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"optsar {job}: error: cannot write into {read_only} "
                                        f"({os.strerror(errno.EACCES)}): choose a folder you can write to"]
    assert list(read_only.iterdir()) == [] and list(scratch.iterdir()) == []
    assert read_only.stat().st_mode & 0o777 == 0o555
    if job == "gaps":
        done = run.run([*args, "--out", scratch / "out"])
        assert done.returncode == 0, done.stderr
        assert (scratch / "out" / f"Gap_Manifest{SUFFIX}.json").is_file()


@pytest.mark.parametrize(("sent", "code", "said"), [(signal.SIGTERM, 143, "terminated"),
                                                    (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_end_with_one_line_and_remove_temporary_files(tmp_path, sent, code, said):
    run = optsar([*INFILL, "--out", tmp_path, "--workers", "1"], wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".optsar-work-*/coef/zarr.json")):
        time.sleep(0.1)
    os.kill(run.pid, sent)
    returned = run.wait(timeout=120)
    err = run.stderr.read()
    assert returned == code, err
    assert f"{said}; temporary files removed" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# Code that numba runs while it compiles or loads a kernel, called back from compiled code (ctypes,
# weakref finalizers): an exception raised there is printed as "ignored" and lost. Here, a function
# of a module named as numba's sends the signal to its own process and goes on.
_NUMBA_CALLBACK = """
def callback(sent):
    os.kill(os.getpid(), sent)
    for _ in range(100_000):
        pass
    return "went on"
"""


@pytest.mark.parametrize(("sent", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, "Terminated")])
def test_a_signal_during_a_numba_compilation_ends_the_job_before_its_next_task(sent, raised):
    """A signal that arrives while numba compiles (on a kernel's first use, in the main thread with
    one worker) is not raised there, where it would be lost, but before the job's next task; a
    signal elsewhere is raised at once; leaving the context restores the handlers it replaced."""
    import dask

    from optsar_nb.interrupts import Terminated, raised_on_signals

    raised = Terminated if raised == "Terminated" else raised
    numba_module = {"__name__": "numba.core.callback", "os": os}
    exec(compile(_NUMBA_CALLBACK, "numba-callback", "exec"), numba_module)
    before = signal.getsignal(sent)
    ran = []
    with raised_on_signals():
        assert numba_module["callback"](sent) == "went on"
        with pytest.raises(raised):
            dask.compute(dask.delayed(ran.append)(1), scheduler="sync")
        assert ran == []
        with pytest.raises(raised):
            dask.compute(dask.delayed(ran.append)(2), scheduler="sync")  # until the context is left
        with pytest.raises(raised):
            os.kill(os.getpid(), sent)
            time.sleep(1)
    assert signal.getsignal(sent) is before
    dask.compute(dask.delayed(ran.append)(3), scheduler="sync")
    assert ran == [3]


def test_an_interrupted_stage_writes_nothing_into_the_removed_work_folder(tmp_path):
    """Ctrl-C stops the job's wait, not the work it waits for: a block task in another thread goes
    on. Leaving the job's pools waits for the tasks they run, so the work folder, removed after,
    stays removed (it came back, made again by the task's late write, when dask's own threads ran
    the job)."""
    import dask

    from optsar_nb.local._store import Store, job_pools

    store = Store.create_in(str(tmp_path), "work-")
    late = store.create("late", (2, 64, 64), (1, 64, 64), "float32")

    def block_task():
        time.sleep(0.5)
        late[0] = 1.0
        return "written"

    def interrupted():
        time.sleep(0.1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        try:
            with job_pools(2):
                dask.compute(dask.delayed(block_task)(), dask.delayed(interrupted)())
        finally:
            store.destroy()
    time.sleep(1)
    assert list(tmp_path.iterdir()) == []


def test_removing_the_work_folder_waits_for_the_zarr_writes_still_running(tmp_path):
    """A signal interrupts the wait for a Zarr write, not the write, which Zarr's event loop runs
    on: removing the store waits for it, so no chunk lands in (and makes again) a removed folder."""
    import threading

    from optsar_nb.local._store import Store

    store = Store.create_in(str(tmp_path), "work-")
    z = store.create("stack", (64, 512, 512), (1, 512, 512), "float32")
    writer = threading.Thread(target=z.__setitem__, args=(slice(None), np.ones(z.shape, "float32")))
    writer.start()
    while not list(Path(store.location, "stack").rglob("c/*/*/*")):
        time.sleep(0.001)
    store.destroy()
    writer.join()
    time.sleep(0.5)
    assert list(tmp_path.iterdir()) == []


def _write_set(folder: Path, content: bytes, *, overwrite) -> None:
    with OutputSet(folder, ["a.txt", "b.txt"], job="Gap", suffix=SUFFIX, params={}, inputs={},
                   overwrite=overwrite) as out:
        out.path("a.txt").write_bytes(content)
        out.path("b.txt").write_bytes(content * 2)


def test_overwrite_own_replaces_only_the_jobs_own_unchanged_outputs(tmp_path):
    """Re-running a notebook (overwrite="own") replaces the set its earlier run wrote, and nothing
    else: a file the job did not write, or one changed since, is refused and left as it is."""
    from optsar_nb.errors import InvalidParameter, OutputExists

    _write_set(tmp_path, b"first", overwrite=False)
    with pytest.raises(OutputExists, match="overwrite=True"):
        _write_set(tmp_path, b"second", overwrite=False)
    _write_set(tmp_path, b"second", overwrite="own")
    assert (tmp_path / "a.txt").read_bytes() == b"second" and check_set(tmp_path, manifest(tmp_path, "Gap")) == []

    (tmp_path / "b.txt").write_bytes(b"edited by hand")
    with pytest.raises(OutputExists, match="b.txt exists and is not an unchanged output of an earlier Gap run") as exc:
        _write_set(tmp_path, b"third", overwrite="own")
    assert exc.value.path == tmp_path / "b.txt"
    assert (tmp_path / "b.txt").read_bytes() == b"edited by hand" and (tmp_path / "a.txt").read_bytes() == b"second"

    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_bytes(b"a file of the user's, no manifest")
    with pytest.raises(OutputExists, match="a.txt exists and is not"):
        _write_set(other, b"x", overwrite="own")
    assert (other / "a.txt").read_bytes() == b"a file of the user's, no manifest"
    with pytest.raises(InvalidParameter, match="overwrite='yes'"):
        _write_set(other, b"x", overwrite="yes")
