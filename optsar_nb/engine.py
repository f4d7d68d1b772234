"""The engine a run uses: Earth Engine when it can be used on this machine, else the local engine.

``resolve_backend("auto")`` picks Earth Engine only when credentials exist on this machine and
``ee.Initialize()`` succeeds within a short time; otherwise the local engine, with the reason.
:mod:`optsar_nb.run` runs the jobs on the :class:`Engine` chosen here.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidParameter, OptsarError

BACKENDS = ("auto", "ee", "local")
EE_INIT_TIMEOUT_S = 20.0  # ee.Initialize() talks to Google; never let a notebook hang on it


@dataclass(frozen=True)
class Engine:
    """The engine a run uses and why it was chosen."""

    name: str  # "ee" or "local"
    reason: str

    def __str__(self) -> str:
        label = "Earth Engine" if self.name == "ee" else "local engine (xarray + dask, offline)"
        return f"{label}: {self.reason}"


def ee_credentials() -> Path | None:
    """The Earth Engine credentials file on this machine, or None (no network is used)."""
    for env in ("EE_SERVICE_ACCOUNT_KEY", "GOOGLE_APPLICATION_CREDENTIALS"):
        if os.environ.get(env) and Path(os.environ[env]).is_file():
            return Path(os.environ[env])
    try:
        import ee
    except ImportError:
        return None
    path = Path(ee.oauth.get_credentials_path())
    return path if path.is_file() else None


def ee_status(*, timeout_s: float = EE_INIT_TIMEOUT_S, project: str | None = None) -> tuple[bool, str]:
    """(usable, reason): whether ``ee.Initialize()`` works with the credentials already here.

    Without a credentials file nothing touches the network. With one, ``ee.Initialize`` runs
    in a daemon thread and is abandoned after ``timeout_s`` seconds.
    """
    try:
        import ee
    except ImportError:
        return False, "earthengine-api is not installed (pip install earthengine-api)"
    if ee_credentials() is None:
        return False, "no Earth Engine credentials on this machine (run `earthengine authenticate` to use EE)"
    outcome: dict[str, Any] = {}

    def initialize() -> None:
        try:
            ee.Initialize(project=project) if project else ee.Initialize()
            outcome["ok"] = True
        except Exception as exc:  # any failure means: use the local engine
            outcome["error"] = exc

    worker = threading.Thread(target=initialize, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return False, f"ee.Initialize() did not answer within {timeout_s:g} s (no network?)"
    if "error" in outcome:
        return False, f"ee.Initialize() failed: {outcome['error']}"
    return True, "credentials found and ee.Initialize() succeeded"


def resolve_backend(backend: str = "auto", *, timeout_s: float = EE_INIT_TIMEOUT_S) -> Engine:
    """Choose the engine the jobs run on.

    Parameters
    ----------
    backend : {"auto", "ee", "local"}
        "local": the local engine on files; "ee": Earth Engine (an error says why when it cannot be
        used); "auto": Earth Engine when credentials exist here and ``ee.Initialize()`` succeeds
        within ``timeout_s``, else the local engine.
    timeout_s : float
        How long Earth Engine's initialization may take before "auto" gives up on it.

    Returns
    -------
    Engine
        Its ``name`` ("ee" or "local") and the ``reason`` it was chosen, printable as one line.
    """
    backend = str(backend).strip().lower()
    if backend not in BACKENDS:
        raise InvalidParameter(f"backend={backend!r} is unknown: choose one of {BACKENDS}")
    if backend == "local":
        return Engine("local", "chosen explicitly (backend='local')")
    ok, reason = ee_status(timeout_s=timeout_s)
    if ok:
        return Engine("ee", reason)
    if backend == "ee":
        raise OptsarError(f"backend='ee' but Earth Engine is not usable: {reason}; or use backend='local'")
    return Engine("local", f"backend='auto' and {reason}")
