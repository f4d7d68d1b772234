"""The notebooks' map app: set an AOI, preview masks, see gap statistics, infill NDVI, export.

A geemap ``Map`` with Earth Engine layers when Earth Engine is usable, else a plain
``ipyleaflet.Map`` with overlays of local results. The app only wires widgets together: each
map widget is its own class (:mod:`.aoi_control`, :mod:`.map_widgets`, :mod:`.inspector`,
:mod:`.progress`) and the work is done by :mod:`optsar_nb.run`. Errors from bad input are shown
in the message panel, never as tracebacks.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
from pathlib import Path

from .. import run
from ..engine import Engine
from ..errors import OptsarError, OutputExists
from ..missions import MISSIONS
from ..params import GapParams
from ..results import GapResult
from ._deps import require
from .aoi_control import AOIControl, clear_error, message_html
from .inspector import PixelInspector
from .layers import lonlat_bounds, nice_bounds_center
from .map_widgets import ClearMaskLayer, LayerSwitch, NDVICompare, StatisticLayer, ee_statistic_styles
from .progress import ProgressPanel

MAP_HEIGHT = "480px"
# Leaflet draws an image overlay as an <img> that the browser smooths when enlarged: keep pixels
# square. A map without basemap tiles gets a light neutral background instead of Leaflet's grey.
MAP_CSS = ("<style>.leaflet-image-layer { image-rendering: pixelated; }"
           ".optsar-basemap-offline.leaflet-container, .optsar-basemap-offline .leaflet-container"
           " { background: #f4f3ef; }</style>")
BASEMAP_OFFLINE = ("basemap offline: no map tiles can be fetched here (no network);"
                   " the data layers and your AOI are drawn as usual")


def make_map(engine: Engine):
    """geemap's Map on the Earth Engine engine (its own draw control off: the app adds one), else ipyleaflet's.

    The Earth Engine session is the caller's (initialized when the engine was chosen): geemap is
    told not to initialize it again, which could start an interactive authentication prompt.
    """
    if engine.name == "ee":
        geemap = require("geemap")
        return geemap.Map(draw_ctrl=False, data_ctrl=False, toolbar_ctrl=False, height=MAP_HEIGHT,
                          ee_initialize=False)
    ipyleaflet = require("ipyleaflet")
    widgets = require("ipywidgets")
    host = ipyleaflet.Map(scroll_wheel_zoom=True, layout=widgets.Layout(height=MAP_HEIGHT))
    host.add(ipyleaflet.LayersControl(position="topright"))
    host.add(ipyleaflet.ScaleControl(position="bottomleft"))
    basemap = next((layer for layer in host.layers if getattr(layer, "base", False)), None)
    if basemap is not None and not tiles_reachable(basemap.url):
        host.remove(basemap)
        host.add_class("optsar-basemap-offline")
        label = widgets.HTML(f'<div class="optsar-basemap-note" style="font:12px sans-serif;color:#555;'
                             f'background:rgba(255,255,255,0.8);padding:2px 6px">{BASEMAP_OFFLINE}</div>')
        host.add(ipyleaflet.WidgetControl(widget=label, position="topright"))
    return host


@functools.lru_cache(maxsize=8)
def tiles_reachable(url: str, timeout_s: float = 2.0) -> bool:
    """Whether this machine can fetch a tile of the basemap ``url`` (an XYZ template), asked once
    per process: any HTTP answer counts (a tile server may refuse an anonymous client), no answer
    within ``timeout_s`` (no network, no name resolution) does not. The notebook's browser
    normally runs where its kernel does, so the kernel's network is the browser's."""
    import threading
    import urllib.error
    import urllib.request

    tile = url.replace("{s}", "a").replace("{z}", "0").replace("{x}", "0").replace("{y}", "0").replace("{r}", "")
    answer = []

    def ask():
        try:
            urllib.request.urlopen(urllib.request.Request(tile, method="HEAD"), timeout=timeout_s).close()
            answer.append(True)
        except urllib.error.HTTPError:
            answer.append(True)
        except Exception:  # no route, no name, a refused socket: no tiles either way
            answer.append(False)

    # name resolution is not bounded by the socket timeout: wait for the answer at most that long
    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(answer and answer[0])


class OptsarApp:
    """The map app. Display it in a notebook (``display(app)`` or as a cell's last value).

    Parameters
    ----------
    backend : {"auto", "ee", "local"}
        The engine, when neither ``engine`` nor ``gaps`` gives it (:func:`optsar_nb.resolve_backend`).
    mission, start, end
        The initial values of the Mission, Start and End controls (as in :func:`optsar_nb.run.run_gaps`).
    inputs : str, Path or None
        Local engine: the folder of exported inputs; None: the demo scene.
    aoi : optional
        The initial AOI (any source :func:`optsar_nb.aoi.load_aoi` takes); else that of ``gaps`` or
        ``infill``; the user can draw or upload another.
    out_dir : str or Path
        Where Export (``out_dir/gaps``) and Infill (``out_dir/infill``) write. Pressing them again
        replaces the app's own earlier outputs there; any other file only when "overwrite outputs"
        is ticked.
    gaps, infill : GapResult, InfillResult, optional
        Results of :func:`optsar_nb.run.run_gaps` / :func:`optsar_nb.run.run_infill` to show at once
        (as the notebooks do after their runs).
    engine : Engine, optional
        An engine already chosen.
    export_options : dict, optional
        Earth Engine export settings for Infill and Export (``export_options`` of
        :func:`optsar_nb.run.run_gaps`, e.g. ``{"wait": False}`` to start the tasks without waiting).
    """

    def __init__(self, *, backend: str = "auto", mission: str = "S2", start=run.DEMO_PERIOD[0],
                 end=run.DEMO_PERIOD[1], inputs=None, aoi=None, out_dir: str | Path = "out/app",
                 gaps: GapResult | None = None, infill=None, engine: Engine | None = None,
                 export_options: dict | None = None):
        widgets = require("ipywidgets")
        self.engine = engine or (gaps.engine if gaps is not None else run.resolve_backend(backend))
        self.inputs = inputs
        self.out_dir = Path(out_dir)
        self.export_options = export_options
        self.gap_result = gaps
        self.infill_result = infill
        self.map = make_map(self.engine)

        self.aoi_control = AOIControl(self.map, on_change=self._aoi_changed)
        self.mask_layer = ClearMaskLayer(self.map)
        self.stat_layer = StatisticLayer(self.map)
        self.ndvi = NDVICompare(self.map)
        self.layers = LayerSwitch(self.map, {"clear-day mask": self.mask_layer, "gap statistic": self.stat_layer,
                                             "NDVI": self.ndvi})
        self.inspector = PixelInspector(self.map, self.pixel_stacks)
        self.progress = ProgressPanel()

        self.mission = widgets.Dropdown(options=list(MISSIONS), value=mission, description="Mission",
                                        layout=widgets.Layout(width="160px"))
        self.start = widgets.DatePicker(value=_date(start), description="Start")
        self.end = widgets.DatePicker(value=_date(end), description="End")
        self.overwrite = widgets.Checkbox(value=False, description="overwrite outputs", indent=False,
                                          tooltip="replace files in the output folder that this app did not write")
        self.buttons = {
            "preview": self._button("Preview masks", "eye", self.preview_masks),
            "gaps": self._button("Gap statistics", "bar-chart", self.compute_gaps),
            "infill": self._button("Infill", "magic", self.compute_infill),
            "export": self._button("Export", "download", self.export),
        }
        self.message = widgets.HTML(message_html(str(self.engine)))
        # each row of layer controls appears with its data (show_gaps, show_infill)
        self.mask_controls = widgets.HBox([self.mask_layer.slider], layout=widgets.Layout(display="none"))
        self.stat_controls = widgets.HBox([self.stat_layer.dropdown], layout=widgets.Layout(display="none"))
        self.ndvi_controls = widgets.HBox([self.ndvi.toggle, self.ndvi.slider], layout=widgets.Layout(display="none"))
        self.widget = widgets.VBox([
            widgets.HTML(MAP_CSS),
            widgets.HBox([self.mission, self.start, self.end]),
            widgets.HBox([*self.buttons.values(), self.aoi_control.upload, self.overwrite]),
            self.aoi_control.message, self.message, self.progress.widget, self.map,
            self.layers.status, self.layers.widget, self.mask_controls, self.stat_controls, self.ndvi_controls,
            self.inspector.message, self.inspector.output,
        ])
        result_aoi = next((r.aoi for r in (gaps, infill) if r is not None and r.aoi is not None), None)
        if aoi is not None:
            self.aoi_control.set_aoi(aoi, origin="parameters")
        elif result_aoi is not None:
            self.aoi_control.set_aoi(result_aoi, origin="the notebook's run")
        if gaps is not None:
            self.show_gaps(gaps)
        if infill is not None:
            self.show_infill(infill)
        if self.aoi is None and gaps is None and infill is None and self.engine.name == "local":
            self._zoom_to_results(next(iter(run.input_stacks(self.params(), self.inputs).values()), None))

    # display ---------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _button(self, text: str, icon: str, action):
        widgets = require("ipywidgets")
        button = widgets.Button(description=text, icon=icon, layout=widgets.Layout(width="auto"))
        button.on_click(lambda _: self._guarded(text, action))
        return button

    def _guarded(self, text: str, action) -> None:
        """Run a button's action; bad input or a failed step becomes a message, not a traceback.
        Messages of earlier actions are cleared first, so that an old error never stands beside a
        new result."""
        self.show_message(f"{text}: running...")
        for panel in (self.aoi_control.message, self.inspector.message):
            clear_error(panel)
        try:
            with self.progress.step(text):
                action()
        except OptsarError as exc:
            self.show_message(f"{text}: {_in_app_terms(exc)}", kind="error")
        except Exception as exc:  # an unexpected failure: say what and where, keep the app alive
            self.show_message(f"{text} failed ({type(exc).__name__}): {exc}", kind="error")

    def show_message(self, text: str, *, kind: str = "info") -> None:
        self.message.value = message_html(text, kind=kind)

    # state -----------------------------------------------------------------------------------
    @property
    def aoi(self):
        return self.aoi_control.aoi

    def params(self) -> GapParams:
        """The parameters set in the controls (validated: end after start, known mission)."""
        return run.gap_params(self.mission.value, self.start.value, self.end.value)

    def _aoi_changed(self, aoi) -> None:
        self.show_message(f"AOI '{aoi.name}' ({aoi.area_km2:,.2f} km2): press Preview masks or Gap statistics")

    def _run_kwargs(self) -> dict:
        p = self.params()
        return dict(aoi=self.aoi, mission=p.mission, start=p.start, end=p.end, inputs=self.inputs, engine=self.engine)

    # actions ---------------------------------------------------------------------------------
    def preview_masks(self) -> None:
        """Clear-day masks of the AOI, one date at a time (time slider)."""
        result = run.run_gaps(out_dir=None, **self._run_kwargs())
        self.gap_result = result
        self._show_masks(result)
        self.show_message(f"{len(self.mask_layer.dates)} days with images: move the Date slider", kind="ok")

    def compute_gaps(self) -> None:
        """Gap statistics of the AOI as map layers (nothing written until Export)."""
        result = run.run_gaps(out_dir=None, **self._run_kwargs())
        self.show_gaps(result)
        self.show_message("gap statistics ready: pick one in the Statistic list", kind="ok")

    def _overwrite(self) -> bool | str:
        """The checkbox ticked: replace any file; else only the app's own earlier outputs."""
        return True if self.overwrite.value else "own"

    def compute_infill(self) -> None:
        """Infill cloudy NDVI from Sentinel-1 (writes the infill outputs into the output folder)."""
        result = run.run_infill(out_dir=self.out_dir / "infill", overwrite=self._overwrite(),
                                progress=self.progress.ee_task_update, export_options=self.export_options,
                                **self._run_kwargs())
        self.show_infill(result)
        self.show_message(f"gap-free NDVI ready; files in {self.out_dir / 'infill'}", kind="ok")

    def export(self) -> None:
        """Write (local) or start exporting (Earth Engine) the gap statistics of the AOI."""
        result = run.run_gaps(out_dir=self.out_dir / "gaps", overwrite=self._overwrite(),
                              progress=self.progress.ee_task_update, export_options=self.export_options,
                              **self._run_kwargs())
        self.gap_result = result
        if result.engine.name == "ee":
            states = ", ".join(f"{name}: {state}" for report in result.tasks for name, state in report.items())
            self.show_message(f"Earth Engine exports: {states}", kind="ok")
            return
        folder = Path(next(iter(result.paths.values()))).parent
        listing = ", ".join(html.escape(Path(p).name) for p in result.paths.values())
        self.show_message(f"written to {folder}: {listing}", kind="ok")

    # showing results ---------------------------------------------------------------------------
    def _show_masks(self, result: GapResult) -> None:
        if result.daily_state is not None:
            self.mask_layer.set_source(result.daily_state)
        elif result.ee_image is not None:
            self.mask_layer.set_source(result.ee_collection, dates=result.dates)
        self.mask_controls.layout.display = "flex"
        self._zoom_to_results(result.statistics)

    def show_gaps(self, result: GapResult) -> None:
        """Show a gap run: the clear-day masks and the statistic layers with their colorbars."""
        self.gap_result = result
        self._show_masks(result)
        if result.statistics is not None:
            self.stat_layer.set_source(result.statistics)
        else:  # Earth Engine: colour ranges from the AOI's values, as local layers have
            self.stat_layer.set_source(result.ee_image, ee_styles=ee_statistic_styles(
                result.ee_image, result.aoi.to_ee(), result.params))
        self.stat_controls.layout.display = "flex"

    def show_infill(self, result) -> None:
        """Show an infill run: observed / gap-free / predicted NDVI and the pixel inspector's series."""
        self.infill_result = result
        self.ndvi.set_source({"observed": result.observed, "gap-free": result.gapfree, "predicted": result.predicted},
                             dates=getattr(result, "dates", None))
        self.ndvi_controls.layout.display = "flex"
        self._zoom_to_results(result.gapfree)

    def pixel_stacks(self) -> dict:
        """What the pixel inspector plots: the infill run's stacks, else the local input stacks; on
        Earth Engine, the request of a clicked pixel's series (:mod:`optsar_nb.ee.pixel`)."""
        if self.infill_result is not None:
            r = self.infill_result
            if r.engine.name == "ee":
                from ..ee.pixel import infill_series

                return infill_series(r)
            stacks = {"observed": r.observed, "predicted": r.predicted, "gap-free": r.gapfree, "VV": r.vv, "VH": r.vh}
            return {k: v for k, v in stacks.items() if v is not None}
        if self.engine.name == "local":
            return run.input_stacks(self.params(), self.inputs)
        from ..ee.pixel import input_series

        return input_series(self.aoi, self.params())

    def _zoom_to_results(self, stack) -> None:
        """Centre the map on a local result when no AOI is drawn (the AOI control zooms otherwise)."""
        if stack is None or self.aoi is not None or _is_ee_object(stack):
            return
        bounds = lonlat_bounds(stack.attrs.get("crs"), stack.attrs["transform"], stack.sizes["y"], stack.sizes["x"])
        self.map.center, self.map.zoom = nice_bounds_center(bounds)

    def save_pictures(self, folder: str | Path) -> list[Path]:
        """A PNG of each data layer as it is set now (the mask's date, the statistic, the NDVI kind
        and date), ``Map_<layer>.png`` in ``folder`` (replaced at each call: the folder is the
        app's): a static view for saved notebooks, whose live map needs the widget scripts.
        Earth Engine layers are tiles on Google's servers and are not drawn here."""
        from ..plots import map_picture

        paths = []
        for group in self.layers.groups.values():
            picture = group.picture()
            if picture is not None:
                name = "Map_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in picture["title"]) + ".png"
                paths.append(map_picture(path=Path(folder) / name, overwrite=True, **picture))
        return paths

    def cleanup(self) -> None:
        """Take every widget's layers, controls and callbacks off the map."""
        for part in (self.aoi_control, self.mask_layer, self.stat_layer, self.ndvi, self.layers, self.inspector):
            part.cleanup()


def _in_app_terms(exc: OptsarError) -> str:
    """The error's message, with the app's own fix where the library's names a keyword."""
    if isinstance(exc, OutputExists) and getattr(exc, "path", None) is not None:
        return (f"{exc.path} exists and is not an unchanged output of this app: tick 'overwrite outputs' to "
                "replace it, or remove it")
    return str(exc)


def _date(value) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def _is_ee_object(obj) -> bool:
    return type(obj).__module__.startswith("ee.")
