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

import asyncio
import importlib
import multiprocessing
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import dask
import dask.array as da
import fsspec
import numpy as np
import zarr
import zarr.core.sync as zarr_sync
from fsspec.implementations.local import LocalFileSystem

from ..errors import InsufficientDisk, WorkerFailed
from ._packed import PACKED_NODATA, Packed

# Codecs of the staged stacks, by what they hold and how often they are read (Blosc; figures from
# case 3's chunks, one core; decoding counts most: most stacks are read by every later pass):
# - observations (NaN where cloudy) and the incomplete series B.8 leaves as they are: zstd level
#   3 after a byte shuffle, decoded at 1.7-2.7 GB/s and 5-9 % smaller than zstd level 1 after a
#   bit shuffle, which decodes at 0.9-1.0 GB/s (encoding, once, at 0.2 GB/s instead of 0.4);
DENSE_ZSTD = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
# - S1 (read with a halo: several chunks per read) and the float64 results (coefficients, scores):
#   lz4 after a bit shuffle, decoded at 2-3 GB/s and encoded at 1-2 GB/s (zstd saves 1-6 % more of
#   S1 but encodes it 5-10 times slower: a minute more of staging on case 3);
FAST_LZ4 = zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")
# - masks (cloud states, int8; booleans): lz4 unshuffled, decoded at ~9 GB/s (states: 4.5 % of
#   their raw size; zstd: 1 %, decoded at 1.2 GB/s).
MASK_LZ4 = zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")


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

    def create(self, name: str, shape, chunks, dtype, *, codec=None, fill=None) -> zarr.Array:
        """A new array ``name`` (filled with ``fill``, default NaN if float, else 0) chunked by
        ``chunks``, compressed with ``codec`` (None: stored raw)."""
        dtype = np.dtype(dtype)
        fill = (np.nan if dtype.kind == "f" else 0) if fill is None else fill
        return zarr.create_array(store=f"{self.location}/{name}", shape=tuple(shape), chunks=tuple(chunks),
                                 dtype=dtype, fill_value=fill, compressors=codec,
                                 overwrite=True)

    def stage(self, items: list[tuple[str, da.Array, tuple[float, float] | None]], chunks,
              codecs: dict | None = None, along: tuple = ()) -> tuple[list, tuple]:
        """Each (name, data, packing) of ``items`` staged as ``name`` in ``chunks``, compressed with
        ``codecs[name]`` (default :data:`DENSE_ZSTD`), all in one pass over their graphs (the work
        they share is done once), and the dask collections ``along`` computed in that pass too;
        returns the staged arrays (read like the Zarr arrays they are) and the results of ``along``.
        Each dask chunk of ``data`` must span whole chunks of ``chunks`` (a task writes them all,
        and no two tasks write the same chunk).

        With ``packing`` (scale, offset: how the input file stored the values as int16), float
        values are staged as those int16, half the size, and read back as float32 by the input's
        own formula (:class:`Packed`). Each block is checked: if any value does not come back
        identical (another packing, values changed on the way), the stack is staged as floats.
        """
        staged, writes = {}, {}
        codec = {name: (codecs or {}).get(name, DENSE_ZSTD) for name, _, _ in items}
        for name, data, packing in items:
            for axis, (dask_chunks, edge) in enumerate(zip(data.chunks, chunks, strict=True)):
                if any(end % edge for end in np.cumsum(dask_chunks)[:-1]):
                    raise ValueError(f"{name}: dask chunks {dask_chunks} on axis {axis} cut chunks of {edge}; two "
                                     "tasks would write one chunk")
            if packing is not None:
                z = self.create(name, data.shape, chunks, "int16", codec=codec[name], fill=PACKED_NODATA)
                staged[name] = Packed(z, *packing)
            else:
                staged[name] = self.create(name, data.shape, chunks, data.dtype, codec=codec[name])
            put = staged[name].put if packing is not None else partial(_put, staged[name])
            writes[name] = data.map_blocks(put, dtype=bool, chunks=tuple((1,) * n for n in data.numblocks))
        *exact, results = dask.compute(*(w.all() for w in writes.values()), along)
        exact = dict(zip(writes, exact, strict=True))
        for name, data, _ in items:
            if not exact[name]:  # a packing that does not hold: as floats
                self.remove(name)
                staged[name] = self.create(name, data.shape, chunks, data.dtype, codec=codec[name])
                da.store(data, staged[name], lock=False)
        return [staged[name] for name, _, _ in items], results

    def copy(self, name: str, staged, positions: np.ndarray, chunks):
        """The images ``positions`` of a staged stack (Zarr or :class:`Packed`) as a new array
        ``name`` chunked by ``chunks``, staged the same way."""
        z = staged.z if isinstance(staged, Packed) else staged
        out = self.create(name, (len(positions), *z.shape[1:]), chunks, z.dtype, codec=next(iter(z.compressors), None),
                          fill=z.fill_value)
        da.store(da.from_zarr(z)[positions].rechunk(chunks), out, lock=False)
        return Packed(out, staged.scale, staged.offset) if isinstance(staged, Packed) else out

    def save(self, name: str, values: np.ndarray, chunks) -> zarr.Array:
        """A new array ``name`` holding the mask ``values`` (small arrays the tasks read in part)."""
        arr = self.create(name, values.shape, chunks, values.dtype, codec=MASK_LZ4)
        arr[...] = values
        return arr

    def open(self, name: str) -> zarr.Array:
        return zarr.open_array(store=f"{self.location}/{name}", mode="r+")

    def remove(self, name: str) -> None:
        fs, path = fsspec.core.url_to_fs(f"{self.location}/{name}")
        fs.rm(path, recursive=True)

    def destroy(self) -> None:
        _finish_zarr_io()
        fs, path = fsspec.core.url_to_fs(self.location)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _finish_zarr_io(timeout: float = 60) -> None:
    """Wait (at most ``timeout`` seconds) for the reads and writes Zarr still runs in its event
    loop: a wait for one of them that a signal interrupted leaves it running, and a chunk written
    after its folder was removed would make the folder again."""
    if zarr_sync.loop[0] is None:
        return

    async def others():
        this = asyncio.current_task()
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not this), return_exceptions=True)

    try:
        zarr_sync.sync(others(), timeout=timeout)
    except TimeoutError:
        pass


