"""The LR range test's live chart: smoothed loss against LR, suggestions, click a point to choose."""

from __future__ import annotations

import html
import threading

import bqplot as bq
import ipywidgets as w
import numpy as np

from lmwidget.core.palette import BLUE, GREEN, PURPLE, RED
from lmwidget.views.routing import serve_on_subshell
from lmwidget.views.updater import Updater

SUGGESTION_COLORS = {"steepest": GREEN, "min/10": PURPLE}


class LRFinderView(w.VBox):
    """Built on the caller's thread; one updater thread writes every trait. The click and
    button callbacks only set the finder's choice or ask for a run."""

    def __init__(self, finder):
        self._finder = finder
        x = bq.LogScale()
        y = bq.LinearScale()
        self.y_scale = y
        self.raw = bq.Lines(x=np.zeros(0), y=np.zeros(0), scales={"x": x, "y": y}, colors=[BLUE],
                            labels=["loss"], stroke_width=1, opacities=[0.35])
        self.smoothed = bq.Lines(x=np.zeros(0), y=np.zeros(0), scales={"x": x, "y": y},
                                 colors=[BLUE], labels=["smoothed"], stroke_width=2)
        # every smoothed point is a dot to click on
        self.points = bq.Scatter(x=np.zeros(0), y=np.zeros(0), scales={"x": x, "y": y},
                                 colors=[BLUE], default_size=24, opacities=[0.5],
                                 tooltip=bq.Tooltip(fields=["x", "y"], formats=[".2e", ".4f"],
                                                    labels=["lr", "smoothed loss"]))
        self.marks = bq.Scatter(x=np.zeros(0), y=np.zeros(0), scales={"x": x, "y": y},
                                colors=list(SUGGESTION_COLORS.values()), default_size=120, marker="diamond",
                                names=[], display_names=True)
        self.chosen_rule = bq.Lines(x=np.zeros(0), y=np.zeros(0), colors=[RED], line_style="dashed",
                                    scales={"x": x, "y": bq.LinearScale(min=0, max=1)})
        self.figure = bq.Figure(
            title="LR range test: smoothed loss against learning rate",
            marks=[self.raw, self.smoothed, self.points, self.marks, self.chosen_rule],
            axes=[bq.Axis(scale=x, side="bottom", label="learning rate", tick_format=".0e"),
                  bq.Axis(scale=y, side="left", label="loss", tick_format=".3~g")],
            animation_duration=0, layout=w.Layout(width="auto", height="320px", min_width="420px"),
            fig_margin=dict(top=40, bottom=50, left=60, right=20))
        self.figure.add_class("lmwidget-lrfind-chart")
        self.status = w.HTML()
        self.status.add_class("lmwidget-lrfind-status")
        self.train_button = w.Button(description="Train with this LR", icon="play",
                                     button_style="success", disabled=True,
                                     layout=w.Layout(width="auto"))
        self.train_button.add_class("lmwidget-lrfind-train")
        self.runs = w.VBox()  # the dashboards of runs started here
        self.points.on_element_click(self._on_click)
        self.train_button.on_click(self._on_train)
        serve_on_subshell(self.points, self.train_button)  # a click acts while a cell is busy
        super().__init__([self.status, self.figure, self.train_button, self.runs])
        self.add_class("lmwidget-lrfind")
        self._shown = None
        self._n = 0
        self._pending_runs = []
        self._lock = threading.Lock()  # the runs to show
        # it redraws until the test is done, every run started here shown and the choice drawn
        self.updater = Updater("lmwidget-lrfind-ui", lambda ended: self.refresh(), lambda: finder.done,
                               self.status, drawn=lambda: (not self._pending_runs
                                                           and self._drawn_choice == finder.chosen))
        self.kick()

    # -- callbacks: any thread; they set the choice or queue a run ----------------------------
    def _on_click(self, _, content):
        index = content.get("data", {}).get("index")
        lrs = self._point_lrs  # the exact LRs of the dots (the chart holds float32)
        if index is not None and 0 <= index < len(lrs):
            self._finder.choose(float(lrs[index]))

    def _on_train(self, _):
        try:
            run = self._finder.train(display=False, concurrent=True)  # the click asks for it
            run.dashboard  # built here, on the kernel's thread; the updater only shows it
        except Exception as e:  # shown under the chart, not lost in a log
            self._error = f"could not start the run: {e!r}"
            self.kick()
            return
        with self._lock:
            self._pending_runs.append(run)
        self.kick()

    # -- the updater ------------------------------------------------------------------------
    def kick(self) -> None:
        """Make sure the updater runs, and wake it now."""
        self.updater.kick()

    _drawn_choice = None
    _error = ""
    _point_lrs = np.zeros(0)

    def refresh(self) -> None:
        finder = self._finder
        lrs, losses, smoothed = finder.results()
        if len(lrs) != self._n:
            self._n = len(lrs)
            x = lrs.astype(np.float32)
            keep = np.isfinite(smoothed)
            with self.figure.hold_sync():
                self.raw.x, self.raw.y = x, np.where(np.isfinite(losses), losses, np.nan).astype(np.float32)
                self.smoothed.x, self.smoothed.y = x[keep], smoothed[keep].astype(np.float32)
                self.points.x, self.points.y = x[keep], smoothed[keep].astype(np.float32)
                self._point_lrs = lrs[keep]
                if keep.any():  # from the lowest smoothed loss to a bit above the start: the
                    low, first = float(np.min(smoothed[keep])), float(smoothed[keep][0])
                    top = max(first, low) * 1.15  # explosion runs off the top, not the scale
                    self.y_scale.min, self.y_scale.max = low - 0.05 * (top - low) - 1e-6, top
                suggestions = finder.suggestions
                if suggestions:
                    at = [int(np.argmin(np.abs(lrs - lr))) for lr in suggestions.values()]
                    self.marks.x = np.array(list(suggestions.values()), np.float32)
                    self.marks.y = np.array([smoothed[i] if np.isfinite(smoothed[i]) else np.nanmin(smoothed)
                                             for i in at], np.float32)
                    self.marks.names = list(suggestions)  # the values are in the status line
                    self.marks.colors = [SUGGESTION_COLORS[k] for k in suggestions]
        chosen = finder.chosen
        if chosen != self._drawn_choice:
            self._drawn_choice = chosen
            with self.chosen_rule.hold_sync():
                self.chosen_rule.x = np.array([chosen, chosen], np.float32)
                self.chosen_rule.y = np.array([0, 1], np.float32)
        ready = finder.done and (chosen is not None or finder.suggestion is not None)
        self.train_button.disabled = not ready
        self.train_button.description = f"Train with lr={finder.lr:.2e}" if ready else "Train with this LR"
        status = describe(finder)
        if self._error:
            status += f' · <span style="color:{RED}">{html.escape(self._error)}</span>'
        if status != self._shown:
            self._shown = status
            self.status.value = status
        with self._lock:
            runs, self._pending_runs = self._pending_runs, []
        if runs:
            self.runs.children = (*self.runs.children, *(run.dashboard for run in runs))


def describe(finder) -> str:
    """The finder's status line (HTML)."""
    parts = [f"<b>LR range test</b> {finder.state}, {len(finder.lrs)}/{finder.steps} steps"]
    for name, lr in finder.suggestions.items():
        parts.append(f"{name} {lr:.2e}")
    if finder.chosen is not None:
        parts.append(f"<b>chosen {finder.chosen:.2e}</b>")
    elif finder.suggestions:
        parts.append("click a point to choose its LR")
    if finder.error is not None:
        parts.append(f'<span style="color:{RED}">{html.escape(repr(finder.error))}</span>')
    return " · ".join(parts)
