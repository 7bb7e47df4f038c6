"""The dashboard built without a frontend: its widget state is what a browser would draw."""

import math
import re
import threading
import time

import ipywidgets as w
import numpy as np
import pytest
import torch.nn as nn

import lmwidget
from lmwidget.core import palette
from lmwidget.views.charts import MAX_POINTS
from lmwidget.views.dashboard import BYTES_PER_SEC, UPDATE_INTERVAL, Dashboard, redraw_interval

from tests.conftest import kinds, scaled, wait_for

LONG = 1_000_000


def start(tiny, **options):
    return lmwidget.train(display=False, **{**tiny, **options})


def text_of(html_widget):
    return re.sub(r"<[^>]+>", "", html_widget.value)


def settle(dashboard, run):
    """Wait for the run to end and the updater's last redraw."""
    run._thread.join(120)
    assert not run._thread.is_alive(), f"run still training after 120 s (step {run.step})"
    wait_for(lambda: not dashboard.updater.running, timeout=10)


@pytest.fixture
def sent(monkeypatch):
    """Every widget message sent, as (widget, state keys, buffer bytes)."""
    log = []
    original = w.Widget._send

    def send(self, msg, buffers=None):
        size = sum(memoryview(b).nbytes for b in buffers or [])
        log.append((self, tuple(sorted(msg.get("state", {}))), size))
        return original(self, msg, buffers)

    monkeypatch.setattr(w.Widget, "_send", send)
    return log


def test_css_classes_are_the_test_and_styling_handles(tiny):
    run = start(tiny, max_steps=5)
    d = run.dashboard
    classes = {c for widget in (d.pause_button, d.stop_button, d.lr_slider, d.step_label, d.status,
                                d.sample_button, *(c.figure for c in d.charts.values()))
               for c in widget._dom_classes}
    assert {"lmwidget-pause", "lmwidget-stop", "lmwidget-lr", "lmwidget-step", "lmwidget-status",
            "lmwidget-sample", "lmwidget-chart-loss", "lmwidget-chart-perplexity",
            "lmwidget-chart-grad-norm", "lmwidget-chart-lr", "lmwidget-chart-throughput"} <= classes


def test_charts_show_the_whole_run_downsampled(tiny):
    run = start(tiny, max_steps=1500, eval_interval=300, grad_clip=0.5)  # past MAX_POINTS (1,000)
    d = run.dashboard
    settle(d, run)
    h = run.history
    loss = d.charts["loss"].marks["train"]
    assert MAX_POINTS // 2 < len(loss.x) <= MAX_POINTS
    assert loss.x[0] == 1 and loss.x[-1] == 1500
    assert loss.y.min() == pytest.approx(h.loss.min()) and loss.y.max() == pytest.approx(h.loss.max())
    ppl = d.charts["perplexity"].marks["train"]
    np.testing.assert_allclose(ppl.y, np.exp(loss.y), rtol=1e-5)
    val = d.charts["loss"].marks["val"]
    np.testing.assert_array_equal(val.x, [300, 600, 900, 1200, 1500])
    np.testing.assert_allclose(val.y, h.val_loss.dropna(), rtol=1e-6)
    for name, column in (("grad_norm", "grad_norm"), ("lr", "lr"), ("throughput", "tokens_per_sec")):
        mark = next(iter(d.charts[name].marks.values()))
        assert 0 < len(mark.x) <= MAX_POINTS and mark.y.max() == pytest.approx(h[column].max())
    clip = d.charts["grad_norm"].extra["clip"]
    assert list(clip.y) == [0.5, 0.5] and list(clip.x) == [1, 1500]
    assert text_of(d.status) == "finished"
    assert d.step_label.value == "1500"
    assert d.progress.value == 1500 and d.progress.bar_style == "success"


def test_a_dashboard_made_before_the_run_starts_follows_it(tiny):
    from lmwidget.training.config import TrainConfig

    run = lmwidget.Run(TrainConfig.from_options(**tiny, max_steps=200))
    d = run.dashboard
    time.sleep(2 * UPDATE_INTERVAL)
    run.start()
    settle(d, run)
    assert d.step_label.value == "200" and len(d.charts["loss"].marks["train"].x) > 0


