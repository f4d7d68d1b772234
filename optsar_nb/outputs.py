"""Output sets: a job's files appear in its output folder complete, checked and together, or not at all.

A job writes everything into a hidden staging folder inside the output folder (same file system,
so moving a file into place is one rename). Every GeoTIFF is checked as it is written
(:func:`verify_geotiff`: re-opened, its header and the extent of every block compared with the
file). When the job has finished, each file's checksum is recorded in a manifest, and only then
do the files replace what is in the output folder; the manifest, written last, marks the set
complete. With ``overwrite``, nothing of an older set is touched before the new one is complete.
``overwrite`` is False (refuse any existing file), True (replace), or ``"own"``: replace only the
files of this job's earlier set in the folder that its manifest still vouches for (unchanged
since); anything else, a file the job did not write or one changed since, is refused. "own" is
what re-running a notebook needs.

One job at a time writes into a folder: a lock file holds its process id and host. A lock left
by a process that no longer runs is taken over (with a warning); staging folders left by killed
jobs are removed at the next job's start, or, if they had been committed (their manifest
written) when the job died, their moves are finished.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InvalidParameter, OutputExists, OutputLocked, WriteFailed

LOCK_FILE = ".optsar.lock"
STAGING_PREFIX = ".optsar-staging-"
WORK_PREFIX = ".optsar-work-"  # the local infilling's temporary stacks (``<prefix><pid>-...``)
COMMITTED = "manifest-committed.json"  # inside a staging folder: its manifest, once every file is checked
OWN = "own"  # overwrite mode: replace only this job's own earlier, unchanged outputs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


# ---------------------------------------------------------------------------------------------
# checked writes
def free_space(path: Path) -> str:
    """How much space is free where ``path`` is written (for messages about failed writes)."""
    try:
        return f"{shutil.disk_usage(path.parent).free / 1e9:.2f} GB free in {path.parent}"
    except OSError:
        return f"{path.parent} is not readable"


def overwrite_mode(value) -> bool | str:
    """``overwrite`` checked: False, True or "own" (see the module's docstring)."""
    if value is True or value is False or value == OWN:
        return value
    raise InvalidParameter(f"overwrite={value!r}: use False (refuse existing outputs), True (replace them) or "
                           f"'{OWN}' (replace only this job's own earlier outputs)")


def refuse_existing(paths, *, why: str = "exists") -> None:
    """Raise OutputExists for the first of ``paths`` that exists (checked before any work); the
    error's ``path`` attribute is that file."""
    for p in paths:
        if Path(p).exists():
            error = OutputExists(f"{p} {why}: remove it, choose another output folder, or pass overwrite=True")
            error.path = Path(p)
            raise error


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Refuses (OutputExists) when ``path`` exists and ``overwrite`` is False, so that nothing a
    user made is silently replaced; a failed write leaves no partial file behind.
    """
    path = Path(path)
    if not overwrite:
        refuse_existing([path])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the user's usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_csv(table, path: str | Path, *, overwrite: bool = False) -> Path:
    """A pandas table as CSV (no index), written atomically (:func:`atomic_path`)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


def verify_geotiff(path: Path, *, count: int, height: int, width: int, dtype: str,
                   names: list[str] | None = None, label: Path | None = None) -> None:
    """Re-open a written GeoTIFF and check its header and that every block lies within the file.

    GDAL reports a failed write (a full disk, a file size limit) on its error stream and leaves
    a file that opens; its blocks' recorded extents then run past the end of the file, or are
    missing. Raises WriteFailed naming the file (``label``: the name the file is written for).
    """
    import rasterio

    size = path.stat().st_size
    shown = label or path
    try:
        with rasterio.open(path) as src:
            found = (src.count, src.height, src.width, src.dtypes[0])
            if found != (count, height, width, dtype):
                raise WriteFailed(f"{shown} holds {found} (bands, rows, columns, type) instead of "
                                  f"{(count, height, width, dtype)}: the write did not complete")
            if names is not None and list(src.descriptions) != list(names):
                raise WriteFailed(f"{shown}: the band names were not written")
            bad = incomplete_block(src, size)
            if bad is not None:
                raise WriteFailed(f"{shown} is incomplete (band {bad[0]}, block {bad[1]},{bad[2]} is missing or runs "
                                  f"past the end of the file): the write did not complete ({free_space(path)})")
    except rasterio.errors.RasterioIOError as exc:
        raise WriteFailed(f"{shown} cannot be read back ({exc}): the write did not complete "
                          f"({free_space(path)})") from None


def incomplete_block(src, size: int) -> tuple[int, int, int] | None:
    """(band, block row, block column) of the first block of an open GeoTIFF ``src`` that is
    missing or runs past ``size`` bytes (the file's length), or None when every block is there."""
    for band in range(1, src.count + 1):
        for (row, col), _ in src.block_windows(band):
            offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
            length = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
            if offset is None or length is None or int(offset) + int(length) > size:
                return band, row, col
    return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# the lock
@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock file for the block (pid, host, start time).

    Raises OutputLocked while another live process holds it; takes over (with a warning) the
    lock of a process of this host that no longer runs.
    """
    lock = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": dt.datetime.now().isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                warnings.warn(f"{folder}: took over the lock of process {holder['pid']} (started "
                              f"{holder.get('started', '?')}), which no longer runs", UserWarning, stacklevel=3)
                lock.unlink(missing_ok=True)
                continue
            if not holder:  # being written by its owner right now, or empty: the owner is starting
                raise OutputLocked(f"{folder} is locked by another run starting now ({lock}); wait for it, or "
                                   "choose another output folder") from None
            raise OutputLocked(
                f"{folder} is being written by another run (process {holder.get('pid')} on {holder.get('host')}, "
                f"started {holder.get('started')}): wait for it to finish or choose another output folder. If that "
                f"run is gone (another machine, for instance), delete {lock}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if _read_lock(lock).get("pid") == me["pid"]:
            lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------
# output sets
def manifest_name(job: str, suffix: str) -> str:
    return f"{job}_Manifest{suffix}.json"


def _clean_leftovers(folder: Path) -> None:
    """Finish the commits, or remove the staging and work folders, of jobs that were killed here
    (called with the folder's lock held: no live job of this package writes here)."""
    for path in sorted(folder.glob(f"{STAGING_PREFIX}*")):
        committed = path / COMMITTED
        if committed.exists():
            manifest = json.loads(committed.read_text())
            _move_into_place(path, folder, manifest)
            warnings.warn(f"{folder}: finished writing the outputs of a run that was stopped while moving them into "
                          f"place ({', '.join(manifest['files'])})", UserWarning, stacklevel=4)
        else:
            warnings.warn(f"{folder}: removed {path.name}, the unfinished outputs of a run that was stopped",
                          UserWarning, stacklevel=4)
        shutil.rmtree(path, ignore_errors=True)
    for path in sorted(folder.glob(f"{WORK_PREFIX}*")):
        pid = path.name[len(WORK_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9
            shutil.rmtree(path, ignore_errors=True)
            warnings.warn(f"{folder}: removed {path.name} ({size:.2f} GB), the temporary stacks of a run that was "
                          "stopped", UserWarning, stacklevel=4)


def _move_into_place(staging: Path, folder: Path, manifest: dict) -> None:
    for name in manifest["files"]:
        if (staging / name).exists():
            os.replace(staging / name, folder / name)
    tmp = staging / ".manifest.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / manifest["manifest"])


class OutputSet:
    """Stage a job's files and commit them as one set (see the module's docstring).

    Use as a context manager: ``path(name)`` is where the job writes file ``name``; on a clean
    exit every file written to the staging folder is moved into ``folder`` and listed
    in the manifest ``<job>_Manifest<suffix>.json`` with ``params`` and ``inputs``; on an error
    nothing in ``folder`` changes. Without ``overwrite``, an existing file of the set (or the
    manifest) is refused before any work starts, and again before anything is moved.
    """

    def __init__(self, folder: str | Path, names, *, job: str, suffix: str, params: dict, inputs: dict,
                 overwrite: bool = False):
        self.folder = Path(folder)
        self.names = list(names)
        self.manifest = manifest_name(job, suffix)
        self.job, self.params, self.inputs = job, params, inputs
        self.overwrite = overwrite_mode(overwrite)
        self.staging: Path | None = None
        self._lock = None

    def path(self, name: str) -> Path:
        return self.staging / name

    def final(self, name: str) -> Path:
        return self.folder / name

    def _refuse(self, names) -> None:
        if self.overwrite is True:
            return
        existing = [self.folder / name for name in [*names, self.manifest] if (self.folder / name).exists()]
        if self.overwrite == OWN and existing:
            own = self._own_files()
            refuse_existing([p for p in existing if p.name not in own],
                            why=f"exists and is not an unchanged output of an earlier {self.job} run here")
            return
        refuse_existing(existing)

    def _own_files(self) -> set[str]:
        """Names of this job's earlier set in the folder that its manifest vouches for (checksums
        equal), the manifest included; empty without an intact manifest."""
        try:
            manifest = json.loads((self.folder / self.manifest).read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return set()
        changed = set(check_set(self.folder, manifest))
        return {self.manifest, *(name for name in files if name not in changed)}

    def __enter__(self) -> OutputSet:
        _writable(self.folder)
        self._lock = folder_lock(self.folder)
        self._lock.__enter__()
        try:
            _clean_leftovers(self.folder)
            self._refuse(self.names)
            self.staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.folder))
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
            self._lock.__exit__(None, None, None)

    def _commit(self) -> None:
        written = sorted(p.name for p in self.staging.iterdir() if p.is_file() and not p.name.startswith("."))
        missing = [n for n in self.names if n not in written]
        if missing:
            raise WriteFailed(f"the run did not write {', '.join(missing)} into {self.folder}")
        self._refuse(written)
        # checksums of the files in threads (hashing releases the GIL): the cores are idle by now
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            sums = pool.map(sha256, [self.staging / name for name in written])
            files = {name: {"bytes": (self.staging / name).stat().st_size, "sha256": digest}
                     for name, digest in zip(written, sums, strict=True)}
        manifest = {"manifest": self.manifest, "job": self.job, "complete": True,
                    "written": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "optsar_nb": _version(), "params": self.params, "inputs": self.inputs, "files": files}
        if (self.folder / self.manifest).exists():  # the older set is no longer complete from here on
            (self.folder / self.manifest).unlink()
        tmp = self.staging / ".committed.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.staging / COMMITTED)  # from here a killed run is finished by the next one
        _move_into_place(self.staging, self.folder, manifest)


def _writable(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputExists(f"{folder} is a file, not a folder: choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".optsar-probe-")
        probe.close()
    except OSError as exc:
        raise WriteFailed(f"cannot write into {folder} ({exc.strerror or exc}): choose a folder you can "
                          "write to") from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optsar_nb")
    except PackageNotFoundError:
        return "unknown"


def complete_sets(folder: str | Path) -> dict[str, dict]:
    """The complete output sets in ``folder``: manifest name -> manifest, for those whose files
    all exist with their recorded size (checksums are compared by :func:`check_set`)."""
    out = {}
    for path in sorted(Path(folder).glob("*_Manifest*.json")):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        files = manifest.get("files", {})
        if all((Path(folder) / n).is_file() and (Path(folder) / n).stat().st_size == f["bytes"]
               for n, f in files.items()):
            out[path.name] = manifest
    return out


def check_set(folder: str | Path, manifest: dict) -> list[str]:
    """Files of a set whose content no longer matches its manifest (empty when the set is intact)."""
    return [n for n, f in manifest["files"].items()
            if not (Path(folder) / n).is_file() or sha256(Path(folder) / n) != f["sha256"]]


def fingerprint(data: Any) -> dict:
    """What identifies an input: its shape and time span, and the file it was read from (size and
    modification time) when known."""
    out: dict[str, Any] = {}
    shape = getattr(data, "shape", None)
    if shape is not None:
        out["shape"] = [int(s) for s in shape]
    times = getattr(data, "coords", {}).get("time") if hasattr(data, "coords") else None
    if times is not None and times.size:
        out["time"] = [str(times.values.min())[:19], str(times.values.max())[:19]]
    source = getattr(data, "encoding", {}).get("source") if hasattr(data, "encoding") else None
    source = source or (getattr(data, "attrs", {}) or {}).get("source")
    if source and os.path.exists(source):
        stat = os.stat(source)
        out["file"] = {"path": str(source), "bytes": stat.st_size,
                       "modified": dt.datetime.fromtimestamp(stat.st_mtime).isoformat(timespec="seconds")}
    return out
