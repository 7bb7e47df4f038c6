"""The dashboard's health panels: resources over time, per-layer gradient norms, histograms.

Built on the main thread with the dashboard; `refresh` is called by its updater thread only.
"""

from __future__ import annotations

import html

import bqplot as bq
import ipywidgets as w
import numpy as np
import torch

from .axes import X_PAD, y_domain
from .charts import TIME, Chart, SharedX
from lmwidget.core.palette import BLUE, BROWN, GREEN, ORANGE, PURPLE, RED, SLATE

FIG_LAYOUT = dict(width="auto", height="260px", min_width="300px")
CHAR_PX = 8       # px a character of a layer's name takes, at most, beside its bar
LABEL_ROOM = 300  # px at most for those names


def _figure(title, marks, axes, css):
    fig = bq.Figure(title=title, marks=marks, axes=axes, animation_duration=0, display_toolbar=False,
                    fig_margin=dict(top=40, bottom=56, left=64, right=16),
                    layout=w.Layout(**FIG_LAYOUT))
    fig.add_class(css)
    return fig


class ResourcesPanel:
    """CPU and GPU utilisation and memory against time since the run started."""

    def __init__(self, gpu: bool):
        t = SharedX(integer=False)  # seconds since the run started, from 0
        util = {"CPU % (of one core)": (SLATE, None)}
        memory = {"process RSS": (SLATE, None)}
        if gpu:  # no empty GPU lines in the legend of a CPU run
            util["GPU %"] = (GREEN, None)
            memory.update({"GPU used": (GREEN, None), "torch allocated": (PURPLE, None)})
        self.utilisation = Chart("utilisation", t, util, "lmwidget-chart-utilisation", y_label="%",
                                 tick_format=".3~g", x_label="time (s)", x_format=".3~g", event_x=TIME, zero=True,
                                 limit=100.0)  # 0-100 % while no core is busier than one
        self.memory = Chart("memory", t, memory, "lmwidget-chart-memory", tick_format=".4~s", y_label="MB",
                            x_label="time (s)", x_format=".3~g", event_x=TIME, zero=True)
        self.gpu_label = w.HTML()
        self.gpu_label.add_class("lmwidget-gpu-status")
        self.charts = [self.utilisation, self.memory]
        self._n = 0
        self._gpu_status = None

    def refresh(self, run) -> int:
        """Draw samples new since the last call; returns the bytes sent."""
        status = run.gpu_status
        if status != self._gpu_status:  # said once, not per sample
            self._gpu_status = status
            self.gpu_label.value = f"<small>{html.escape(status)}</small>"
        samples = run.record.resources_since(self._n)
        if not samples:
            return 0
        self._n += len(samples)
        t = np.array([s[0] for s in samples])
        col = {k: np.array([s[2].get(k, np.nan) for s in samples], dtype=np.float64)
               for k in ("cpu_percent", "gpu_util", "rss_mb", "gpu_mem_mb", "torch_allocated_mb")}
        sent = 0
        for chart, feeds in ((self.utilisation, {"CPU % (of one core)": "cpu_percent", "GPU %": "gpu_util"}),
                             (self.memory, {"process RSS": "rss_mb", "GPU used": "gpu_mem_mb",
                                            "torch allocated": "torch_allocated_mb"})):
            names = [name for name, key in feeds.items()
                     if name in chart.series and chart.extend(name, t, col[key])]
            sent += chart.draw(names)
        return sent


