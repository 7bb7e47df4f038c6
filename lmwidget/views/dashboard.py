"""Dashboard: the widget view of any source (see source.py), redrawn by one throttled updater thread."""

from __future__ import annotations

import math
import time

import ipywidgets as w
import numpy as np

from .cells import Cells, close_widgets
from .charts import Chart, SharedX, view_bundle
from .compare import labels_for, legend_labels
from .controlbar import ControlBar
from lmwidget.core.control import ENDED
from .frontends import prepare, track_cells
from .pacing import Pacer
from lmwidget.core.palette import MUTED, RED
from .panels import HistogramPanel, LayersPanel, ResourcesPanel
from lmwidget.core.schema import CHARTS, user_chart
from .summary import summary_html
from .updater import UPDATE_INTERVAL, Updater

SUMMARY_QUIET = 1.0     # s with nothing redrawn before the static summary joins the cell
GHOST_COLOR = MUTED
BYTES_PER_SEC = 128 * 1024  # long runs redraw less often rather than stream full series at 4 Hz


def redraw_interval(sent_bytes: int) -> float:
    """Seconds until the next redraw: 4 Hz, slower once a redraw carries many bytes."""
    return max(UPDATE_INTERVAL, sent_bytes / BYTES_PER_SEC)


def _css(key: str) -> str:
    return "lmwidget-chart-" + key.replace("_", "-").replace(":", "-")


