"""Map widgets, each its own small class taking the host map and offering ``cleanup()``.

- :class:`ClearMaskLayer`: the clear-day mask of one date, chosen with a time slider.
- :class:`StatisticLayer`: one gap statistic at a time, with a colorbar in its unit.
- :class:`NDVICompare`: observed vs gap-free (and predicted) NDVI of one date, as a toggle on
  local overlays or a split map on Earth Engine tile layers.

Sources are local DataArrays (rendered to image overlays by :mod:`optsar_nb.ui.layers`) or,
on the Earth Engine engine, ``ee.Image`` objects shown as tile layers through geemap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..missions import CLEAR, CLOUDY
from ..products import GAP_STATISTIC_NAMES
from ._deps import require
from .layers import MASK_COLORS, LayerStyle, colorbar_html, image_overlay, legend_html, ndvi_style, statistic_style


def ee_tile_layer(image, style: LayerStyle | dict, name: str):
    """An ipyleaflet tile layer of an ``ee.Image`` (needs geemap and Earth Engine credentials).

    ``style``: a LayerStyle, or Earth Engine visualization parameters as they are.
    """
    tiles = require("geemap.ee_tile_layers")
    return tiles.EELeafletTileLayer(image, style if isinstance(style, dict) else style.vis_params(), name)


def ee_statistic_styles(image, region, params) -> dict[str, LayerStyle]:
    """The style of each gap statistic band of an ``ee.Image``, with the band's range over
    ``region`` as local layers have (:func:`statistic_style` of its values): one request, on
    the optical grid (the statistics are a composite, whose own projection is Earth Engine's
    1-degree default)."""
    import ee

    from ..ee.collections import optical_grid

    reducer = ee.Reducer.min().combine(ee.Reducer.max(), "", True)
    ranges = image.select(list(GAP_STATISTIC_NAMES)).reduceRegion(reducer, region, crs=optical_grid(region, params),
                                                                   bestEffort=True).getInfo()
    return {name: statistic_style(name, np.array([ranges.get(f"{name}_min"), ranges.get(f"{name}_max")],
                                                 dtype="float64"))
            for name in GAP_STATISTIC_NAMES}


def _is_ee(obj) -> bool:
    return type(obj).__module__.startswith("ee.")


OPACITY = 0.85  # of data layers, until the user moves the Opacity slider


class MapWidget:
    """Base: a group of data layers of which one (``layer``) is current, and its ``legend``.

    The current layer is on the host map only while the group is the one shown: a
    :class:`LayerSwitch` shows one group at a time (the one last given a layer, or picked by the
    user) and puts that group's legend on the map. ``cleanup()`` takes everything off.
    """

    def __init__(self, host):
        widgets = require("ipywidgets")
        self.host = host
        self.layer = None
        self.legend = widgets.HTML("")
        self.shown = True  # without a LayerSwitch every group shows its layer
        self.opacity = OPACITY
        self.on_new_layer = None  # set by a LayerSwitch: called with this group when its layer changes
        self.controls: list = []

    def _on_map(self, layer) -> bool:
        return layer in self.host.layers or layer in self.host.controls

    def _set_layer(self, layer) -> None:
        if self.layer is not None and self._on_map(self.layer):
            self.host.remove(self.layer)
        self.layer = layer
        if layer is None:
            return
        _set_opacity(layer, self.opacity)
        if self.on_new_layer is not None:
            self.on_new_layer(self)  # the switch shows this group (and adds the layer)
        elif self.shown:
            self.host.add(layer)

    def set_shown(self, shown: bool) -> None:
        """Put the current layer on the map, or take it off."""
        self.shown = shown
        if self.layer is None:
            return
        if shown and not self._on_map(self.layer):
            self.host.add(self.layer)
        elif not shown and self._on_map(self.layer):
            self.host.remove(self.layer)

    def set_opacity(self, opacity: float) -> None:
        self.opacity = opacity
        if self.layer is not None:
            _set_opacity(self.layer, opacity)

    def _add_control(self, widget, position: str = "bottomright"):
        ipyleaflet = require("ipyleaflet")
        control = ipyleaflet.WidgetControl(widget=widget, position=position)
        self.host.add(control)
        self.controls.append(control)
        return control

    def picture(self) -> dict | None:
        """What :func:`optsar_nb.plots.map_picture` needs to draw the current layer (local data);
        None without one."""
        return None

    def cleanup(self) -> None:
        """Remove this widget's layer and controls from the host map."""
        self._set_layer(None)
        for control in self.controls:
            if control in self.host.controls:
                self.host.remove(control)
        self.controls = []