def test_every_array_sent_is_new_and_contiguous(tiny):
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    mark = d.charts["loss"].marks["train"]
    wait_for(lambda: len(mark.x) > 3, timeout=5)
    first = mark.x
    wait_for(lambda: mark.x is not first and len(mark.x) > len(first), timeout=5)
    assert mark.x.flags.c_contiguous and mark.x.dtype == np.float32
    assert first[-1] < mark.x[-1]  # the earlier array was not mutated into the new one


def test_pause_button_pauses_and_resumes(tiny):
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    wait_for(lambda: run.step > 3)
    d.pause_button.click()
    wait_for(lambda: run.state == "paused", timeout=2)
    wait_for(lambda: d.pause_button.description == "Resume" and text_of(d.status) == "paused", timeout=2)
    frozen = run.step
    time.sleep(3 * UPDATE_INTERVAL)
    assert d.step_label.value == str(frozen)
    d.pause_button.click()
    wait_for(lambda: run.state == "running" and run.step > frozen, timeout=2)
    wait_for(lambda: d.pause_button.description == "Pause", timeout=2)
    rules = d.charts["loss"].rules

    def steering():  # the rules and their labels, without the routine evaluations
        out = []
        for label, x in zip(rules.labels, np.asarray(rules.x).tolist()):
            step, events = label.split(": ", 1)
            events = [e for e in events.split(" · ") if not e.startswith("eval")]
            if events:
                out.append((f"{step}: {' · '.join(events)}", x))
        return out

    # one rule per step, its tooltip naming each event there
    wait_for(lambda: steering() == [(f"step {frozen}: pause · resume", [frozen, frozen])], timeout=2)


def test_the_header_shows_no_throughput_while_paused(tiny):
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    wait_for(lambda: d.speed.value.endswith(" tokens/s") and d.speed.value[0].isdigit(), timeout=10)
    run.pause()
    wait_for(lambda: text_of(d.status) == "paused", timeout=5)
    assert re.fullmatch(r"last [\d,]+ tokens/s", d.speed.value), d.speed.value  # not a live speed
    run.resume()
    wait_for(lambda: d.speed.value[0].isdigit(), timeout=5)
    run.stop()


def test_slider_and_clip_input_steer_the_run(tiny):
    run = start(tiny, max_steps=LONG, lr=3e-3)
    d = run.dashboard
    wait_for(lambda: run.step > 3)
    d.lr_slider.value = 1e-4
    wait_for(lambda: run.lr == 1e-4, timeout=2)
    step = run.step
    wait_for(lambda: run.step > step + 3, timeout=2)
    assert run.history.lr.iloc[-1] == 1e-4
    d.clip_input.value = 0.3
    wait_for(lambda: run.grad_clip == 0.3, timeout=2)
    assert kinds(run) == ["lr", "grad_clip"]


def test_code_changes_show_on_the_controls(tiny):
    # no spike detection: the LR jumps tenfold, and a marked spike is an event of its own
    run = start(tiny, max_steps=LONG, spike_factor=0)
    d = run.dashboard
    run.set_lr(2e-2)
    run.set_grad_clip(0.7)
    wait_for(lambda: d.lr_slider.value == pytest.approx(2e-2) and d.clip_input.value == 0.7, timeout=10)
    assert kinds(run) == ["lr", "grad_clip"]  # reflecting them asked for nothing new


def test_the_lr_slider_is_centred_on_the_current_lr_and_follows_it(tiny):
    """Two decades either side of the LR applied: re-centred after a drag, a typed value or a
    change from code, so a small drag is always a small change."""
    run = start(tiny, max_steps=LONG, lr=2e-3, spike_factor=0)
    d = run.dashboard
    assert d.lr_slider.value == 2e-3
    assert (d.lr_slider.min, d.lr_slider.max) == pytest.approx((math.log10(2e-3) - 2, math.log10(2e-3) + 2))
    d.lr_slider.value = 2e-5  # the slider's far end: applied, then the range follows it
    wait_for(lambda: d.lr_slider.min == pytest.approx(math.log10(2e-5) - 2), timeout=5)
    assert d.lr_slider.max == pytest.approx(math.log10(2e-5) + 2) and run.lr == 2e-5
    run.set_lr(3e-10)  # from code, far outside the slider's range: shown exactly, centred
    wait_for(lambda: d.lr_slider.value == 3e-10, timeout=5)
    assert (d.lr_slider.min, d.lr_slider.max) == pytest.approx((math.log10(3e-10) - 2, math.log10(3e-10) + 2))
    time.sleep(3 * UPDATE_INTERVAL)
    assert run.lr == 3e-10 and kinds(run) == ["lr", "lr"]  # re-centring asked for nothing
    run.stop()


