"""Chart: one bqplot figure of downsampled series on a shared x axis, with event rules."""

from __future__ import annotations

import weakref

import bqplot as bq
import IPython
import IPython.display  # looked up at each call: a test (or a front end) may replace them
import numpy as np
from ipywidgets import Layout

from .axes import finite_range, x_domain, y_domain
from .downsample import MinMaxSeries
from .frontends import prepare
from lmwidget.core.palette import AMBER, BLUE, GREEN, GREY, MUTED, PINK, PURPLE, RED, TEAL
from .smoothing import DEFAULT as DEFAULT_SMOOTHING, ema

MAX_POINTS = 1000   # per series, whatever the run length
HOVER_POINTS = 250  # per series: invisible dots whose tooltip gives the value under the cursor
MAX_RULES = 200     # the most recent events drawn as vertical rules
EVENT_COLORS = {"pause": AMBER, "resume": GREEN, "stop": GREY, "lr": PURPLE,
                "grad_clip": TEAL, "sample": MUTED, "anomaly": RED,
                "eval": MUTED, "checkpoint": BLUE, "restore": TEAL,
                "branch": PINK}
PRIORITY = ("anomaly", "stop", "pause", "resume", "restore", "branch", "lr", "grad_clip", "checkpoint")  # rule colour
RAW_OPACITY = 0.3  # a smoothed chart's raw curve, faint behind it: its spikes stay visible
STEP, TIME = 0, 1  # where an event tuple (step, time, kind, value, detail) keeps each x


class SharedX:
    """One x scale (steps, or seconds) shared by several charts: from 0 to the furthest x
    any of them has drawn, with round ticks on every chart's axis."""

    def __init__(self, integer: bool = True):
        self.scale = bq.LinearScale(min=0.0, max=1.0)
        self.integer = integer
        self.charts: list = []
        self._hi = 0.0
        self.ticks = None

    def follow(self, last: float) -> None:
        if not last > self._hi:
            return
        lo, hi, ticks = x_domain(last, self.integer)
        self._hi = float(last)
        self.scale.max = hi
        if self.ticks is None or not np.array_equal(ticks, self.ticks):
            self.ticks = ticks
            for chart in self.charts:
                chart.x_axis.tick_values = ticks