def _set_opacity(layer, opacity: float) -> None:
    """Opacity of a layer, or of both sides of a split-map control."""
    for part in (layer, getattr(layer, "left_layer", None), getattr(layer, "right_layer", None)):
        if part is not None and hasattr(part, "opacity"):
            part.opacity = opacity


class LayerSwitch(MapWidget):
    """One data layer on the map at a time, its legend only, and their opacity.

    ``groups``: label -> :class:`MapWidget`. A group that gets a new layer (a result shown, a date
    or statistic picked) is shown and the others are taken off the map; the **Show** buttons
    bring back another group's layer as it was. ``status`` says what is on the map.
    """

    def __init__(self, host, groups: dict[str, MapWidget]):
        super().__init__(host)
        widgets = require("ipywidgets")
        self.groups = groups
        self.current: str | None = None
        self.choice = widgets.ToggleButtons(options=[], description="Show", style={"button_width": "auto"})
        self.opacity_slider = widgets.FloatSlider(value=OPACITY, min=0.0, max=1.0, step=0.05, description="Opacity",
                                                  readout_format=".0%", continuous_update=False,
                                                  layout=widgets.Layout(width="260px"))
        self.status = widgets.HTML(self._status_html())
        self.widget = widgets.HBox([self.choice, self.opacity_slider], layout=widgets.Layout(display="none"))
        self.legend_box = widgets.VBox([])
        self._add_control(self.legend_box, "bottomright")
        for group in groups.values():
            group.shown = False
            group.on_new_layer = self._handle_new_layer
        self.choice.observe(self._handle_choice, names="value")
        self.opacity_slider.observe(self._handle_opacity, names="value")

    def _handle_new_layer(self, group: MapWidget) -> None:
        self.show(next(label for label, g in self.groups.items() if g is group))

    def _handle_choice(self, change) -> None:
        if change["new"] is not None and change["new"] != self.current:
            self.show(change["new"])

    def _handle_opacity(self, change) -> None:
        for group in self.groups.values():
            group.set_opacity(float(change["new"]))

    def show(self, label: str) -> None:
        """Show group ``label``'s current layer and legend; take the other groups' layers off."""
        self.current = label
        for name, group in self.groups.items():
            group.set_shown(name == label)
        available = [name for name, group in self.groups.items() if group.layer is not None]
        self.choice.unobserve(self._handle_choice, names="value")
        self.choice.options = available
        self.choice.value = label if label in available else None
        self.choice.observe(self._handle_choice, names="value")
        self.widget.layout.display = "flex" if available else "none"
        self.choice.layout.display = "flex" if len(available) > 1 else "none"  # nothing to choose from one
        self.legend_box.children = [self.groups[label].legend]
        self.status.value = self._status_html()

    def _status_html(self) -> str:
        import html

        layer = self.groups[self.current].layer if self.current else None
        what = html.escape(getattr(layer, "name", "") or self.current) if layer is not None else "no data layer yet"
        return f'<div style="font:12px sans-serif;color:#333">On the map: <b>{what}</b></div>'


def _grid(array) -> dict:
    return {"crs": array.attrs.get("crs"), "transform": array.attrs.get("transform")}