def test_stop_button(tiny):
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    d.stop_button.click()
    assert run.wait(2)
    settle(d, run)
    assert text_of(d.status) == "stopped"
    # what can no longer act is disabled and says why; what still works stays enabled
    for control, what in ((d.pause_button, "pause or resume"), (d.stop_button, "stop"),
                          (d.lr_slider, "change its learning rate"), (d.clip_input, "change its clip norm")):
        assert control.disabled and control.tooltip == f"the run has stopped: it cannot {what} any more"
    assert not any(c.disabled for c in (d.sample_button, d.save_button, d.evaluate_button, d.histograms.button))
    d.pause_button.click()  # a click that reaches it anyway (an old page) changes nothing shown
    settle(d, run)
    assert (text_of(d.status), d.pause_button.description, run.paused) == ("stopped", "Pause", False)
    # this dashboard's updater has exited (another test's may still be finishing)
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == f"lmwidget-ui-{run.id}"], 5)


def test_sample_button_during_and_after_the_run(tiny):
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    d.sample_button.click()
    wait_for(lambda: "sample at step" in d.sample_text.value, timeout=10)
    run.stop()
    settle(d, run)
    before = len(run.samples)
    d.sample_button.click()  # the run is over: the updater wakes up to show it
    wait_for(lambda: len(run.samples) == before + 1, timeout=10)
    wait_for(lambda: f"sample at step {run.step}" in d.sample_text.value, timeout=5)


def test_failure_is_shown_with_its_traceback(tiny):
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(200, 200)
            self.calls = 0

        def forward(self, idx, targets=None):
            self.calls += 1
            if self.calls > 3:
                raise FloatingPointError("loss went to the moon")
            logits = self.table(idx)
            return logits, logits.logsumexp(-1).mean()

        def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
            return idx

    run = start(tiny, model=Fails(), max_steps=LONG)
    d = run.dashboard
    settle(d, run)
    assert text_of(d.status) == "failed"
    assert "loss went to the moon" in d.notice.value and "Traceback" in d.notice.value
    assert d.progress.bar_style == "danger"
    assert len(run.history) == 2


def test_redraws_are_throttled_and_stop_when_nothing_changes(tiny, sent):
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    calls = []
    original = d.refresh
    d.refresh = lambda: (calls.append(time.monotonic()), original())
    wait_for(lambda: len(calls) >= 5)  # it redraws while the run trains...
    # ...at most once an UPDATE_INTERVAL (4 per second), however many steps came between
    assert len(calls) - 1 <= (calls[-1] - calls[0]) / UPDATE_INTERVAL + 1, np.diff(calls)
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    loss = d.charts["loss"].marks["train"]
    wait_for(lambda: len(loss.x) and loss.x[-1] == run.step)  # the paused step is drawn...
    drawn = len(calls)
    wait_for(lambda: len(calls) >= drawn + 2)  # ...and whatever redraw was in flight then has ended
    resources = {id(m) for c in d.resources.charts for m in c.marks.values()}
    resources |= {id(w) for c in d.resources.charts for w in (c.y_scale, c.x_axis, c.y_axis, c.shared.scale,
                                                             *c.hover.values())}
    resources.add(id(d.pacer.drawn))  # each redraw's number, for a front end to acknowledge
    before = len(sent)
    time.sleep(8 * UPDATE_INTERVAL)
    new = sent[before:]
    # paused: nothing changes, nothing is sent, but the resources sampled once a second
    assert [widget for widget, _, _ in new if id(widget) not in resources] == []
    assert 1 <= len(new) <= 2 * 3 * len(resources)  # 2 s: at most 3 samples per series (and number)