class Chart:
    """A figure whose marks are only ever written by the dashboard's updater thread.

    `x`: a SharedX (its axis starts at 0 and follows the data) or a bqplot scale. The value
    axis has round ticks over what is drawn; `zero`: the quantity cannot be negative, so it
    starts at 0. `smooth`: each line is also drawn smoothed (an exponential moving average
    of weight `smoothing`, over the points drawn), over its raw curve drawn faintly. `span`:
    how far below its top a log axis reaches at most; `limit`: the value axis' top while the
    data stay below it (100 for a percentage). `legend`: False where the view names the
    series itself (compare's legend above its charts, off the curves)."""

    def __init__(self, title: str, x, series: dict, css_class: str, log: bool = False,
                 tick_format: str | None = None, x_label: str = "step", x_format: str = "d",
                 event_x: int = STEP, y_label: str = "", zero: bool = False, smooth: bool = False,
                 hover_format: str = ".4g", span: float = 0.0, limit: float | None = None,
                 legend: bool = True):
        self.shared = x if isinstance(x, SharedX) else None
        x_scale = x.scale if self.shared else x
        y_scale = bq.LogScale() if log else bq.LinearScale()
        self.series = {name: MinMaxSeries(MAX_POINTS) for name in series}
        self.marks = {}
        for name, (color, marker) in series.items():
            self.marks[name] = bq.Lines(
                x=np.zeros(0, np.float32), y=np.zeros(0, np.float32), labels=[name],
                colors=[color], marker=marker, marker_size=16,
                scales={"x": x_scale, "y": y_scale}, display_legend=legend and len(series) > 1)
        # the value under the cursor: on every series, dots that show only when hovered
        x_name, x_format_hover = ("step", "d") if event_x == STEP else (x_label, ".1f")
        self.hover = {name: bq.Scatter(x=np.zeros(0, np.float32), y=np.zeros(0, np.float32), colors=[color],
                                       opacities=[0.0], default_size=36,
                                       hovered_style={"opacity": 1.0, "stroke": "white"},
                                       scales={"x": x_scale, "y": y_scale}, display_legend=False,
                                       tooltip=bq.Tooltip(fields=["x", "y"], labels=[x_name, name],
                                                          formats=[x_format_hover, hover_format]))
                      for name, (color, _) in series.items()}
        self.smoothing = DEFAULT_SMOOTHING if smooth else 0.0
        self.smoothed = {name: bq.Lines(x=np.zeros(0, np.float32), y=np.zeros(0, np.float32), labels=[name],
                                        colors=[color], scales={"x": x_scale, "y": y_scale},
                                        display_legend=legend and len(series) > 1)
                         for name, (color, marker) in series.items() if smooth and marker is None}
        for name in self.smoothed:  # the legend and the tooltip belong to the smoothed line
            self.marks[name].display_legend = False
            self.marks[name].opacities = [RAW_OPACITY]
        # vertical rules at events, on a private 0..1 y scale so they span the whole height
        self.rules = bq.Lines(x=np.zeros(0), y=np.zeros(0), labels=[], colors=[], stroke_width=1,
                              line_style="dashed", scales={"x": x_scale, "y": bq.LinearScale(min=0, max=1)},
                              tooltip=bq.Tooltip(fields=["name"]))
        self.extra = {}  # marks on the value scale that are not series (a threshold line)
        self.y_scale = y_scale
        self.log = log
        self.zero = zero
        self.span, self.limit = span, limit
        self.event_x = event_x
        self._ranges: dict = {}  # series or line -> (smallest, largest) finite value drawn
        self._domain = None
        # round tick values are set as data arrive (no num_ticks: bqplot spaces those evenly
        # over the domain, at values like 3.33 and -3, 98, 199)
        self.x_axis = bq.Axis(scale=x_scale, label=x_label, side="bottom", tick_format=x_format)
        self.y_axis = bq.Axis(scale=y_scale, side="left", tick_format=tick_format, label=y_label)
        if self.shared:
            self.shared.charts.append(self)
            if self.shared.ticks is not None:
                self.x_axis.tick_values = self.shared.ticks
        self.figure = bq.Figure(
            title=title, marks=[*self.marks.values(), *self.smoothed.values(), self.rules, *self.hover.values()],
            axes=[self.x_axis, self.y_axis],
            legend_location="top-right", fig_margin=dict(top=40, bottom=40, left=64, right=16),
            animation_duration=0, display_toolbar=False,  # its toolbar would cover the title on hover
            layout=Layout(width="auto", height="260px", min_width="300px"))
        self.figure.add_class(css_class)

    @property
    def has_data(self) -> bool:
        """Whether any series has drawn a finite value (a threshold line does not count)."""
        return any(self._ranges.get(name) is not None for name in self.series)

    def extend(self, name: str, x, y) -> bool:
        """Feed new points to a series; True when there was anything to feed."""
        if len(x) == 0:
            return False
        self.series[name].extend(x, y)
        return True

    def draw(self, names) -> int:
        """Send the named series, each mark's x and y in one message; returns the array bytes."""
        sent = 0
        for name in names:
            x, y = self.series[name].points()
            if self.log:
                y[y <= 0] = np.nan  # no place on a log axis: a gap
            if self.marks[name].marker is not None:  # a marker cannot stand at NaN: leave it out
                keep = np.isfinite(y)
                x, y = x[keep], y[keep]
            if not np.isfinite(y).any():
                # bqplot derives the y domain from the first data it gets: all-NaN data
                # would leave this line blank for good, so it gets nothing until a number
                x, y = x[:0], y[:0]
            mark = self.marks[name]
            with mark.hold_sync():
                mark.x, mark.y = x, y
            sent += x.nbytes + y.nbytes
            if name in self.smoothed:  # once per redraw, over at most the points drawn
                smooth = self.smoothed[name]
                sy = ema(y, self.smoothing).astype(np.float32) if self.smoothing > 0 else y[:0]
                with smooth.hold_sync():
                    smooth.x, smooth.y = (x, sy) if self.smoothing > 0 else (x[:0], sy)
                sent += smooth.x.nbytes + sy.nbytes
            keep = np.isfinite(y)  # a dot cannot stand at NaN
            every = max(1, int(np.ceil(keep.sum() / HOVER_POINTS)))
            hover = self.hover[name]
            with hover.hold_sync():
                hover.x, hover.y = x[keep][::every], y[keep][::every]
            sent += hover.x.nbytes + hover.y.nbytes
            self._ranges[name] = finite_range(y)
            if self.shared and len(x):
                self.shared.follow(float(np.nanmax(x)))
        self.rescale()
        return sent

    def set_smoothing(self, weight: float) -> int:
        """Smooth with `weight` from now on (0: raw only) and redraw; returns the bytes sent."""
        if not self.smoothed or weight == self.smoothing:
            return 0
        self.smoothing = weight
        for name in self.smoothed:
            self.marks[name].opacities = [RAW_OPACITY if weight > 0 else 1.0]
        return self.draw([name for name in self.smoothed if len(self.marks[name].x)])

    def rescale(self) -> None:
        """The value axis over everything drawn: round ticks; sent only when it changes."""
        ranges = [r for r in self._ranges.values() if r is not None]
        if self.log:
            ranges = [(lo if lo > 0 else hi, hi) for lo, hi in ranges if hi > 0]
        if not ranges:
            return
        lo, hi, ticks = y_domain(min(r[0] for r in ranges), max(r[1] for r in ranges), self.log, self.zero,
                                 self.span, self.limit)
        domain = (lo, hi, tuple(ticks.tolist()))
        if domain == self._domain:
            return
        self._domain = domain
        with self.y_scale.hold_sync():
            self.y_scale.min, self.y_scale.max = float(lo), float(hi)
        self.y_axis.tick_values = ticks

    def add_hline(self, name: str, color: str) -> None:
        mark = bq.Lines(x=np.zeros(0), y=np.zeros(0), colors=[color], line_style="dash_dotted",
                        labels=[name], scales={"x": self.rules.scales["x"], "y": self.y_scale},
                        tooltip=bq.Tooltip(fields=["name"]))
        self.extra[name] = mark
        self.figure.marks = [*self.figure.marks, mark]

    def draw_hline(self, name: str, x0: float, x1: float, value: float) -> None:
        mark = self.extra[name]
        shown = value > 0 and x1 > x0
        with mark.hold_sync():
            if shown:
                mark.x, mark.y = np.array([x0, x1], np.float32), np.array([value, value], np.float32)
            else:
                mark.x, mark.y = np.zeros(0, np.float32), np.zeros(0, np.float32)
        self._ranges[name] = (value, value) if shown else None  # the line stays in view
        self.rescale()

    def draw_events(self, events) -> None:
        """A vertical rule per step with events (the newest MAX_RULES), its tooltip naming
        every event at that step; coloured by the most important of them."""
        groups: dict = {}
        for event in events:
            groups.setdefault(event[STEP], []).append(event)
        groups = list(groups.values())[-MAX_RULES:]
        xs = np.array([float(g[0][self.event_x]) for g in groups], np.float32)
        with self.rules.hold_sync():
            self.rules.x = np.stack((xs, xs), axis=1) if len(xs) else np.zeros(0)
            self.rules.y = np.tile(np.array([0, 1], np.float32), (len(xs), 1)) if len(xs) else np.zeros(0)
            self.rules.labels = [group_label(g) for g in groups]
            self.rules.colors = [EVENT_COLORS.get(_leading(g), MUTED) for g in groups] or [MUTED]
            # routine evaluations stay faint: the steering and the anomalies stand out
            self.rules.opacities = [0.35 if _leading(g) == "eval" else 1.0 for g in groups] or [1.0]