class ClearMaskLayer(MapWidget):
    """The clear-day mask (clear / cloudy; missing and outside the AOI transparent) of one date."""

    def __init__(self, host):
        super().__init__(host)
        widgets = require("ipywidgets")
        self.slider = widgets.SelectionSlider(options=[("-", 0)], description="Date", continuous_update=False,
                                              layout=widgets.Layout(width="420px"), disabled=True)
        self.slider.observe(self._handle_slider, names="value")
        self.legend.value = legend_html("Clear-day mask", {"clear": MASK_COLORS["clear"],
                                                           "cloudy": MASK_COLORS["cloudy"]})
        self.state = None
        self.dates: list[str] = []

    def set_source(self, daily_state, dates: list[str] | None = None) -> None:
        """``daily_state``: (time, y, x) composited states (or an ee.ImageCollection with ``dates``)."""
        self.state = daily_state
        if dates is None:
            dates = list(pd.DatetimeIndex(daily_state.time.values).strftime("%Y-%m-%d"))
        same_dates = list(dates) == self.dates
        index = int(self.slider.value) if same_dates else 0  # a re-run on the same dates keeps the date shown
        self.dates = list(dates)
        self.slider.unobserve(self._handle_slider, names="value")
        self.slider.options = [(d, i) for i, d in enumerate(self.dates)] or [("-", 0)]
        self.slider.disabled = not self.dates
        self.slider.value = index
        self.slider.observe(self._handle_slider, names="value")
        if self.dates:
            self.show(index)

    def _handle_slider(self, change) -> None:
        self.show(int(change["new"]))

    def clear_fraction(self, index: int) -> float:
        """Clear pixels / valid pixels of one date (NaN when nothing is valid)."""
        values = np.asarray(self.state.isel(time=index).values)
        valid = np.isin(values, (CLEAR, CLOUDY)).sum()
        return float((values == CLEAR).sum() / valid) if valid else float("nan")

    def picture(self) -> dict | None:
        if self.state is None or _is_ee(self.state) or not self.dates:
            return None
        index = int(self.slider.value)
        values = np.asarray(self.state.isel(time=index).values, dtype="float32")
        return {"values": np.where(np.isin(values, (CLEAR, CLOUDY)), values, np.nan),
                "title": f"clear-day mask {self.dates[index]}",
                "palette": [MASK_COLORS["cloudy"], MASK_COLORS["clear"]], "vmin": CLOUDY - 0.5, "vmax": CLEAR + 0.5,
                "label": "", "ticks": {CLOUDY: "cloudy", CLEAR: "clear"}}

    def show(self, index: int) -> None:
        """Show the mask of date number ``index``."""
        name = f"clear-day mask {self.dates[index]}"
        if _is_ee(self.state):
            import ee

            image = ee.Image(self.state.toList(1, index).get(0))
            # the legend's colours: CLOUDY (0) and CLEAR (1); missing pixels are masked
            vis = {"min": CLOUDY, "max": CLEAR,
                   "palette": [MASK_COLORS["cloudy"].lstrip("#"), MASK_COLORS["clear"].lstrip("#")]}
            self._set_layer(ee_tile_layer(image, vis, name))
            return
        values = np.asarray(self.state.isel(time=index).values, dtype="float32")
        colors = {CLEAR: MASK_COLORS["clear"], CLOUDY: MASK_COLORS["cloudy"]}
        self._set_layer(image_overlay(values, name=name, colors=colors, **_grid(self.state)))
        self.legend.value = legend_html(
            f"{self.dates[index]}: {100 * self.clear_fraction(index):.0f} % clear",
            {"clear": MASK_COLORS["clear"], "cloudy": MASK_COLORS["cloudy"]},
        )


class StatisticLayer(MapWidget):
    """One gap statistic as a map layer, picked from a dropdown, with a colorbar in its unit."""

    def __init__(self, host, *, initial: str = "gap_mean"):
        super().__init__(host)
        widgets = require("ipywidgets")
        self.dropdown = widgets.Dropdown(options=list(GAP_STATISTIC_NAMES), value=initial, description="Statistic",
                                         disabled=True)
        self.dropdown.observe(self._handle_dropdown, names="value")
        self.statistics = None
        self.style: LayerStyle | None = None
        self.ee_styles: dict[str, LayerStyle] = {}

    def set_source(self, statistics, *, ee_styles: dict[str, LayerStyle] | None = None) -> None:
        """(stat, y, x) local statistics, or an ee.Image with one band per statistic and its styles."""
        self.statistics = statistics if _is_ee(statistics) else statistics.compute()
        self.ee_styles = ee_styles or {}
        self.dropdown.disabled = False
        self.show(self.dropdown.value)

    def _handle_dropdown(self, change) -> None:
        if self.statistics is not None:
            self.show(change["new"])

    def values(self, name: str) -> np.ndarray:
        """The statistic's (y, x) values, NaN where the pixel had no valid day (outside the AOI)."""
        values = np.asarray(self.statistics.sel(stat=name).values, dtype="float32")
        valid = np.asarray(self.statistics.sel(stat="valid_count").values)
        return np.where(valid > 0, values, np.nan)

    def picture(self) -> dict | None:
        if self.statistics is None or _is_ee(self.statistics):
            return None
        name, style = self.dropdown.value, self.style
        return {"values": self.values(name), "title": name, "palette": style.palette, "vmin": style.vmin,
                "vmax": style.vmax, "label": style.unit}

    def show(self, name: str) -> None:
        label = f"{name}"
        if _is_ee(self.statistics):
            self.style = self.ee_styles.get(name) or statistic_style(name)
            self._set_layer(ee_tile_layer(self.statistics.select(name), self.style, label))
        else:
            values = self.values(name)
            self.style = statistic_style(name, values)
            self._set_layer(image_overlay(values, name=f"{name} ({self.style.unit})", style=self.style,
                                          **_grid(self.statistics)))
        self.legend.value = colorbar_html(self.style)


