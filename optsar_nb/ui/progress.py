"""Progress of long steps in the app: a bar fed by dask's scheduler, and Earth Engine task states."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from ._deps import require

EE_DONE_STATES = ("COMPLETED", "FAILED", "CANCELLED", "done", "skipped")


def _dask_callback_class():
    from dask.callbacks import Callback

    class _BarCallback(Callback):
        """Moves the panel's bar as dask finishes tasks (as dask.diagnostics.ProgressBar does)."""

        def __init__(self, panel):
            super().__init__()
            self.panel = panel

        def _start_state(self, dsk, state):
            self.panel.bar.value = 0

        def _posttask(self, key, result, dsk, state, worker_id):
            total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            if total:
                self.panel.bar.value = int(100 * len(state["finished"]) / total)

    return _BarCallback


class ProgressPanel:
    """A progress bar and a status line for the app's long steps."""

    def __init__(self):
        widgets = require("ipywidgets")
        self.bar = widgets.IntProgress(value=0, min=0, max=100, description="", bar_style="",
                                       layout=widgets.Layout(width="300px", visibility="hidden"))
        self.label = widgets.HTML("")
        self.widget = widgets.HBox([self.bar, self.label])
        self.history: list[str] = []
        self.tasks: dict[str, str] = {}  # Earth Engine export task -> state

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Show ``text`` with a bar while the block runs; dask computations inside move the bar."""
        self.bar.layout.visibility = "visible"
        self.bar.bar_style = "info"
        self.bar.value = 0
        self.label.value = f"<i>{text} ...</i>"
        started = time.monotonic()
        callback = _dask_callback_class()(self)
        try:
            with callback:
                yield
        except Exception:
            self.bar.bar_style = "danger"
            self.label.value = f"{text}: failed"
            self.history.append(f"{text}: failed")
            raise
        self.bar.value = 100
        self.bar.bar_style = "success"
        done = f"{text}: done in {time.monotonic() - started:.1f} s"
        self.label.value = done
        self.history.append(done)

    def ee_task_update(self, name: str, state: str, fraction: float | None = None) -> None:
        """Progress callback for Earth Engine export tasks (``optsar_nb.ee.export.watch``)."""
        self.tasks[name] = state
        done = sum(s in EE_DONE_STATES for s in self.tasks.values())
        self.bar.layout.visibility = "visible"
        self.bar.value = int(100 * done / max(len(self.tasks), 1))
        self.label.value = ", ".join(f"{n}: {s}" for n, s in self.tasks.items())