def test_axes_have_round_ticks_start_at_0_and_keep_a_constant_inside(tiny):
    run = start(tiny, max_steps=LONG, lr=3e-3, schedule="constant")
    d = run.dashboard
    wait_for(lambda: np.isfinite(run.resources.cpu_percent).sum() >= 2, timeout=scaled(10))
    run.stop()
    run.wait(10)
    settle(d, run)
    drawn = [c for c in (*d.charts.values(), *d.resources.charts) if any(len(m.x) for m in c.marks.values())]
    assert {c.figure.title for c in drawn} >= {"loss", "learning rate", "tokens / s", "memory"}
    for chart in drawn:
        ticks = np.asarray(chart.y_axis.tick_values, dtype=float)
        assert 2 <= len(ticks) <= 6, (chart.figure.title, ticks)
        lo, hi = chart.y_scale.min, chart.y_scale.max
        assert lo <= ticks.min() and ticks.max() <= hi * (1 + 1e-9), (chart.figure.title, lo, hi, ticks)
        x = np.asarray(chart.x_axis.tick_values, dtype=float)
        assert chart.shared.scale.min == 0 and x[0] == 0 and (x >= 0).all(), (chart.figure.title, x)
        gaps = np.diff(x)
        assert np.allclose(gaps, gaps[0]) and axes_step_is_round(gaps[0]), x
    step_ticks = np.asarray(d.charts["loss"].x_axis.tick_values)
    assert (step_ticks == np.round(step_ticks)).all() and step_ticks[-1] <= run.step
    # the axis ends a little past the last step: its last tick and dot are not on the edge
    assert run.step < d.charts["loss"].shared.scale.max <= run.step * 1.05 + 1
    for chart in (d.charts["throughput"], *d.resources.charts):  # cannot be negative
        assert chart.y_scale.min == 0, chart.figure.title
    lr = d.charts["lr"]  # a constant LR: inside the chart, not on its edge
    assert lr.y_scale.min < 3e-3 / 2 and lr.y_scale.max > 3e-3 * 2
    assert d.layers.bars.orientation == "horizontal" and list(d.layers.bars.x) == run.layers  # full names


def axes_step_is_round(step: float) -> bool:
    mantissa = step / 10 ** np.floor(np.log10(step) + 1e-12)
    return any(np.isclose(mantissa, m) for m in (1, 2, 5))


def test_every_curve_gives_its_value_under_the_cursor(tiny):
    """Invisible dots along each series (at most HOVER_POINTS), shown when hovered, whose
    tooltip reads the step (the time on resource charts) and the value."""
    from lmwidget.views.charts import HOVER_POINTS

    run = start(tiny, max_steps=600, eval_interval=100)
    run.wait(60)
    d = run.dashboard
    settle(d, run)
    loss = d.charts["loss"]
    dots = loss.hover["train"]
    assert 0 < len(dots.x) <= HOVER_POINTS and list(dots.opacities) == [0.0] and dots.hovered_style["opacity"] == 1
    assert set(np.asarray(dots.x)) <= set(np.asarray(loss.marks["train"].x))  # on the curve's own points
    assert (dots.tooltip.fields, dots.tooltip.labels) == (["x", "y"], ["step", "train"])
    assert len(loss.hover["val"].x) == len(run.history.val_loss.dropna())  # the evaluations' dots too
    cpu = d.resources.utilisation.hover["CPU % (of one core)"]
    assert cpu.tooltip.labels == ["time (s)", "CPU % (of one core)"]
    assert d.charts["lr"].rules.tooltip.fields == ["name"]  # the event rules keep their labels


def test_smoothing_draws_the_average_over_the_faint_raw_curve(tiny, monkeypatch):
    from lmwidget.views import charts
    from lmwidget.views.smoothing import ema

    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    assert d.smoothing.value == 0.6 and (d.smoothing.min, d.smoothing.max) == (0.0, 0.99)
    loss = d.charts["loss"]
    wait_for(lambda: len(loss.smoothed["train"].x) > 20, timeout=scaled(10))
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=5)
    raw, smooth = loss.marks["train"], loss.smoothed["train"]
    wait_for(lambda: raw.x.size and raw.x[-1] == run.step and len(smooth.x) == len(raw.x), timeout=5)
    np.testing.assert_allclose(smooth.y, ema(raw.y, 0.6), rtol=1e-5)
    assert raw.opacities == [0.3] and not raw.display_legend
    for chart in ("loss", "perplexity", "throughput"):  # smoothed; the LR and grad norm are not
        assert d.charts[chart].smoothed
    assert not d.charts["lr"].smoothed and not d.charts["grad_norm"].smoothed
    time.sleep(2 * UPDATE_INTERVAL)  # the redraw in flight at the pause ends
    calls = []  # once per redraw, never per step: while paused, nothing is smoothed again
    monkeypatch.setattr(charts, "ema", lambda y, w: calls.append(w) or ema(y, w))
    time.sleep(4 * UPDATE_INTERVAL)
    assert calls == []
    before = np.asarray(smooth.y).copy()
    d.smoothing.value = 0.95  # the drawn path changes at once, still paused
    wait_for(lambda: len(smooth.y) == len(before) and not np.allclose(smooth.y, before), timeout=5)
    np.testing.assert_allclose(smooth.y, ema(raw.y, 0.95), rtol=1e-5)
    wait_for(lambda: len(calls) >= 3, timeout=5)  # each smoothed chart's series (they redraw in turn)
    d.smoothing.value = 0.0  # raw only, at full strength
    wait_for(lambda: len(smooth.x) == 0 and raw.opacities == [1.0], timeout=5)
    run.stop()


