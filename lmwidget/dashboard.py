"""Dashboard: the widget view of a Run, redrawn by one throttled updater thread."""

from __future__ import annotations

import collections
import html
import math
import statistics
import threading
import time
import traceback
import uuid

import bqplot as bq
import numpy as np
import ipywidgets as w

from .charts import Chart
from .compare import labels_for
from .control import ENDED
from .frontends import cell_running, prepare, track_cells
from .panels import SAMPLE_INTERVAL, HistogramPanel, LayersPanel, ResourcesPanel, format_anomaly
from .summary import summary_html

UPDATE_INTERVAL = 0.25  # s: at most 4 redraws per second
SUMMARY_QUIET = 1.0     # s with nothing redrawn before the static summary joins the cell
GHOST_COLOR = "#9e9e9e"
BYTES_PER_SEC = 128 * 1024  # long runs redraw less often rather than stream full series at 4 Hz
ACK_TIMEOUT = 10.0  # s: the longest the charts wait for a front end to handle the last redraw
BROWSER_SHARE = 1 / 3  # of the page's time spent drawing charts, at most: it stays free for clicks
STATE_COLORS = {"running": "#2e7d32", "paused": "#f9a825", "stopped": "#616161",
                "finished": "#1565c0", "failed": "#c62828"}
BAR_STYLES = {"running": "", "paused": "warning", "stopped": "info", "finished": "success",
              "failed": "danger"}


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def redraw_interval(sent_bytes: int) -> float:
    """Seconds until the next redraw: 4 Hz, slower once a redraw carries many bytes."""
    return max(UPDATE_INTERVAL, sent_bytes / BYTES_PER_SEC)


