"""Ending a command-line job on Ctrl-C (SIGINT) or SIGTERM, always, so that its clean-up runs.

Python raises a signal's exception in the main thread at its next instruction. When that
instruction belongs to a callback from compiled code (numba compiling a kernel on its first use
calls back into Python through ctypes and weakref finalizers), the exception is printed as
"ignored" and the job goes on as if nothing had happened. So the handlers here record the signal,
raise at once unless the main thread is inside numba or llvmlite, and the job raises what they
recorded before each of its next tasks (a dask callback; the local schedulers start every task
from the main thread).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from dask.callbacks import Callback


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the job's clean-up runs (as for Ctrl-C)."""


_received: type[BaseException] | None = None  # the exception of the signal received, until handled
_COMPILING = ("numba", "llvmlite")


def _handle(signum, frame) -> None:
    global _received
    _received = KeyboardInterrupt if signum == signal.SIGINT else Terminated
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] in _COMPILING:
            return  # raised before the next task (see the module's docstring)
        frame = frame.f_back
    raise _received()


def _before_task(key, dsk, state) -> None:
    if _received is not None:
        raise _received()


@contextmanager
def raised_on_signals():
    """Within this context (in the main thread; elsewhere it does nothing), SIGINT raises
    ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`, in the main thread, and again before
    each later task of a local dask scheduler until the context is left."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Callback(pretask=_before_task):
            yield
    finally:
        _received = None
        for s, handler in previous.items():
            signal.signal(s, handler)
