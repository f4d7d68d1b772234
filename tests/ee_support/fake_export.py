"""A fake Earth Engine export client for the export tests: scripted task states, no server."""

from __future__ import annotations

DEFAULT_STATES = ("READY", "RUNNING", "COMPLETED")


class FakeTask:
    """Reports ``states`` one per poll, then the last one for ever; FAILED/CANCELLED carry ``message``."""

    def __init__(self, states, message="no message"):
        self.states, self.message, self.started = list(states), message, False

    def start(self):
        self.started = True

    def status(self):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        out = {"state": state}
        if state in ("FAILED", "CANCELLED"):
            out["error_message"] = self.message
        return out


class FakeClient:
    """An export client (``optsar_nb.ee.export.Client``): task ``name``'s attempt k follows
    ``scripts[name][k]`` (default: ``default_states``); records what was started and downloaded.

    ``started``: (name, "image" | "table", destination, grid) per task (grid: the export's crs and
    transform, None for tables); ``objects``: the image or table of each name; ``downloads``:
    (path, grid); ``existing``: names that already exist.
    """

    def __init__(self, scripts=None, message="no message", *, existing=(), default_states=DEFAULT_STATES):
        self.scripts, self.message = scripts or {}, message
        self.existing, self.default_states = set(existing), list(default_states)
        self.started, self.objects, self.downloads = [], {}, []
        self.region = None

    def exists(self, destination, name):
        return name in self.existing

    def _task(self, name, kind, obj, destination, grid):
        attempts = self.scripts.get(name, [self.default_states])
        n = sum(1 for s in self.started if s[0] == name)
        self.started.append((name, kind, destination, grid))
        self.objects[name] = obj
        return FakeTask(attempts[min(n, len(attempts) - 1)], self.message)

    def image_task(self, image, *, name, destination, region, grid):
        self.region = region
        return self._task(name, "image", image, destination, grid)

    def table_task(self, table, *, name, destination):
        return self._task(name, "table", table, destination, None)

    def download(self, image, path, *, region, grid):
        self.downloads.append((path, grid))
        self.objects[path.stem] = image
        path.parent.mkdir(parents=True, exist_ok=True)  # as the real client's atomic write does
        path.write_bytes(b"tif")
        return path