def test_a_redraw_sends_each_series_once(tiny, sent):
    run = start(tiny, max_steps=300, eval_interval=100)
    run.wait(30)
    sent.clear()
    d = Dashboard(run)  # a second view: its first redraw draws the whole run
    wait_for(lambda: not d.updater.running, timeout=5)
    # the step charts (resources are sampled by the monitor thread, and a sample taken as the
    # run ended may land after the first redraw: they are drawn again, rightly)
    marks = [m for c in d.charts.values() for m in (*c.marks.values(), *c.extra.values(), *c.smoothed.values(),
                                                     *c.hover.values())]
    ids = {id(m) for m in marks}
    updates = [widget for widget, keys, _ in sent if keys == ("x", "y") and id(widget) in ids]
    assert sorted(map(id, updates)) == sorted(map(id, marks))  # each mark: x and y in one message
    assert all(len(m.x) > 0 for m in marks)


def test_the_status_is_sent_before_the_charts(tiny, sent):
    """A busy browser draws messages in order: the status a click waits for goes first."""
    run = start(tiny, max_steps=LONG)
    wait_for(lambda: run.step > 20, timeout=30)
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=5)
    sent.clear()
    d = Dashboard(run)  # its first redraw draws the status and the whole history
    wait_for(lambda: any(widget is d.status for widget, _, _ in sent), timeout=5)
    wait_for(lambda: d.charts["loss"].marks["train"].x.size > 0, timeout=5)
    charts = {id(m) for c in d.charts.values() for m in c.marks.values()}
    order = [("status" if widget is d.status else "chart") for widget, _, _ in list(sent)
             if widget is d.status or id(widget) in charts]
    run.stop()
    assert order[0] == "status", order[:5]
    assert "paused" in text_of(d.status)


def test_a_state_change_redraws_at_once(tiny, monkeypatch):
    """Paused from code (no click to wake the view), with redraws 30 s apart: the status
    still reads 'paused' at once, because the run wakes its views when its state changes."""
    import lmwidget.views.dashboard as dashboard

    monkeypatch.setattr(dashboard, "redraw_interval", lambda sent: 30.0)
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    wait_for(lambda: run.step > 5, timeout=30)
    time.sleep(1.5)  # past the first second at full rate: the updater is in its long wait now
    run.pause()
    try:
        wait_for(lambda: "paused" in text_of(d.status), timeout=5)
    finally:
        run.stop()


def test_traffic_is_bounded_on_long_runs():
    assert redraw_interval(0) == UPDATE_INTERVAL
    assert redraw_interval(10_000) == UPDATE_INTERVAL  # early in a run: 4 Hz
    full = 7 * MAX_POINTS * 2 * 4  # every series at its point cap, float32 x and y
    assert redraw_interval(full) == pytest.approx(full / BYTES_PER_SEC)
    assert full / redraw_interval(full) <= BYTES_PER_SEC


def test_refresh_reports_the_bytes_it_sent(tiny):
    run = start(tiny, max_steps=300, eval_interval=100)
    run.wait(30)
    d = Dashboard(run)
    wait_for(lambda: not d.updater.running, timeout=10)
    marks = [m for c in (*d.charts.values(), *d.resources.charts)
             for m in (*c.marks.values(), *c.smoothed.values(), *c.hover.values())]
    assert d._sent == sum(m.x.nbytes + m.y.nbytes for m in marks) + d.layers.bars.y.nbytes