class Dashboard(ControlBar, w.VBox):
    """Widgets are built on the caller's (main) thread. Their callbacks only ask the source;
    the updater thread alone writes widget traits."""

    def __init__(self, run):
        self._run = run
        header, controls = self._build_bar(run)  # the status line and the controls
        self.updater = Updater(f"lmwidget-ui-{run.id}", self._redraw, self._idle, self.notice,
                               "dashboard error:\n", drawn=self._drawn, wait=self._wait,
                               retired=self._retire_now)
        self.pacer = Pacer(self.updater.wake)  # the page wakes it too

        # earlier runs of this kernel, drawn faintly on the loss chart (train(ghosts=N))
        self._ghosts = [g for g in run.ghosts if g is not run]
        self._ghost_labels = (legend_labels(labels_for([*self._ghosts, run])[:-1], self._ghosts)
                              if self._ghosts else [])
        self._x = SharedX()  # one step axis shared by every chart, from 0
        self._metrics = [m for m in run.record.metrics() if m.chart in CHARTS]
        self.charts = {}
        for spec in CHARTS.values():
            series = {m.label: (m.color, "circle" if m.sparse else None)
                      for m in self._metrics if m.chart == spec.key}
            if spec.key == "loss":
                series.update({label: (GHOST_COLOR, None) for label in self._ghost_labels})
            self.charts[spec.key] = Chart(spec.title, self._x, series, _css(spec.key), log=spec.log,
                                          tick_format=spec.tick_format, y_label=spec.unit, zero=spec.zero,
                                          smooth=spec.smooth, span=spec.span)
        # a chart not every source measures (bits per byte needs the data's bytes per token)
        # waits with the others for the first step, then stays only with a value: no empty
        # chart for a source without it (and it joins again at its first value)
        self._optional = {spec.key for spec in CHARTS.values() if spec.optional}
        self.charts["grad_norm"].add_hline("clip", RED)
        for label in self._ghost_labels:
            self.charts["loss"].marks[label].opacities = [0.6]
        self.resources = ResourcesPanel(gpu=run.device.type == "cuda")
        self.layers = LayersPanel(run.layers)
        self.histograms = HistogramPanel(run)
        self.timelines = [*self.charts.values(), *self.resources.charts]  # every chart with events
        self._connect_bar(run, self.histograms)

        self._rows = 0           # history rows already fed to the charts
        self.grid = w.GridBox(self._figures(), layout=w.Layout(
            grid_template_columns="repeat(auto-fill, minmax(340px, 1fr))"))
        super().__init__([self.title, header, controls, self.save_status, self.notice, self.grid,
                          self.resources.gpu_label, self.histograms.widget, self.sample_text])
        self.add_class("lmwidget-dashboard")

        self._n_logged = 0       # the user's metric values already fed to their charts
        self._undrawn = {}       # chart -> the series fed but not yet sent
        self._held = False       # the last refresh held the charts back for the page
        self._x0 = None          # the first step drawn
        self._sent = 0           # chart bytes sent by the last refresh
        self._n_events = 0
        self._shown = None       # the last (state, step, paused, lr, clip) drawn
        self.cells = Cells(f"lmwidget-{run.id}")  # the cells showing it: the summary goes there
        self._drawn_at = -math.inf  # when the last refresh changed anything (monotonic s)
        run.watch(self.updater.wake)  # a change of the run's state redraws at once
        self._urgent_until = -math.inf
        self.kick()

    def _figures(self) -> list:
        """The grid's figures in their order: the schema's charts shown, the per-layer chart,
        the resources, then the user's charts. An optional chart waits with the others for
        the first step, then stays only with a value (it joins again at its first value)."""
        left_out = {key for key in self._optional if self._rows and not self.charts[key].has_data}
        return ([c.figure for key, c in self.charts.items() if key in CHARTS and key not in left_out]
                + [self.layers.figure] + [c.figure for c in self.resources.charts]
                + [c.figure for key, c in self.charts.items() if key not in CHARTS])

    # -- display and the static summary --------------------------------------------------------
    def show(self) -> None:
        """Display in the running cell under a display id, so that when the run ends the
        cell's output can also carry a static summary (see _leave_summary)."""
        prepare()
        track_cells()  # whether a redraw's acknowledgement can reach this kernel now
        self.cells.show(self._bundle())
        self.kick()  # an ended run's updater leaves the summary in this cell too

    def _ipython_display_(self) -> None:
        self.show()

    def _bundle(self, summary: str | None = None) -> dict:
        run = self._run
        bundle = view_bundle(self, f"lmwidget dashboard of {run.name} ({run.state} at step {run.step}"
                                   f"/{run.max_steps or '?'}): live in a notebook with a kernel")
        if summary is not None:
            bundle["text/html"] = summary
        return bundle

    def _summary_key(self) -> tuple:
        run = self._run
        return (run.state, run.step, len(run.record.events_since(0)), self.smoothing.value)

    def _leave_summary(self) -> None:
        """Once the run has ended: add the final curves as HTML to every cell showing this
        dashboard. A live front end keeps drawing the widget (its richer type); a saved
        notebook viewed with no kernel (nbviewer, GitHub, a reopened file) shows the HTML.
        Redone when the run moves on (a save, a sample after the end) or the smoothing."""
        if self._run.state in ENDED:
            smoothing = self.smoothing.value
            self.cells.update(lambda: self._bundle(summary_html(self._run, smoothing)), self._summary_key())

    def retire(self) -> None:
        """The run was closed: its cells keep only the static summary of its curves, and
        every widget of this dashboard is closed (on the updater's thread, which draws)."""
        self.updater.retire()

    def _retire_now(self) -> None:
        run, smoothing = self._run, self.smoothing.value
        self.cells.update(lambda: {"text/plain": f"lmwidget: {run.name} ({run.state} at step {run.step}), closed",
                                   "text/html": summary_html(run, smoothing)}, "closed")
        run.unwatch(self.updater.wake)
        close_widgets(self, self.pacer.drawn, self.pacer.acked, self.pacer.link, self.histograms.figures)

    def kick(self) -> None:
        """Make sure the updater runs (it exits once the run has ended and all is drawn), and
        wake it now: a click shows its effect without waiting out a long redraw interval."""
        self._urgent_until = time.monotonic() + 1.0  # redraw at full rate for a second
        self.updater.kick()

    def settle(self, timeout: float = 30.0) -> None:
        """Once the run has ended (or before it starts): wait until everything it recorded
        is drawn. While it trains the charts are at most one redraw behind anyway."""
        self.kick()
        if self._idle():
            self.updater.join(timeout)

    def _idle(self) -> bool:
        """Nothing more will happen by itself: the run has ended, or has not started."""
        return self._run.state in ENDED or not self._run.started

    def _redraw(self, idle: bool) -> None:
        """One round of the updater: what changed, and once the run has ended its summary."""
        self.refresh()
        # the summary re-renders the cell's output: only once the last updates have
        # landed, or a new view could get an update while it is still being built
        if idle and time.monotonic() - self._drawn_at >= SUMMARY_QUIET:
            self._leave_summary()  # once per ended state: it checks what changed

    def _drawn(self) -> bool:
        """All is shown: nothing held back for the page, every sample and histogram asked
        for drawn, and an ended run's summary in its cells."""
        run = self._run
        return (self._idle() and not self._held
                and self._n_samples == len(run.record.samples_since(0))
                and not self.histograms.pending(run)
                and (run.state not in ENDED or self.cells.up_to_date(self._summary_key())))

    def _wait(self) -> float:
        """Seconds to the next redraw: 4 Hz for a second after a kick, else by the bytes the
        last redraw sent; while the page is busy, as soon as it catches up."""
        wait = UPDATE_INTERVAL if time.monotonic() < self._urgent_until else redraw_interval(self._sent)
        held = self.pacer.held()  # the page is busy: the charts wait, the status goes on
        if held:  # woken by the page's acknowledgement, else at the status' pace at most
            wait = max(UPDATE_INTERVAL, min(wait, held))
        return wait

    def refresh(self) -> None:
        """Draw what changed since the last refresh; send nothing when nothing did."""
        run = self._run
        record = run.record
        record.drain()
        new = record.since(self._rows)
        self._rows += len(new["step"])
        steps = new["step"]
        if self._x0 is None and len(steps):
            self._x0 = float(steps[0])
        # the status first: it is small, and it is what a click waits to see; the charts'
        # messages follow it, and a busy browser draws them after it
        state, step, paused = run.state, run.step, run.paused
        shown = (state, step, paused, run.lr, run.grad_clip)
        changed = shown != self._shown or len(steps) > 0
        if changed:
            self._draw_status(run, *shown)
            self._shown = shown
        self._feed(new)
        now = time.monotonic()
        self._held = bool(self.pacer.held())
        if self._held:  # the page has not caught up: the charts wait, the status went
            if changed:
                self._drawn_at = now
            return
        fed, self._undrawn = self._undrawn, {}
        if self._x0 is not None and "grad_norm" in fed:  # the clip threshold, up to this step
            self.charts["grad_norm"].draw_hline("clip", self._x0, float(step), run.grad_clip or 0.0)
        self._sent = sum(self.charts[chart].draw(sorted(names)) for chart, names in fed.items())
        if (figures := tuple(self._figures())) != tuple(self.grid.children):  # an optional chart left or joined
            self.grid.children = figures
        weight = self.smoothing.value  # a new weight: every smoothed curve redrawn, once
        self._sent += sum(chart.set_smoothing(weight) for chart in self.charts.values())
        self._sent += self.layers.refresh(run)
        self._sent += self.resources.refresh(run)
        self._sent += self.histograms.refresh(run)
        changed = changed or bool(self._sent)
        events = record.events_since(0)
        if len(events) != self._n_events:
            changed = True
            self._n_events = len(events)
            for chart in self.timelines:
                chart.draw_events(events)
        if changed:  # numbered: a front end acknowledges it once it has handled all of it
            self.pacer.sent()
        self._draw_samples(run)
        self._draw_save(run)
        if changed:
            self._drawn_at = time.monotonic()

    def _feed(self, new: dict) -> None:
        """Give the charts' series the new rows and the user's new metrics (not sent yet)."""
        fed = self._undrawn
        if self._ghosts:  # once: their curves are drawn whole
            for ghost, label in zip(self._ghosts, self._ghost_labels):
                h = ghost.record.since(0)
                self.charts["loss"].extend(label, h["step"], h["loss"])
            fed.setdefault("loss", set()).update(self._ghost_labels)
            self._ghosts = []
        steps = new["step"]
        for m in self._metrics:
            values = new[m.name] if m.derive is None else m.derive(new)
            x = steps
            if m.sparse:  # an evaluation's dots, where there was one
                keep = ~np.isnan(values)
                x, values = steps[keep], values[keep]
            if self.charts[m.chart].extend(m.label, x, values):
                fed.setdefault(m.chart, set()).add(m.label)
        logged = self._run.record.logged_since(self._n_logged)
        self._n_logged += len(logged)
        for name in dict.fromkeys(n for _, n, _ in logged):
            points = [(s, v) for s, n, v in logged if n == name]
            key = f"user:{name}"
            if key not in self.charts:
                self._add_user_chart(name)
            x, y = np.array(points, dtype=np.float64).T
            self.charts[key].extend(name, x, y)
            fed.setdefault(key, set()).add(name)

    def _add_user_chart(self, name: str) -> None:
        """A chart of its own for a metric the user logs (on the updater thread)."""
        metric = next(m for m in self._run.record.metrics() if m.name == name and m.user)
        spec = user_chart(metric)
        chart = Chart(spec.title, self._x, {name: (metric.color, None)}, _css(spec.key),
                      tick_format=spec.tick_format)
        self.charts[spec.key] = chart
        self.timelines.append(chart)
        chart.draw_events(self._run.record.events_since(0))
        self.grid.children = tuple(self._figures())