def _put(z: zarr.Array, values: np.ndarray, block_info=None) -> np.ndarray:
    """Stage one block at its place (a whole chunk of ``z``); a (1, ...) True (a dask block)."""
    z[tuple(slice(*loc) for loc in block_info[0]["array-location"])] = values
    return np.ones((1,) * values.ndim, bool)


def lazy(staged, chunks=None) -> da.Array:
    """A staged stack (Zarr or :class:`Packed`) as a dask array (its own chunks by default)."""
    if isinstance(staged, Packed):
        return da.from_array(staged, chunks=chunks or staged.chunks, name=f"packed-{uuid.uuid4().hex}")
    return da.from_zarr(staged, chunks=chunks or staged.chunks)


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


def share(obj):
    """``obj`` as an argument many tasks read: on a distributed cluster a copy on every worker
    (one dependency held by a single worker would draw every task to it), else one task."""
    if client_active():
        from distributed import default_client

        return default_client().scatter(obj, broadcast=True, hash=False)
    return dask.delayed(obj, traverse=False)


def compute(tasks: list, *, processes: bool, workers: int | None, width: int | None = None) -> list:
    """Run dask ``tasks`` on the active scheduler and return their results.

    With a distributed Client, there. Otherwise on this machine with ``workers`` cores (default:
    all): in worker processes when ``processes`` (stages whose chain of numpy calls on
    block-sized arrays holds the interpreter lock: threads of one process run them at about 1.4
    times the speed of one thread, processes at about twice), else in threads; one core, or a
    single task, runs here. Worker processes are started with "spawn" (safe whatever threads
    this process runs), so a script calling the job at top level needs the usual
    ``if __name__ == "__main__":`` guard; they end with the call, or with the job
    (:func:`job_pools`), and when this process ends, even when it is killed. ``width``: how
    many of the graph's tasks can run at once (default: one per task given; more when the
    given tasks are the roots of a tree).
    """
    if client_active():
        return list(dask.compute(*tasks))
    n = min(workers or os.cpu_count() or 1, width or len(tasks))
    if n <= 1:
        return list(dask.compute(*tasks, scheduler="sync"))
    if not processes:
        return list(dask.compute(*tasks, scheduler="threads", num_workers=n))
    job = _JOB_POOLS[-1] if _JOB_POOLS else None
    pool = _pool(n) if job is not None else _new_pool(n)
    try:
        # one task per submission (dask batches 6 by default): block tasks last long, and the
        # last batches would otherwise keep one worker busy while the other waits
        return list(dask.compute(*tasks, scheduler="processes", pool=pool, chunksize=1))
    except BrokenProcessPool as err:
        if job is not None:
            job.pop(n, None)
        raise WorkerFailed(
            "a worker process of the infilling stopped abruptly. If this runs from a script, put the call under "
            "`if __name__ == \"__main__\":` (worker processes import the main script again); otherwise the machine "
            "may have run out of memory: pass workers=1 (or fewer workers) to use less"
        ) from err
    finally:
        if job is None:
            pool.shutdown()


_JOB_POOLS: list[dict] = []  # the worker pools of the job that runs (see job_pools), by size