def test_an_lr_set_from_code_outside_the_slider_range_is_kept(tiny):
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    run.set_lr(5.0)
    wait_for(lambda: d.lr_slider.value == 5.0, timeout=3)
    time.sleep(3 * UPDATE_INTERVAL)
    assert run.lr == 5.0 and d.lr_slider.max >= 1
    assert kinds(run) == ["pause", "lr"]  # the slider's echo asked for nothing


def test_the_dashboard_of_an_unstarted_run_waits_without_a_thread(tiny):
    from lmwidget.training.config import TrainConfig

    run = lmwidget.Run(TrainConfig.from_options(**tiny, max_steps=50))
    d = run.dashboard
    wait_for(lambda: not d.updater.running, timeout=5)  # no thread spinning for a run not started
    run.start()
    settle(d, run)
    assert d.step_label.value == "50"


# --------------------------------------------------------------------------- health panels

def test_resources_are_sampled_about_once_a_second_and_drawn_against_time(tiny):
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    wait_for(lambda: len(run.resources) >= 3)
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    samples = run.resources
    gaps = np.diff(samples.time)  # about one a second, never faster (a sample's own time may shift it)
    assert gaps.mean() >= 0.9 and gaps.min() >= 0.5, gaps
    cpu = d.resources.utilisation.marks["CPU % (of one core)"]
    rss = d.resources.memory.marks["process RSS"]
    wait_for(lambda: len(rss.x) == len(run.resources), timeout=3)
    np.testing.assert_allclose(rss.x, run.resources.time[:len(rss.x)], rtol=1e-5)
    assert (np.asarray(rss.y) > 10).all() and np.nanmax(cpu.y) > 1  # training burns CPU
    assert "GPU %" not in d.resources.utilisation.marks  # a CPU run has no empty GPU lines
    assert d.resources.gpu_label.value == "<small>no GPU: the model trains on cpu</small>"
    # the pause is marked on the time axis too, at the time it happened
    # (a rule is one step's events: the pause may share it with that step's evaluation,
    # "step 300: eval 2.41 · pause", and the rule stands at the step's first event)
    rules = d.resources.utilisation.rules
    paused_at = re.compile(r"(: | · )pause\b")
    wait_for(lambda: any(paused_at.search(label) for label in rules.labels), timeout=3)
    pause = run.events[run.events.kind == "pause"].iloc[0]
    first = run.events[run.events.step == pause.step].time.iloc[0]
    i = [k for k, label in enumerate(rules.labels) if paused_at.search(label)][0]
    assert rules.labels[i].startswith(f"step {pause.step}: ")
    assert np.asarray(rules.x)[i].tolist() == pytest.approx([first, first], rel=1e-5)


def test_resources_stop_being_sampled_once_the_run_ends(tiny):
    run = start(tiny, max_steps=20)
    d = run.dashboard
    settle(d, run)
    n = len(run.resources)
    time.sleep(1.5)
    assert len(run.resources) == n


def test_layer_bars_show_the_newest_per_layer_grad_norms(tiny):
    run = start(tiny, max_steps=60)
    d = run.dashboard
    settle(d, run)
    bars = d.layers.bars
    assert list(bars.x) == run.layers == ["wte", "wpe", "blocks.0", "ln_f"]
    latest = run.layer_grad_norms
    assert latest.name == 60 and d.layers.figure.title == "grad norm per layer (step 60)"
    np.testing.assert_allclose(bars.y, latest.to_numpy(), rtol=1e-6)
    # the groups add up to the total grad norm of that step
    assert np.sqrt((latest ** 2).sum()) == pytest.approx(run.history.grad_norm.iloc[-1], rel=1e-5)


def test_the_histogram_button_shows_the_chosen_layer(tiny):
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    wait_for(lambda: run.step > 3)
    assert d.histograms.plots.children == ()  # nothing to show before a click
    d.histograms.layer.value = "blocks.0"
    d.histograms.button.click()
    wait_for(lambda: len(d.histograms.plots.children) == 2, timeout=3)
    h = run.histograms[-1]
    weights, grads = d.histograms.bars
    assert d.histograms.figures[0].title == f"weights of blocks.0 (step {h['step']})"
    assert np.sum(weights.y) == sum(p.numel() for p in run._trainer.grad_norms.group_params("blocks.0"))
    assert np.sum(grads.y) == np.sum(weights.y)
    assert "this training step" in d.histograms.info.value
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    d.histograms.layer.value = "wte"
    d.histograms.button.click()  # paused: a fresh batch's gradient, at once
    wait_for(lambda: d.histograms.figures[1].title.startswith("gradients of wte"), timeout=3)
    assert "one fresh batch" in d.histograms.info.value


