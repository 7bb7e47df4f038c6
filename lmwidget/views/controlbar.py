"""The dashboard's control bar: the run's status line, and the buttons, slider and inputs that steer it."""

from __future__ import annotations

import html
import math
import time
import traceback

import ipywidgets as w

from lmwidget.core.control import ENDED, LIVE_ONLY
from lmwidget.core.palette import AMBER, BLUE, GREEN, GREY, RED
from .frontends import cell_running, frontend_notice
from .panels import format_anomaly
from .routing import serve_on_subshell, why_not
from .smoothing import DEFAULT as DEFAULT_SMOOTHING

LR_DECADES = 2.0            # the LR slider spans this many decades either side of the current LR,
LR_SLIDER_WIDTH = "460px"   # over a track of ~290 px: 10 px of drag is x1.37 at most
STATE_COLORS = {"running": GREEN, "paused": AMBER, "stopped": GREY,
                "finished": BLUE, "failed": RED}
STOP_STYLE = "danger"        # Stop while it can act; plain once disabled, so it never looks live
BUSY_NOTE = ("a cell is running: this front end hands clicks to the kernel's main thread, "
             "so they act once the cell ends")
BAR_STYLES = {"running": "", "paused": "warning", "stopped": "info", "finished": "success",
              "failed": "danger"}


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def lr_range(lr: float) -> tuple[float, float]:
    """The LR slider's (min, max) exponents: centred on `lr`, LR_DECADES either side."""
    centre = math.log10(lr)
    return centre - LR_DECADES, centre + LR_DECADES


