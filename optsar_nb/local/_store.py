"""Where the infilling keeps its staged stacks, and where its block tasks run.

The staged stacks are Zarr arrays in one folder per run (:class:`Store`), at a location the
user chooses: a local folder (the default, inside the output folder) or an fsspec URL such as
``s3://bucket/prefix`` or a path on a shared filesystem, which every worker of a
dask.distributed cluster can reach. Block tasks read and write whole chunks of them, so tasks
never write the same chunk and need no lock, and a task depends on nothing that only its own
machine sees.

Tasks run on the active dask scheduler (:func:`compute`): a ``distributed.Client`` the user has
started (LocalCluster, dask-jobqueue, Kubernetes ...), otherwise on this machine, in threads or,
for stages whose chain of numpy calls holds the interpreter lock, in worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import dask
import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem

from ..errors import WorkerFailed

# zstd at its fastest level for the stacks that compress (states, observations that are NaN where
# cloudy); float stacks of predictions compress little and are stored raw.
FAST_ZSTD = zarr.codecs.ZstdCodec(level=1)


class Store:
    """A run's folder of Zarr arrays at ``location`` (local folder or fsspec URL), created by
    :meth:`create_in` and removed by :meth:`destroy`. Small and picklable: tasks carry it (or
    the arrays it opens) to any worker."""

    def __init__(self, location: str):
        # a folder of this machine as a plain path (Zarr's local store makes its folders)
        folder = local_folder(location)
        self.location = str(folder) if folder is not None else str(location).rstrip("/")

    @classmethod
    def create_in(cls, parent: str, prefix: str) -> Store:
        """A new, empty run folder ``<parent>/<prefix><unique>``."""
        store = cls(f"{str(parent).rstrip('/')}/{prefix}{uuid.uuid4().hex[:12]}")
        fs, path = fsspec.core.url_to_fs(store.location)
        fs.makedirs(path, exist_ok=True)
        return store

    def create(self, name: str, shape, chunks, dtype, *, compress: bool = False) -> zarr.Array:
        """A new array ``name`` (NaN-filled if float, else 0) chunked by ``chunks``."""
        dtype = np.dtype(dtype)
        return zarr.create_array(store=f"{self.location}/{name}", shape=tuple(shape), chunks=tuple(chunks),
                                 dtype=dtype, fill_value=np.nan if dtype.kind == "f" else 0,
                                 compressors=FAST_ZSTD if compress else None, overwrite=True)

    def save(self, name: str, values: np.ndarray, chunks, *, compress: bool = True) -> zarr.Array:
        """A new array ``name`` holding ``values`` (small arrays the tasks read in part)."""
        arr = self.create(name, values.shape, chunks, values.dtype, compress=compress)
        arr[...] = values
        return arr

    def open(self, name: str) -> zarr.Array:
        return zarr.open_array(store=f"{self.location}/{name}", mode="r+")

    def remove(self, name: str) -> None:
        fs, path = fsspec.core.url_to_fs(f"{self.location}/{name}")
        fs.rm(path, recursive=True)

    def destroy(self) -> None:
        fs, path = fsspec.core.url_to_fs(self.location)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def local_folder(location: str) -> Path | None:
    """``location`` as a folder of this machine (a plain path or ``file://``), else None."""
    fs, path = fsspec.core.url_to_fs(str(location))
    return Path(path) if isinstance(fs, LocalFileSystem) else None


def client_active() -> bool:
    """Whether a dask.distributed ``Client`` is the default scheduler (the user started one)."""
    try:
        from distributed import default_client
    except ImportError:
        return False
    try:
        default_client()
    except ValueError:
        return False
    return True


def compute(tasks: list, *, processes: bool, workers: int | None) -> list:
    """Run dask ``tasks`` on the active scheduler and return their results.

    With a distributed Client, there. Otherwise on this machine with ``workers`` cores (default:
    all): in worker processes when ``processes`` (stages whose chain of numpy calls on
    block-sized arrays holds the interpreter lock: threads of one process run them at about 1.4
    times the speed of one thread, processes at about twice), else in threads; one core, or a
    single task, runs here. Worker processes are started with "spawn" (safe whatever threads
    this process runs), so a script calling the job at top level needs the usual
    ``if __name__ == "__main__":`` guard; they end when this process ends, even when it is
    killed.
    """
    if client_active():
        return list(dask.compute(*tasks))
    n = min(workers or os.cpu_count() or 1, len(tasks))
    if n <= 1:
        return list(dask.compute(*tasks, scheduler="sync"))
    if not processes:
        return list(dask.compute(*tasks, scheduler="threads", num_workers=n))
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(n, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            return list(dask.compute(*tasks, scheduler="processes", pool=pool))
    except BrokenProcessPool as err:
        raise WorkerFailed(
            "a worker process of the infilling stopped abruptly. If this runs from a script, put the call under "
            "`if __name__ == \"__main__\":` (worker processes import the main script again); otherwise the machine "
            "may have run out of memory: pass workers=1 (or fewer workers) to use less"
        ) from err


def _worker_init(parent: int) -> None:
    """A local worker process: one BLAS thread (one block per core already), and exit when
    ``parent``, the process that started it, is gone (killed, even with SIGKILL, which leaves it
    no chance to stop its pool): a daemon thread watches."""
    import threading
    import time

    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