class LayersPanel:
    """A bar per layer group: the newest step's gradient norm, before clipping."""

    def __init__(self, layers: list[str]):
        self.layers = layers
        # horizontal bars: every layer group's full name reads across, one row each, however
        # many there are (a 24-layer model gets a taller chart, not truncated labels)
        names, values = bq.OrdinalScale(reverse=True), bq.LinearScale(min=0)
        self.bars = bq.Bars(x=layers, y=np.zeros(len(layers), np.float32), orientation="horizontal",
                            scales={"x": names, "y": values}, colors=[GREEN], padding=0.2,
                            tooltip=bq.Tooltip(fields=["x", "y"], formats=["", ".3g"],
                                               labels=["layer", "grad norm"]))
        self.values = bq.Axis(scale=values, side="bottom", tick_format=".2~g", label="grad norm")
        self.figure = _figure("grad norm per layer", [self.bars],
                              [bq.Axis(scale=names, side="left", tick_style={"font-size": "11px"}),
                               self.values], "lmwidget-chart-layers")
        longest = max((len(n) for n in layers), default=4)
        self.figure.fig_margin = dict(top=40, bottom=56, left=min(LABEL_ROOM, 24 + CHAR_PX * longest), right=16)
        self.figure.layout.height = f"{max(260, 96 + 18 * len(layers))}px"
        self._step = None
        self._domain = None

    def refresh(self, run) -> int:
        latest = run.record.layer_grad_norms
        if latest is None or latest[0] == self._step:
            return 0
        step, norms = latest
        self._step = step
        y = torch.as_tensor(norms).detach().float().cpu().numpy()  # a few floats, read here, not by the loop
        bad = [name for name, v in zip(self.layers, y) if not np.isfinite(v)]
        y = np.where(np.isfinite(y), y, 0).astype(np.float32)  # a bar cannot stand at NaN
        _, hi, ticks = y_domain(0.0, float(y.max()) if len(y) else 1.0, zero=True)
        with self.figure.hold_sync(), self.bars.hold_sync():
            self.bars.y = y
            if (hi, len(ticks)) != self._domain:  # round ticks, from 0
                self._domain = (hi, len(ticks))
                self.bars.scales["y"].max = float(hi) * (1 + X_PAD)  # the last tick's label off the end
                self.values.tick_values = ticks
            self.figure.title = f"grad norm per layer (step {step})" + (
                f" · not finite: {', '.join(bad)}" if bad else "")
        return y.nbytes


class HistogramPanel:
    """On a click: histograms of the chosen layer's weights and gradients."""

    def __init__(self, run):
        self.layer = w.Dropdown(options=run.layers, value=run.layers[0] if run.layers else None,
                                description="layer", layout=w.Layout(width="220px"))
        self.button = w.Button(description="Histograms", icon="bar-chart")
        self.layer.add_class("lmwidget-histogram-layer")
        self.button.add_class("lmwidget-histogram")
        self.info = w.HTML()
        self.figures, self.bars = [], []
        for what, color in (("weights", BLUE), ("gradients", ORANGE)):
            x, y = bq.LinearScale(), bq.LinearScale(min=0)
            bars = bq.Bars(x=np.zeros(0, np.float32), y=np.zeros(0, np.float32),
                           scales={"x": x, "y": y}, colors=[color], padding=0.05)
            self.bars.append(bars)
            self.figures.append(_figure(what, [bars], [bq.Axis(scale=x, side="bottom", tick_format=".2g",
                                                               num_ticks=5),
                                                       bq.Axis(scale=y, side="left", tick_format=".2s",
                                                               num_ticks=4)],
                                        f"lmwidget-chart-hist-{what}"))
        # the figures join the view with the first histogram: bqplot cannot lay out a hidden
        # (zero-sized) figure without drawing negative sizes
        self.plots = w.HBox([])
        self.widget = w.VBox([w.HBox([self.layer, self.button, self.info],
                                     layout=w.Layout(align_items="center", grid_gap="8px")),
                              self.plots])
        self._n = 0

    def pending(self, run) -> bool:
        return len(run.record.histograms_since(self._n)) > 0

    def refresh(self, run) -> int:
        histograms = run.record.histograms_since(self._n)
        if not histograms:
            return 0
        self._n += len(histograms)
        h = histograms[-1]
        sent, notes = 0, []
        for fig, bars, what, key in zip(self.figures, self.bars, ("weights", "gradients"), ("weights", "grads")):
            hist = h[key]
            if hist is None or not len(hist["counts"]):
                x = y = np.zeros(0, np.float32)
                notes.append(f"no {what}")
            else:
                edges = hist["edges"]
                x = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)
                y = np.asarray(hist["counts"], np.float32)
                if hist["nonfinite"]:
                    notes.append(f"{hist['nonfinite']} non-finite {what} left out")
            with fig.hold_sync(), bars.hold_sync():
                bars.x, bars.y = x, y
                fig.title = f"{what} of {h['group']} (step {h['step']})"
            sent += x.nbytes + y.nbytes
        self.info.value = html.escape(f"gradients of {h['source']}" + "".join(f"; {n}" for n in notes))
        if not self.plots.children:
            self.plots.children = tuple(self.figures)
        return sent


def format_anomaly(step: int, cause: str, paused: bool) -> str:
    """The notice shown for a non-finite step."""
    if paused:
        return (f'<div style="color:{RED}"><b>Anomaly at step {step}: {html.escape(cause)}.</b> '
                f"The update was skipped and the run paused itself. Lower the learning rate "
                f"(or the clip norm), then press Resume.</div>")
    return f'<div style="color:{BROWN}">last anomaly at step {step}: {html.escape(cause)} (update skipped)</div>'