def test_a_diverging_run_warns_on_the_dashboard_and_marks_the_charts(tiny):
    run = start(tiny, max_steps=LONG, lr=1e4)
    d = run.dashboard
    wait_for(lambda: run.state == "paused", timeout=20)
    step, cause = run.anomaly
    wait_for(lambda: "Anomaly" in d.notice.value, timeout=3)
    assert f"Anomaly at step {step}: {cause}." in text_of(d.notice)
    assert "Lower the learning rate" in d.notice.value and "Resume" in d.notice.value
    wait_for(lambda: any(": anomaly" in label for label in d.charts["loss"].rules.labels), timeout=3)
    for chart in d.timelines:  # every chart over time carries the marker, its tooltip naming it
        wait_for(lambda chart=chart: any(f"step {step}: anomaly" in label and "the update was skipped" in label
                                         for label in chart.rules.labels), timeout=3)
    run.stop()


def test_after_resuming_the_notice_stops_shouting(tiny):
    from lmwidget.training.config import TrainConfig

    run = lmwidget.Run(TrainConfig.from_options(**tiny, max_steps=LONG))
    forward, calls = run._trainer.forward, []

    def nan_once(x, y):  # the 5th training step's loss is NaN, the rest are fine
        logits, loss = forward(x, y)
        calls.append(1)
        return logits, loss * float("nan") if len(calls) == 5 else loss

    run._trainer.forward = nan_once
    d = run.dashboard
    run.start()
    wait_for(lambda: run.state == "paused" and "Anomaly at step 5" in d.notice.value, timeout=10)
    run.resume()
    wait_for(lambda: run.step > 20, timeout=5)
    wait_for(lambda: "last anomaly at step 5: loss is nan and grad norm is nan" in d.notice.value, timeout=3)
    assert "Anomaly at" not in d.notice.value


def test_save_button_writes_a_checkpoint_and_says_where(tiny, tmp_path):
    run = start(tiny, max_steps=LONG, checkpoint_dir=tmp_path)
    d = run.dashboard
    wait_for(lambda: run.step > 3)
    d.save_button.click()  # while training: taken at the next step boundary
    wait_for(lambda: len(run.checkpoints) == 1)
    saved = run.checkpoints[0]
    assert saved["path"] == str(tmp_path / f"saved-{saved['step']:07d}.pt")
    wait_for(lambda: saved["path"] in d.save_status.value, timeout=5)
    assert f"saved step {saved['step']}" in text_of(d.save_status)
    run.stop()
    settle(d, run)
    d.save_button.click()  # ended: written at once, and the updater wakes up to say so
    assert run.checkpoints[-1]["step"] == run.step
    wait_for(lambda: f"saved step {run.step} " in text_of(d.save_status), timeout=5)
    assert (run.events.kind == "checkpoint").sum() == 2


def test_a_failed_save_is_shown_in_red(tiny, tmp_path):
    (tmp_path / "file").write_text("")
    run = start(tiny, max_steps=5, checkpoint_dir=tmp_path / "file" / "sub")
    d = run.dashboard
    settle(d, run)
    d.save_button.click()
    wait_for(lambda: "failed" in d.save_status.value, timeout=5)
    assert palette.RED in d.save_status.value and "saved save at step 5 failed" in text_of(d.save_status)


def test_a_resumed_run_draws_its_earlier_history(tiny, tmp_path):
    first = start(tiny, max_steps=40)
    first.wait(60)
    resumed = lmwidget.train(resume=first.save(tmp_path / "a.pt"), max_steps=60, display=False)
    d = resumed.dashboard
    settle(d, resumed)
    x = d.charts["loss"].marks["train"].x
    assert x[0] == 1 and x[-1] == 60
    assert any(label.startswith("step 40:") and "restore (resumed from" in label
               for label in d.charts["loss"].rules.labels)