class ControlBar:
    """The status line and the controls of a Dashboard (a part of it, not a view of its own).

    Its widgets are built on the caller's (main) thread. The kernel reads their clicks on a
    subshell of lmwidget's own where it can (routing.py), so they act while a cell is busy.
    Their callbacks, on any thread, only ask the run and kick the dashboard's updater, which
    alone draws the status, the notice, a refusal, the outcome of a save and the last sample.
    """

    def _build_bar(self, run) -> tuple[w.HBox, w.HBox]:
        """The bar's widgets; returns the status line and the row of controls."""
        total = run.max_steps
        self.title = w.HTML(" · ".join(f"<b>{html.escape(str(v))}</b>" if k == "model" else html.escape(str(v))
                                       for k, v in run.describe().items()))
        if (note := frontend_notice()) is not None:  # Colab: the redraws may not show until a cell runs
            self.title.value += f'<br><i style="color:{AMBER}">{html.escape(note)}</i>'
        self.status = w.HTML(layout=w.Layout(min_width="80px"))
        self.step_label = w.Label("0")
        self.progress = w.IntProgress(value=0, min=0, max=total or 1, layout=w.Layout(
            width="220px", display=None if total else "none"))
        self.speed = w.Label()
        self.timing = w.Label()
        self.pause_button = w.Button(description="Pause", icon="pause", layout=w.Layout(width="100px"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style=STOP_STYLE,
                                    layout=w.Layout(width="90px"))
        lr = run.lr if math.isfinite(run.lr) and run.lr > 0 else 1e-3
        lo, hi = lr_range(lr)
        self.lr_slider = w.FloatLogSlider(value=lr, base=10, min=lo, max=hi, step=0.01,
                                          description="lr", readout_format=".2e",
                                          continuous_update=False, layout=w.Layout(width=LR_SLIDER_WIDTH))
        self.clip_input = w.BoundedFloatText(value=run.grad_clip or 0.0, min=0, max=1e30, step=0.1,
                                             description="clip norm", layout=w.Layout(width="180px"))
        self.smoothing = w.FloatSlider(value=DEFAULT_SMOOTHING, min=0.0, max=0.99, step=0.01, description="smoothing",
                                       readout_format=".2f", continuous_update=False,
                                       tooltip="exponential moving average of loss, perplexity and tokens/s "
                                               "(0: raw); the raw curve stays faint behind",
                                       layout=w.Layout(width="260px"))
        self.sample_button = w.Button(description="Sample", icon="comment")
        self.save_button = w.Button(description="Save", icon="save",
                                    tooltip="write a checkpoint of this step (run.save())")
        self.evaluate_button = w.Button(description="Evaluate", icon="check",
                                        tooltip="estimate the validation loss now (run.evaluate())")
        self.save_status = w.HTML()
        self.notice = w.HTML()
        self.sample_text = w.HTML()
        self.busy_note = w.HTML()  # shown while a cell holds the clicks back (a front end without subshells)
        for widget, css in ((self.pause_button, "lmwidget-pause"), (self.stop_button, "lmwidget-stop"),
                            (self.lr_slider, "lmwidget-lr"), (self.step_label, "lmwidget-step"),
                            (self.status, "lmwidget-status"), (self.sample_button, "lmwidget-sample"),
                            (self.sample_text, "lmwidget-sample-text"), (self.notice, "lmwidget-notice"),
                            (self.clip_input, "lmwidget-clip"), (self.save_button, "lmwidget-save"),
                            (self.save_status, "lmwidget-save-status"), (self.title, "lmwidget-title"),
                            (self.evaluate_button, "lmwidget-evaluate"), (self.smoothing, "lmwidget-smoothing"),
                            (self.busy_note, "lmwidget-busy-note")):
            widget.add_class(css)
        self._drawn_lr, self._drawn_clip = self.lr_slider.value, self.clip_input.value
        self._n_samples = 0
        self._rate = (time.monotonic(), 0, float("nan"))  # (t, step, steps/s) for the ETA
        self._notice = None      # what the notice shows: (kind, ...)
        self._save_shown = None  # the save outcome drawn
        self._refusal = None     # the last request the run refused, until drawn: its message
        header = w.HBox([self.status, w.Label("step"), self.step_label,
                         w.Label(f"/ {total}" if total else ""), self.progress, self.speed, self.timing],
                        layout=w.Layout(align_items="center", grid_gap="8px"))
        controls = w.HBox([self.pause_button, self.stop_button, self.lr_slider, self.clip_input,
                           self.sample_button, self.evaluate_button, self.save_button, self.smoothing,
                           self.busy_note],
                          layout=w.Layout(align_items="center", grid_gap="8px", flex_flow="row wrap"))
        return header, controls

    def _connect_bar(self, run, histograms) -> None:
        """Each control asks `run`; one it does not support is shown disabled, saying why."""
        self.pause_button.on_click(self._on_pause)
        self.stop_button.on_click(lambda _: self._ask(run.stop))
        self.sample_button.on_click(lambda _: self._ask(run.request_sample))
        self.save_button.on_click(lambda _: self._ask(run.request_save))  # its outcome is drawn
        self.evaluate_button.on_click(lambda _: self._ask(run.evaluate))
        histograms.button.on_click(lambda _: self._ask(run.request_histogram, histograms.layer.value))
        self.lr_slider.observe(self._on_lr, names="value")
        self.clip_input.observe(self._on_clip, names="value")
        self.smoothing.observe(lambda _: self.kick(), names="value")  # the updater redraws with it
        self._controls = {"pause": self.pause_button, "stop": self.stop_button, "lr": self.lr_slider,
                          "grad_clip": self.clip_input, "sample": self.sample_button,
                          "save": self.save_button, "histogram": histograms.button,
                          "evaluate": self.evaluate_button}
        for control, why in run.unsupported.items():  # shown, but disabled, saying why
            self._disable(control, f"not available: {why}")
        # the kernel reads these on lmwidget's subshell, so a busy cell delays no click; the
        # page's acknowledgements of redraws too, so the charts keep their pace meanwhile
        self.served_on_subshell = serve_on_subshell(*self._controls.values(), self.smoothing,
                                                    histograms.layer, self.pacer.acked)

    def _disable(self, control: str, why: str) -> None:
        button = self._controls[control]
        button.disabled, button.tooltip = True, why
        if control == "stop":  # a red Stop looks live
            button.button_style = ""

    # -- callbacks: any thread (a subshell included); they only ask the source -----------------
    def _ask(self, action, *args) -> None:
        try:
            action(*args)
        except (RuntimeError, ValueError, NotImplementedError, ConnectionError) as e:
            self._refusal = str(e)  # the updater draws it
        self.kick()

    def _on_pause(self, _):
        self._ask(self._run.resume if self._run.paused else self._run.pause)

    def _on_lr(self, change):
        if not self._echo() and not math.isclose(change["new"], self._run.lr, rel_tol=1e-9):
            self._run.set_lr(change["new"])

    def _on_clip(self, change):
        if not self._echo() and change["new"] != self._run.grad_clip:
            self._run.set_grad_clip(change["new"])

    def _echo(self) -> bool:
        """True inside the updater's own write of a control: that is no request."""
        return self.updater.on_thread()

    # -- drawn by the updater ---------------------------------------------------------------
    def _draw_save(self, run) -> None:
        last = run.last_save
        if last is self._save_shown or last is None:
            return
        self._save_shown = last
        outcome, detail = last
        if outcome == "ok":
            self.save_status.value = (
                f'<span style="color:{BLUE}">saved step {detail["step"]} to '
                f'<code>{html.escape(str(detail["path"]))}</code>'
                + (f' ({detail["bytes"] / 1e6:.2f} MB in {detail["seconds"] * 1e3:.0f} ms)'
                   if detail.get("bytes") else "") + "</span>")
        else:
            self.save_status.value = f'<span style="color:{STATE_COLORS["failed"]}">{html.escape(detail)}</span>'

    def _draw_status(self, run, state, step, paused, lr, clip) -> None:
        self.status.value = f'<b style="color:{STATE_COLORS[state]}">{state}</b>'
        self.step_label.value = str(step)
        with self.progress.hold_sync():
            if run.max_steps:
                self.progress.value = min(step, run.max_steps)
            self.progress.bar_style = BAR_STYLES[state]
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"
        if state in ENDED:  # what acts only on a loop still training says why it cannot
            for control in LIVE_ONLY:
                if control not in run.unsupported:
                    self._disable(control, f"the run has {state}: it cannot {LIVE_ONLY[control]} any more")
        # show a value applied elsewhere (code, a policy) once; a user's edit in flight stays
        if lr != self._drawn_lr and math.isfinite(lr) and lr > 0:
            self._drawn_lr = lr
            lo, hi = lr_range(lr)  # centred on the LR applied, from the slider or elsewhere
            with self.lr_slider.hold_sync():  # widen first, or the slider would clamp it
                self.lr_slider.min = min(self.lr_slider.min, lo)
                self.lr_slider.max = max(self.lr_slider.max, hi)
                self.lr_slider.value = lr
                self.lr_slider.min, self.lr_slider.max = lo, hi
        if clip is not None and clip != self._drawn_clip:
            self._drawn_clip = clip
            self.clip_input.value = clip
        tps = run.record.last("tokens_per_sec")
        self.speed.value = ("" if not math.isfinite(tps) else f"{tps:,.0f} tokens/s" if state == "running"
                            else f"last {tps:,.0f} tokens/s")
        t0, s0, rate = self._rate
        now = time.monotonic()
        if state == "running" and now - t0 >= 1.0:
            current = (step - s0) / (now - t0)
            rate = current if not math.isfinite(rate) else 0.7 * rate + 0.3 * current
            self._rate = (now, step, rate)
        elif state != "running":
            self._rate = (now, step, rate)
        left = (run.max_steps - step) if run.max_steps else float("nan")
        eta = left / rate if state == "running" and rate > 0 else float("nan")
        self.timing.value = f"elapsed {_fmt_duration(run.elapsed)}" + (
            f" · ETA {_fmt_duration(eta)}" if math.isfinite(eta) else "")
        self._draw_notice(run, state, step, paused)
        waits = self.pacer.acks_on_main and cell_running() and state not in ENDED
        why = why_not()
        note = (f'<i style="color:{AMBER}">{html.escape(BUSY_NOTE + (f" ({why})" if why else ""))}</i>'
                if waits else "")
        if self.busy_note.value != note:
            self.busy_note.value = note
        if (refusal := self._refusal) is not None:
            self._refusal = None
            self.save_status.value = f'<span style="color:{STATE_COLORS["failed"]}">{html.escape(refusal)}</span>'

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
        new = run.record.samples_since(self._n_samples)
        if not new:
            return
        self._n_samples += len(new)
        step, text = new[-1]
        self.sample_text.value = (f"<b>sample at step {step}</b><pre style='white-space:pre-wrap'>"
                                  f"{html.escape(text)}</pre>")
