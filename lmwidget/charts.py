"""Chart: one bqplot figure of downsampled series on a shared x axis, with event rules."""

from __future__ import annotations

import weakref

import bqplot as bq
import numpy as np
from ipywidgets import Layout

from .downsample import MinMaxSeries

MAX_POINTS = 1000   # per series, whatever the run length
MAX_RULES = 200     # the most recent events drawn as vertical rules
EVENT_COLORS = {"pause": "#f9a825", "resume": "#2e7d32", "stop": "#616161", "lr": "#6a1b9a",
                "grad_clip": "#00838f", "sample": "#9e9e9e", "anomaly": "#c62828",
                "eval": "#cfd8dc", "checkpoint": "#1565c0", "restore": "#00695c",
                "branch": "#ad1457"}
PRIORITY = ("anomaly", "stop", "pause", "resume", "restore", "branch", "lr", "grad_clip", "checkpoint")  # rule colour
STEP, TIME = 0, 1  # where an event tuple (step, time, kind, value, detail) keeps each x


class Chart:
    """A figure whose marks are only ever written by the dashboard's updater thread."""

    def __init__(self, title: str, x_scale, series: dict, css_class: str, log: bool = False,
                 tick_format: str | None = None, x_label: str = "step", x_format: str = "d",
                 event_x: int = STEP, y_label: str = ""):
        y_scale = bq.LogScale() if log else bq.LinearScale()
        self.series = {name: MinMaxSeries(MAX_POINTS) for name in series}
        self.marks = {}
        for name, (color, marker) in series.items():
            self.marks[name] = bq.Lines(
                x=np.zeros(0, np.float32), y=np.zeros(0, np.float32), labels=[name],
                colors=[color], marker=marker, marker_size=16,
                scales={"x": x_scale, "y": y_scale}, display_legend=len(series) > 1)
        # vertical rules at events, on a private 0..1 y scale so they span the whole height
        self.rules = bq.Lines(x=np.zeros(0), y=np.zeros(0), labels=[], colors=[], stroke_width=1,
                              line_style="dashed", scales={"x": x_scale, "y": bq.LinearScale(min=0, max=1)},
                              tooltip=bq.Tooltip(fields=["name"]))
        self.extra = {}  # marks on the value scale that are not series (a threshold line)
        self.y_scale = y_scale
        self.log = log
        self.event_x = event_x
        self.figure = bq.Figure(
            title=title, marks=[*self.marks.values(), self.rules],
            # bqplot cannot draw a log axis created empty with num_ticks, nor guess a tick
            # format for a one-step domain: so integer steps, and default ticks on log axes
            axes=[bq.Axis(scale=x_scale, label=x_label, side="bottom", tick_format=x_format, num_ticks=5),
                  bq.Axis(scale=y_scale, side="left", tick_format=tick_format, label=y_label,
                          num_ticks=None if log else 5)],
            legend_location="top-right", fig_margin=dict(top=40, bottom=40, left=64, right=16),
            animation_duration=0, layout=Layout(width="auto", height="260px", min_width="300px"))
        self.figure.add_class(css_class)

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
        return sent

    def add_hline(self, name: str, color: str) -> None:
        mark = bq.Lines(x=np.zeros(0), y=np.zeros(0), colors=[color], line_style="dash_dotted",
                        labels=[name], scales={"x": self.rules.scales["x"], "y": self.y_scale},
                        tooltip=bq.Tooltip(fields=["name"]))
        self.extra[name] = mark
        self.figure.marks = [*self.figure.marks, mark]

    def draw_hline(self, name: str, x0: float, x1: float, value: float) -> None:
        mark = self.extra[name]
        with mark.hold_sync():
            if value > 0 and x1 > x0:
                mark.x, mark.y = np.array([x0, x1], np.float32), np.array([value, value], np.float32)
            else:
                mark.x, mark.y = np.zeros(0, np.float32), np.zeros(0, np.float32)

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
            self.rules.colors = [EVENT_COLORS.get(_leading(g), "#9e9e9e") for g in groups] or ["#9e9e9e"]
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
    from IPython import get_ipython

    shell = get_ipython()
    if not hasattr(shell, "kernel"):
        return
    count = getattr(shell, "execution_count", None)
    if _shown_in.get(widget) == count:
        return
    _shown_in[widget] = count
    from IPython.display import display

    from .frontends import prepare

    prepare()
    display(view_bundle(widget, repr(widget)), raw=True)  # not display(widget): no _ipython_display_ loop