class NDVICompare(MapWidget):
    """Observed vs gap-free NDVI of one date: a toggle (local overlays) or a split map (Earth Engine)."""

    KINDS = ("observed", "gap-free", "predicted")

    def __init__(self, host):
        super().__init__(host)
        widgets = require("ipywidgets")
        self.toggle = widgets.ToggleButtons(options=list(self.KINDS), value="gap-free", description="NDVI",
                                            disabled=True, style={"button_width": "auto"})
        self.slider = widgets.SelectionSlider(options=[("-", 0)], description="NDVI date", continuous_update=False,
                                              layout=widgets.Layout(width="420px"), disabled=True)
        self.toggle.observe(self._refresh, names="value")
        self.slider.observe(self._refresh, names="value")
        self.stacks: dict = {}
        self.dates: list[str] = []

    def set_source(self, stacks: dict, dates: list[str] | None = None) -> None:
        """``stacks``: kind -> (time, y, x) NDVI (local) or an ee.Image with one band per date (with ``dates``)."""
        self.stacks = {k: v for k, v in stacks.items() if v is not None}
        first = next(iter(self.stacks.values()))
        if dates is None:
            dates = list(pd.DatetimeIndex(first.time.values).strftime("%Y-%m-%d"))
        self.dates = list(dates)
        for w in (self.toggle, self.slider):
            w.unobserve(self._refresh, names="value")
        self.toggle.options = [k for k in self.KINDS if k in self.stacks]
        self.toggle.value = "gap-free" if "gap-free" in self.stacks else self.toggle.options[0]
        self.slider.options = [(d, i) for i, d in enumerate(self.dates)]
        self.slider.value = 0
        for w in (self.toggle, self.slider):
            w.disabled = False
            w.observe(self._refresh, names="value")
        self.show(self.toggle.value, 0)

    def _refresh(self, change=None) -> None:
        self.show(self.toggle.value, int(self.slider.value))

    def picture(self) -> dict | None:
        kind, index = self.toggle.value, int(self.slider.value)
        stack = self.stacks.get(kind)
        if stack is None or _is_ee(stack):
            return None
        style = ndvi_style()
        return {"values": np.asarray(stack.isel(time=index).values, dtype="float32"),
                "title": f"NDVI {kind} {self.dates[index]}", "palette": style.palette, "vmin": style.vmin,
                "vmax": style.vmax, "label": "NDVI"}

    def show(self, kind: str, index: int) -> None:
        """Show NDVI ``kind`` ("observed", "gap-free", "predicted") of date number ``index``."""
        style = ndvi_style(f"NDVI {kind}")
        self.legend.value = colorbar_html(style)
        name = f"NDVI {kind} {self.dates[index]}"
        stack = self.stacks[kind]
        if _is_ee(stack):
            self._show_split(kind, index, style)
            return
        values = np.asarray(stack.isel(time=index).values, dtype="float32")
        self._set_layer(image_overlay(values, name=name, style=style, **_grid(stack)))

    def _show_split(self, kind: str, index: int, style: LayerStyle) -> None:
        """Observed NDVI on the left, the chosen kind (gap-free unless "predicted") on the right."""
        import ee

        ipyleaflet = require("ipyleaflet")
        kinds = ("observed", kind if kind != "observed" else "gap-free")
        layers = [ee_tile_layer(ee.Image(self.stacks[k]).select(index), style, f"NDVI {k}") for k in kinds]
        split = ipyleaflet.SplitMapControl(left_layer=layers[0], right_layer=layers[1])
        split.name = f"NDVI {kinds[0]} (left) | {kinds[1]} (right) {self.dates[index]}"  # for the switch's status
        self._set_layer(split)

    @property
    def split(self):
        """The split-map control (Earth Engine), or None."""
        ipyleaflet = require("ipyleaflet")
        return self.layer if isinstance(self.layer, ipyleaflet.SplitMapControl) else None