@contextmanager
def job_pools(workers: int | None = None, warm: str | None = None):
    """The job's workers on this machine (none on a cluster): within this context, dask's threads
    scheduler runs on ``workers`` threads (default: all cores) and the worker processes
    :func:`compute` starts serve every later stage too (starting them costs seconds: imports,
    compiled code loaded). With ``warm`` (a module's name), ``workers`` processes are started at
    once (with more than one core) and import it while the job's first stages run here. On the
    way out, even when the job was interrupted, the tasks they still run finish (nothing writes
    into the job's staged stacks once it is left) and they end."""
    if client_active():
        yield
        return
    n = workers or os.cpu_count() or 1
    pools: dict = {}
    _JOB_POOLS.append(pools)
    threads = ThreadPoolExecutor(n, thread_name_prefix="optsar-job")
    try:
        if warm is not None and n > 1:
            for _ in range(n):
                _pool(n).submit(_import, warm)
        with dask.config.set(scheduler="threads", pool=threads):
            yield
    finally:
        _JOB_POOLS.remove(pools)
        threads.shutdown(cancel_futures=True)
        for pool in pools.values():
            pool.shutdown(cancel_futures=True)


def _import(module: str) -> None:
    importlib.import_module(module)


def _pool(n: int) -> ProcessPoolExecutor:
    """The running job's pool of ``n`` worker processes (started on first use)."""
    pools = _JOB_POOLS[-1]
    if n not in pools:
        pools[n] = _new_pool(n)
    return pools[n]


def _new_pool(n: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(os.getpid(),))


def total(tasks: list, combine, *, processes: bool, workers: int | None):
    """The results of dask ``tasks`` combined pairwise, ``combine(a, b)``, in a tree of tasks (where
    they run, so that one result, not one per task, comes back); see :func:`compute`."""
    level = list(tasks)
    while len(level) > 1:
        pairs = [dask.delayed(combine)(a, b) for a, b in zip(level[::2], level[1::2])]
        level = pairs + level[len(pairs) * 2 :]
    return compute(level, processes=processes, workers=workers, width=len(tasks))[0]


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


# Temporary disk per pixel and optical image, before compression: observations (float32, or the
# int16 their file stored) and states (int8), twice while the images kept are copied out of the
# period's; then the B.8 component scores (float64, pca_fraction of the images: 0.8 bytes by
# default), and up to 4 bytes more for pixels whose prediction series is incomplete (B.8 leaves
# them as they are: staged as they are). The aligned S1 adds 8 bytes per pixel and S1 image (VV
# and VH in float32; 4 as int16), the coefficient image and the fusion's per-pixel reliability 96
# bytes per pixel. Upper bounds but for the incomplete series, before compression (case 3 of the
# benchmarks stages about 60 % of this estimate).
SCORE_BYTES_PER_SAMPLE = 0.8
# Output bytes per pixel and image before compression (four float32 stacks and the int8 mask);
# deflate typically brings the float stacks to ~70 %.
OUTPUT_BYTES_PER_SAMPLE = 17


def staging_bytes(n_images: int, n_s1: int, h: int, w: int, *, packed_obs: bool = False,
                  packed_s1: bool = False) -> int:
    """The largest temporary disk use of an infilling of ``n_images`` optical and ``n_s1`` S1
    images of ``h`` x ``w`` px (the coefficient image included); ``packed_*``: the inputs are
    int16 files (``attrs["packing"]``), staged as such."""
    optical = (2 if packed_obs else 4) + 1
    per_pixel = max(2 * optical * n_images,
                    (optical + SCORE_BYTES_PER_SAMPLE) * n_images + (4 if packed_s1 else 8) * n_s1)
    return int((per_pixel + 12 * 8) * h * w)


def check_disk_space(shape: tuple[int, int, int], n_s1: int, work_dir: Path, out_dir: Path, **packed) -> None:
    """Refuse to start when ``work_dir`` cannot hold the staged stacks of a (time, y, x) input
    and ``n_s1`` S1 images (``packed``: see :func:`staging_bytes`).

    Counts every image of the period (an upper bound: sparse and unpaired images are dropped
    later). The message gives the sizes and the fix, instead of a full disk an hour in.
    """
    n, h, w = shape
    staging = staging_bytes(n, n_s1, h, w, **packed)
    outputs = n * h * w * OUTPUT_BYTES_PER_SAMPLE
    free = shutil.disk_usage(work_dir).free
    if staging > free:
        raise InsufficientDisk(
            f"the infilling stages about {_size(staging)} of temporary stacks ({n} images of {h} x {w} px) "
            f"in {work_dir}, which has {_size(free)} free. Pass work_dir= (CLI: --work-dir) on a disk with "
            f"more space, or shorten the period or the AOI. The outputs in {out_dir} need up to "
            f"{_size(outputs)} more (less after compression)."
        )


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:,.1f} MB"