class FakePublisher:
    """ipykernel's display publisher, as far as the dashboard uses it."""

    def __init__(self):
        self.parent_header = {"msg_id": "cell-1"}
        self.published = []
        self._thread_parent = None

    def set_thread_parent(self, parent):
        self._thread_parent = parent
        return "token"

    def reset_thread_parent(self, token):
        self._thread_parent = None

    def publish(self, data, metadata=None, transient=None, update=False):
        self.published.append((data, transient, update, self._thread_parent))


def test_an_ended_run_leaves_its_summary_in_the_cell(tiny, monkeypatch):
    import IPython

    pub = FakePublisher()
    shell = type("Shell", (), {"display_pub": pub})()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append((obj, kw)))
    run = start(tiny, max_steps=30)
    d = run.dashboard
    d.show()
    (bundle, kw), = shown
    display_id = kw["display_id"]
    assert kw["raw"] and "application/vnd.jupyter.widget-view+json" in bundle
    assert "text/html" not in bundle  # while it trains, the widget only
    settle(d, run)
    (data, transient, update, parent), = pub.published  # once, when the run ended
    assert update and transient == {"display_id": display_id} and parent == {"msg_id": "cell-1"}
    assert data["application/vnd.jupyter.widget-view+json"] == bundle["application/vnd.jupyter.widget-view+json"]
    assert "finished at step 30/30" in data["text/html"] and data["text/html"].count("<svg") == 5
    assert data["text/plain"].startswith(f"lmwidget dashboard of run {run.id} (finished")
    d.kick()
    wait_for(lambda: not d.updater.running)
    assert len(pub.published) == 1  # nothing changed: not sent again
    pub.parent_header = {"msg_id": "cell-2"}
    d.show()  # shown again in another cell after the end: that cell gets it too
    wait_for(lambda: len(pub.published) == 2, timeout=5)
    data, transient, _, parent = pub.published[1]
    assert transient == {"display_id": shown[1][1]["display_id"]} and parent == {"msg_id": "cell-2"}


def test_a_page_that_falls_behind_holds_the_charts_but_never_the_status(tiny, sent):
    """Flow control: once a front end acknowledges redraws (its jsdlink copies the redraw
    number back), the charts wait for it to finish the last one; the status does not."""
    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    marks = {id(m) for c in d.charts.values() for m in c.marks.values()}
    wait_for(lambda: d.pacer.drawn.value >= 2)
    d.pacer.acked.value = d.pacer.drawn.value  # the page has handled every redraw so far
    wait_for(lambda: d.pacer.drawn.value > d.pacer.acked.value)  # a new redraw went out, unacknowledged
    before = len(sent)
    time.sleep(6 * UPDATE_INTERVAL)
    held = sent[before:]
    assert [widget for widget, _, _ in held if id(widget) in marks] == [], "charts sent to a busy page"
    assert any(widget is d.step_label for widget, _, _ in held), "the status must go on"
    run.pause()  # a click's effect shows at once, even while the charts wait
    wait_for(lambda: "paused" in d.status.value, timeout=1)
    d.pacer.acked.value = d.pacer.drawn.value  # the page caught up: the charts follow
    wait_for(lambda: any(id(widget) in marks for widget, _, _ in sent[before + len(held):]), timeout=5)
    assert len(d.pacer.page_times) == 2


def test_charts_go_on_by_time_when_acknowledgements_cannot_arrive(tiny, monkeypatch):
    """Comms over the kernel's main thread are read only between cells: while a cell runs,
    the charts do not wait for acknowledgements that cannot come."""
    import lmwidget.views.pacing as pacing

    run = start(tiny, max_steps=LONG)
    d = run.dashboard
    wait_for(lambda: d.pacer.drawn.value >= 2)
    done = threading.Event()

    def acknowledge():  # as the kernel's main thread handles a comm message
        d.pacer.acked.value = d.pacer.drawn.value
        done.set()

    assert threading.current_thread() is threading.main_thread()
    acknowledge()
    assert d.pacer._on_main
    monkeypatch.setattr(pacing, "cell_running", lambda: True)
    drawn = d.pacer.drawn.value
    wait_for(lambda: d.pacer.drawn.value >= drawn + 3, timeout=5)  # no acknowledgement, still drawing
    monkeypatch.setattr(pacing, "cell_running", lambda: False)
    time.sleep(4 * UPDATE_INTERVAL)
    held = d.pacer.drawn.value
    time.sleep(4 * UPDATE_INTERVAL)
    assert d.pacer.drawn.value - held <= 1  # between cells the page's acknowledgement is awaited