class Dashboard(w.VBox):
    """Widgets are built on the caller's (main) thread. Their callbacks only touch the run's
    Control; the updater thread alone writes widget traits."""

    def __init__(self, run):
        self._run = run
        cfg = run.config
        self.status = w.HTML(layout=w.Layout(min_width="80px"))
        self.step_label = w.Label("0")
        self.progress = w.IntProgress(value=0, min=0, max=cfg.max_steps, layout=w.Layout(width="220px"))
        self.speed = w.Label()
        self.timing = w.Label()
        self.pause_button = w.Button(description="Pause", icon="pause", layout=w.Layout(width="100px"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    layout=w.Layout(width="90px"))
        lo, hi = min(-6.0, math.floor(math.log10(cfg.lr))), max(0.0, math.ceil(math.log10(cfg.lr)))
        self.lr_slider = w.FloatLogSlider(value=cfg.lr, base=10, min=lo, max=hi, step=0.01,
                                          description="lr", readout_format=".2e",
                                          continuous_update=False, layout=w.Layout(width="360px"))
        self.clip_input = w.BoundedFloatText(value=cfg.grad_clip, min=0, max=1e30, step=0.1,
                                             description="clip norm", layout=w.Layout(width="180px"))
        self.sample_button = w.Button(description="Sample", icon="comment")
        self.save_button = w.Button(description="Save", icon="save",
                                    tooltip="write a checkpoint of this step (run.save())")
        self.save_status = w.HTML()
        # flow control: the updater numbers each redraw in `_drawn`; a front end copies the
        # number into `_acked` (jsdlink, in the page) once it has handled every message
        # before it, and sends it back. Charts wait for that, so a browser slower than the
        # kernel never builds a queue in which a click's effect would wait its turn
        self._drawn, self._acked = w.IntText(0), w.IntText(0)
        self._ack_link = w.jsdlink((self._drawn, "value"), (self._acked, "value"))
        self._acked.observe(self._on_ack, names="value")
        self.notice = w.HTML()
        self.sample_text = w.HTML()
        for widget, css in ((self.pause_button, "lmwidget-pause"), (self.stop_button, "lmwidget-stop"),
                            (self.lr_slider, "lmwidget-lr"), (self.step_label, "lmwidget-step"),
                            (self.status, "lmwidget-status"), (self.sample_button, "lmwidget-sample"),
                            (self.sample_text, "lmwidget-sample-text"), (self.notice, "lmwidget-notice"),
                            (self.clip_input, "lmwidget-clip"), (self.save_button, "lmwidget-save"),
                            (self.save_status, "lmwidget-save-status")):
            widget.add_class(css)

        # earlier runs of this kernel, drawn faintly on the loss chart (train(ghosts=N))
        self._ghosts = [g for g in getattr(run, "_ghosts", ()) if g is not run]
        self._ghost_labels = labels_for([*self._ghosts, run])[:-1] if self._ghosts else []
        x = bq.LinearScale()  # one step axis shared by every chart
        self.charts = {
            "loss": Chart("loss", x, {"train": ("#1565c0", None), "val": ("#e65100", "circle"),
                                      **{label: (GHOST_COLOR, None) for label in self._ghost_labels}},
                          "lmwidget-chart-loss", tick_format=".3g"),
            "perplexity": Chart("perplexity", x, {"train": ("#1565c0", None), "val": ("#e65100", "circle")},
                                "lmwidget-chart-perplexity", log=True, tick_format=".3g"),
            "grad_norm": Chart("grad norm (before clipping)", x, {"grad_norm": ("#2e7d32", None)},
                               "lmwidget-chart-grad-norm", log=True, tick_format=".2g"),
            "lr": Chart("learning rate", x, {"lr": ("#6a1b9a", None)}, "lmwidget-chart-lr",
                        log=True, tick_format=".1e"),
            "throughput": Chart("tokens / s", x, {"tokens_per_sec": ("#37474f", None)},
                                "lmwidget-chart-throughput", tick_format=".3s"),
        }
        self.charts["grad_norm"].add_hline("clip", "#c62828")
        for label in self._ghost_labels:
            self.charts["loss"].marks[label].opacities = [0.6]
        self.resources = ResourcesPanel(gpu=run._trainer.device.type == "cuda")
        self.layers = LayersPanel(run.layers)
        self.histograms = HistogramPanel(run)
        self.timelines = [*self.charts.values(), *self.resources.charts]  # every chart with events

        self.pause_button.on_click(self._on_pause)
        self.stop_button.on_click(lambda _: run.stop())
        self.sample_button.on_click(self._on_sample)
        self.save_button.on_click(self._on_save)
        self.histograms.button.on_click(self._on_histogram)
        self.lr_slider.observe(self._on_lr, names="value")
        self.clip_input.observe(self._on_clip, names="value")

        header = w.HBox([self.status, w.Label("step"), self.step_label, w.Label(f"/ {cfg.max_steps}"),
                         self.progress, self.speed, self.timing],
                        layout=w.Layout(align_items="center", grid_gap="8px"))
        controls = w.HBox([self.pause_button, self.stop_button, self.lr_slider, self.clip_input,
                           self.sample_button, self.save_button],
                          layout=w.Layout(align_items="center", grid_gap="8px"))
        figures = [c.figure for c in self.charts.values()] + [self.layers.figure] + [
            c.figure for c in self.resources.charts]
        grid = w.GridBox(figures, layout=w.Layout(
            grid_template_columns="repeat(auto-fill, minmax(340px, 1fr))"))
        super().__init__([header, controls, self.save_status, self.notice, grid, self.resources.gpu_label,
                          self.histograms.widget, self.sample_text])
        self.add_class("lmwidget-dashboard")

        self._rows = 0           # history rows already fed to the charts
        self._undrawn = {}       # chart -> the series fed but not yet sent
        self._held = False       # the last refresh held the charts back for the page
        self._x0 = None          # the first step drawn
        self._sent = 0           # chart bytes sent by the last refresh
        self._drawn_lr, self._drawn_clip = cfg.lr, cfg.grad_clip  # as the controls show them
        self._n_events = 0
        self._n_samples = 0
        self._shown = None       # the last (state, step, paused, lr, clip) drawn
        self._rate = (time.monotonic(), 0, float("nan"))  # (t, step, steps/s) for the ETA
        self._sampled = -math.inf  # when resources were last sampled (monotonic s)
        self._notice = None      # what the notice shows: (kind, ...)
        self._save_shown = None  # the save outcome drawn
        self._displays = []      # (display_id, parent header) of each cell showing this dashboard
        self._summary = None     # what the summary last left in those cells showed
        self._summarized = set() # the display ids that have it
        self._drawn_at = -math.inf  # when the last refresh changed anything (monotonic s)
        self._updater = None
        self._updater_lock = threading.Lock()
        self._wake = threading.Event()  # set by a click, or the run's state changing: redraw now
        run._control.watch(self._wake)
        self._urgent_until = -math.inf
        self._ack_seen = False   # a front end has acknowledged a redraw: it takes part
        self._ack_on_main = False  # acknowledgements come through the kernel's main thread
        self._sent_at = None     # when the last redraw was sent, until acknowledged
        self._charts_at = -math.inf  # the page's share: no chart redraw before this (monotonic s)
        self._page_times = collections.deque(maxlen=5)  # s a front end took per redraw, latest
        self._kick()

    # -- callbacks: any thread (a subshell included); they only touch Control -------------------
    def _on_pause(self, _):
        if self._run._control.paused:
            self._run.resume()
        else:
            self._run.pause()
        self._kick()

    def _on_sample(self, _):
        self._run.request_sample()
        self._kick()

    def _on_save(self, _):
        self._run.request_save()  # the outcome is drawn by the updater
        self._kick()

    def _on_histogram(self, _):
        self._run.request_histogram(self.histograms.layer.value)
        self._kick()

    def _on_lr(self, change):
        if not self._echo() and not math.isclose(change["new"], self._run.lr, rel_tol=1e-9):
            self._run.set_lr(change["new"])

    def _on_clip(self, change):
        if not self._echo() and change["new"] != self._run.grad_clip:
            self._run.set_grad_clip(change["new"])

    def _on_ack(self, change) -> None:
        """A front end has handled everything up to redraw `change["new"]` (any thread)."""
        self._ack_seen = True
        # over the main thread (no comms over subshells), no acknowledgement arrives while a
        # cell runs: then the charts go on by time alone
        self._ack_on_main = threading.current_thread() is threading.main_thread()
        sent = self._sent_at
        if change["new"] != self._drawn.value or sent is None:
            return
        now = time.monotonic()
        self._page_times.append(now - sent)
        self._charts_at = now + statistics.median(self._page_times) * (1 / BROWSER_SHARE - 1)
        self._sent_at = None
        self._wake.set()

    def _charts_held(self) -> float:
        """Seconds until the charts may be redrawn: while a front end still works through the
        last redraw (or rests after it, so that it keeps time for clicks); 0 when free."""
        if not self._ack_seen or (self._ack_on_main and cell_running()):
            return 0.0
        now, sent = time.monotonic(), self._sent_at
        if sent is not None and now < sent + ACK_TIMEOUT:
            return sent + ACK_TIMEOUT - now  # the acknowledgement wakes the updater sooner
        return max(0.0, self._charts_at - now)

    def _echo(self) -> bool:
        """True inside the updater's own write of a control: that is no request."""
        return threading.current_thread() is self._updater

    # -- display and the static summary --------------------------------------------------------
    def show(self) -> None:
        """Display in the running cell under a display id, so that when the run ends the
        cell's output can also carry a static summary (see _leave_summary)."""
        from IPython.display import display

        from IPython import get_ipython

        prepare()
        track_cells()  # whether a redraw's acknowledgement can reach this kernel now
        pub = getattr(get_ipython(), "display_pub", None)
        display_id = f"lmwidget-{self._run.id}-{uuid.uuid4().hex[:12]}"
        display(self._bundle(), raw=True, display_id=display_id)
        self._displays.append((display_id, getattr(pub, "parent_header", None)))
        self._kick()  # an ended run's updater leaves the summary in this cell too

    def _ipython_display_(self) -> None:
        self.show()

    def _bundle(self, summary: str | None = None) -> dict:
        bundle = self._repr_mimebundle_()
        run = self._run
        bundle["text/plain"] = (f"lmwidget dashboard of run {run.id} ({run.state} at step "
                                f"{run.step}/{run.max_steps}): live in a notebook with a kernel")
        if summary is not None:
            bundle["text/html"] = summary
        return bundle

    def _leave_summary(self) -> None:
        """Once the run has ended: add the final curves as HTML to every cell showing this
        dashboard. A live front end keeps drawing the widget (its richer type); a saved
        notebook viewed with no kernel (nbviewer, GitHub, a reopened file) shows the HTML."""
        if not self._displays or self._run.state not in ENDED:
            return
        key = (self._run.state, self._run.step, len(self._run._history.events_since(0)))
        if key != self._summary:  # the run moved on (a save, a sample after the end)
            self._summary, self._summarized = key, set()
        todo = [(i, parent) for i, parent in self._displays if i not in self._summarized]
        self._summarized.update(i for i, _ in todo)  # tried once, even if it fails
        from IPython import get_ipython

        pub = getattr(get_ipython(), "display_pub", None)
        if pub is None or not todo:  # nothing new, or no kernel to send it through
            return
        bundle = self._bundle(summary_html(self._run))
        for display_id, parent in todo:
            # the update must carry its cell's request: a front end routes it by that
            token = (pub.set_thread_parent(parent)
                     if parent and hasattr(pub, "set_thread_parent") else None)
            try:
                pub.publish(data=bundle, metadata={}, transient={"display_id": display_id}, update=True)
            finally:
                if token is not None:
                    pub.reset_thread_parent(token)

    # -- the updater thread ------------------------------------------------------------------
    def _kick(self) -> None:
        """Make sure the updater runs (it exits once the run has ended and all is drawn), and
        wake it now: a click shows its effect without waiting out a long redraw interval."""
        self._urgent_until = time.monotonic() + 1.0  # redraw at full rate for a second
        self._wake.set()
        with self._updater_lock:
            if self._updater is None:
                self._updater = threading.Thread(target=self._update_loop, daemon=True,
                                                 name=f"lmwidget-ui-{self._run.id}")
                self._updater.start()

    def settle(self, timeout: float = 30.0) -> None:
        """Once the run has ended (or before it starts): wait until everything it recorded
        is drawn. While it trains the charts are at most one redraw behind anyway."""
        self._kick()
        with self._updater_lock:
            updater = self._updater
        if updater is not None and self._idle() and updater is not threading.current_thread():
            updater.join(timeout)

    def _idle(self) -> bool:
        """Nothing more will happen by itself: the run has ended, or has not started."""
        return self._run.state in ENDED or not self._run.started

    def _update_loop(self) -> None:
        while True:
            idle = self._idle()  # read first: the last draw sees the end
            try:
                self.refresh()
                # the summary re-renders the cell's output: only once the last updates have
                # landed, or a new view could get an update while it is still being built
                if idle and time.monotonic() - self._drawn_at >= SUMMARY_QUIET:
                    self._leave_summary()  # once per ended state: it checks what changed
            except Exception:  # never let a drawing bug kill the view silently
                self.notice.value = f"<pre>dashboard error:\n{html.escape(traceback.format_exc())}</pre>"
            with self._updater_lock:  # Run.start() kicks under this lock: no lost start
                drawn = (not self._held and self._n_samples == len(self._run._trainer.samples)
                         and not self.histograms.pending(self._run)
                         and (self._run.state not in ENDED
                              or all(i in self._summarized for i, _ in self._displays)))
                if idle and self._idle() and drawn:
                    self._updater = None
                    return
            now = time.monotonic()
            wait = UPDATE_INTERVAL if now < self._urgent_until else redraw_interval(self._sent)
            held = self._charts_held()  # the page is busy: the charts wait, the status goes on
            if held:
                wait = min(max(wait, UPDATE_INTERVAL), held)
            self._wake.wait(wait)  # a click or a change of state wakes it at once
            self._wake.clear()

    def refresh(self) -> None:
        """Draw what changed since the last refresh; send nothing when nothing did."""
        run = self._run
        history = run._history
        history.drain()
        new = history.since(self._rows)
        self._rows += len(new["step"])
        steps = new["step"]
        if self._x0 is None and len(steps):
            self._x0 = float(steps[0])
        # the status first: it is small, and it is what a click waits to see; the charts'
        # messages follow it, and a busy browser draws them after it
        state, step, paused = run.state, run.step, run._control.paused
        shown = (state, step, paused, run.lr, run.grad_clip)
        changed = shown != self._shown or len(steps) > 0
        if changed:
            self._draw_status(run, *shown)
            self._shown = shown
        fed = self._undrawn  # series fed since they were last sent
        if self._ghosts:  # once: their curves are drawn whole
            for ghost, label in zip(self._ghosts, self._ghost_labels):
                h = ghost._history.since(0)
                self.charts["loss"].extend(label, h["step"], h["loss"])
            fed.setdefault("loss", set()).update(self._ghost_labels)
            self._ghosts = []
        with np.errstate(over="ignore"):
            ppl, val_ppl = np.exp(new["loss"]), np.exp(new["val_loss"])
        for chart, name, values in (("loss", "train", new["loss"]), ("perplexity", "train", ppl),
                                    ("grad_norm", "grad_norm", new["grad_norm"]), ("lr", "lr", new["lr"]),
                                    ("throughput", "tokens_per_sec", new["tokens_per_sec"])):
            if self.charts[chart].extend(name, steps, values):
                fed.setdefault(chart, set()).add(name)
        evals = ~np.isnan(new["val_loss"])
        for chart, values in (("loss", new["val_loss"][evals]), ("perplexity", val_ppl[evals])):
            if self.charts[chart].extend("val", steps[evals], values):
                fed.setdefault(chart, set()).add("val")
        now = time.monotonic()
        if now - self._sampled >= SAMPLE_INTERVAL and run.state not in ENDED:
            self._sampled = now
            run.sample_resources()
        self._held = bool(self._charts_held())
        if self._held:  # the page has not caught up: the charts wait, the status went
            if changed:
                self._drawn_at = now
            return
        self._undrawn = {}
        if self._x0 is not None and "grad_norm" in fed:  # the clip threshold, up to this step
            self.charts["grad_norm"].draw_hline("clip", self._x0, float(step), run.grad_clip)
        self._sent = sum(self.charts[chart].draw(sorted(names)) for chart, names in fed.items())
        self._sent += self.layers.refresh(run)
        self._sent += self.resources.refresh(run)
        self._sent += self.histograms.refresh(run)

        changed = changed or bool(self._sent)
        events = history.events_since(0)
        if len(events) != self._n_events:
            changed = True
            self._n_events = len(events)
            for chart in self.timelines:
                chart.draw_events(events)
        if changed:  # numbered: a front end acknowledges it once it has handled all of it
            self._sent_at = time.monotonic()
            self._drawn.value += 1
        self._draw_samples(run)
        self._draw_save(run)
        if changed:
            self._drawn_at = time.monotonic()

    def _draw_save(self, run) -> None:
        last = run._trainer.checkpointer.last
        if last is self._save_shown:
            return
        self._save_shown = last
        outcome, detail = last
        if outcome == "ok":
            self.save_status.value = (
                f'<span style="color:#1565c0">saved step {detail["step"]} to '
                f'<code>{html.escape(detail["path"])}</code> ({detail["bytes"] / 1e6:.2f} MB in '
                f'{detail["seconds"] * 1e3:.0f} ms)</span>')
        else:
            self.save_status.value = f'<span style="color:{STATE_COLORS["failed"]}">{html.escape(detail)}</span>'

    def _draw_status(self, run, state, step, paused, lr, clip) -> None:
        self.status.value = f'<b style="color:{STATE_COLORS[state]}">{state}</b>'
        self.step_label.value = str(step)
        with self.progress.hold_sync():
            self.progress.value = min(step, run.max_steps)
            self.progress.bar_style = BAR_STYLES[state]
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"
        # show a value applied elsewhere (code, a policy) once; a user's edit in flight stays
        if lr != self._drawn_lr:
            self._drawn_lr = lr
            with self.lr_slider.hold_sync():  # widen first, or the slider would clamp it
                self.lr_slider.min = min(self.lr_slider.min, math.floor(math.log10(lr)))
                self.lr_slider.max = max(self.lr_slider.max, math.ceil(math.log10(lr)))
                self.lr_slider.value = lr
        if clip != self._drawn_clip:
            self._drawn_clip = clip
            self.clip_input.value = clip

        tps = run._history.last("tokens_per_sec")
        self.speed.value = f"{tps:,.0f} tokens/s" if math.isfinite(tps) else ""
        t0, s0, rate = self._rate
        now = time.monotonic()
        if state == "running" and now - t0 >= 1.0:
            current = (step - s0) / (now - t0)
            rate = current if not math.isfinite(rate) else 0.7 * rate + 0.3 * current
            self._rate = (now, step, rate)
        elif state != "running":
            self._rate = (now, step, rate)
        eta = (run.max_steps - step) / rate if state == "running" and rate > 0 else float("nan")
        self.timing.value = f"elapsed {_fmt_duration(run.elapsed)}" + (
            f" · ETA {_fmt_duration(eta)}" if math.isfinite(eta) else "")
        self._draw_notice(run, state, step, paused)

    def _draw_notice(self, run, state, step, paused) -> None:
        """A failure, else the last non-finite step (prominent while it keeps the run paused)."""
        if state == "failed" and run.error is not None:
            key = ("failed",)
        elif run.anomaly is not None:
            key = ("anomaly", *run.anomaly, paused and state == "paused")
        else:
            key = None
        if key == self._notice:
            return
        self._notice = key
        if key is None:
            self.notice.value = ""
        elif key[0] == "failed":
            err = run.error
            tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            self.notice.value = (f'<div style="color:{STATE_COLORS["failed"]}"><b>training failed at step '
                                 f'{step}: {html.escape(repr(err))}</b></div><pre>{html.escape(tb)}</pre>')
        else:
            self.notice.value = format_anomaly(*key[1:])

    def _draw_samples(self, run) -> None:
        samples = run._trainer.samples
        if len(samples) == self._n_samples:
            return
        self._n_samples = len(samples)
        step, text = samples[-1]
        self.sample_text.value = (f"<b>sample at step {step}</b><pre style='white-space:pre-wrap'>"
                                  f"{html.escape(text)}</pre>")