def _leading(group) -> str:
    kinds = [e[2] for e in group]
    return next((k for k in PRIORITY if k in kinds), kinds[-1])


def group_label(group) -> str:
    """`step 7: anomaly inf (grad norm is inf ...) · pause`: one step's events, in order."""
    first = event_label(group[0])
    return " · ".join([first] + [event_label(e).split(": ", 1)[1] for e in group[1:]])


def event_label(event) -> str:
    step, _, kind, value, detail = event
    label = f"step {step}: {kind}"
    if isinstance(value, (int, float)):
        label += f" {value:.3g}"
    elif value is not None:
        label += f" {value}"
    return label + (f" ({detail})" if detail else "")


def view_bundle(widget, text: str) -> dict:
    """The display data that shows `widget` in a notebook (ipywidgets' own mimebundle)."""
    return {"text/plain": text,
            "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                         "model_id": widget.model_id}}


_shown_in: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # widget -> cell it is shown in


def show_in_notebook(widget) -> None:
    """Display `widget` in the running cell when there is a kernel to draw it, once per cell:
    returned as the cell's value too (`lmwidget.compare(a, b)` on its own line), it is not
    drawn twice. Elsewhere, nothing."""
    shell = IPython.get_ipython()
    if not hasattr(shell, "kernel"):
        return
    count = getattr(shell, "execution_count", None)
    if _shown_in.get(widget) == count:
        return
    _shown_in[widget] = count

    prepare()
    IPython.display.display(view_bundle(widget, repr(widget)), raw=True)  # not display(widget): no _ipython_display_ loop
