"""No empty chart: a dashboard, compare and the static summary show a chart for what a source measures."""

import re

import numpy as np
import pytest

import lmwidget
from lmwidget.core.schema import CHARTS
from lmwidget.views.panels import LayersPanel, ResourcesPanel

from tests.conftest import TINY
from tests.harness.frameworks import own_loop


def own(steps=40, **options):
    """Your own loop, ended: it has a loss, a grad norm, an LR and a speed, but no bits per
    byte (its data's bytes per token are not known to lmwidget)."""
    model, optimizer, scheduler, train = own_loop(steps, lr_scheduler=True)
    run = lmwidget.steer(model, optimizer, scheduler, display=False, tokens_per_step=8 * 32, **options)
    train.run = run
    d = run.dashboard
    train()
    run.end()
    d.settle()
    return run, d


def finished(**options):
    run = lmwidget.train(display=False, **{**TINY, "eval_interval": 20, "max_steps": 40, **options})
    run.wait(60)
    run.dashboard.settle()
    return run


def test_a_source_without_bits_per_byte_gets_no_bits_per_byte_chart():
    run, d = own()
    assert not np.isfinite(run.history.bpb).any()
    shown = {fig for fig in d.grid.children}
    assert d.charts["bpb"].figure not in shown  # before: an empty chart with a 0-1 axis
    for key in ("loss", "perplexity", "grad_norm", "lr", "throughput"):
        assert d.charts[key].figure in shown and d.charts[key].has_data, key
    assert "lmwidget-summary-bpb" not in lmwidget.views.summary.summary_html(run)
    assert "lmwidget-summary-loss" in lmwidget.views.summary.summary_html(run)


def test_before_the_first_step_every_chart_waits_in_the_grid():
    """Drawn before any data, as in a cell run before the loop starts: every chart is laid
    out; the steps then show which metrics the source measures."""
    model, optimizer, scheduler, train = own_loop(20)
    run = lmwidget.steer(model, optimizer, display=False, tokens_per_step=8 * 32)
    d = run.dashboard
    d.refresh()
    assert {d.charts[k].figure for k in CHARTS} <= set(d.grid.children)
    train.run = run
    train()
    run.end()
    d.settle()
    assert d.charts["bpb"].figure not in d.grid.children and d.charts["throughput"].figure in d.grid.children


def test_bits_per_byte_join_the_dashboard_with_their_first_value():
    run = finished()
    d = run.dashboard
    assert np.isfinite(run.history.bpb).all()
    figures = list(d.grid.children)
    assert d.charts["bpb"].figure in figures and d.charts["bpb"].has_data
    order = [figures.index(d.charts[k].figure) for k in CHARTS]  # in the schema's order, before the panels
    assert order == sorted(order) and max(order) < figures.index(d.layers.figure)
    assert "lmwidget-summary-bpb" in lmwidget.views.summary.summary_html(run)


def test_compare_of_runs_without_bits_per_byte_shows_loss_speed_and_no_empty_chart():
    """Your own loop next to lmwidget's: their tokenizers differ (yours is not named), but
    only one has bits per byte, so compare shows losses, says why, and no empty column."""
    mine, _ = own()
    theirs = finished()
    view = lmwidget.compare(mine, theirs, display=False)
    view.refresh()
    assert not view.per_byte and view.metrics[0].name == "loss"
    assert "tokenizers differ" in view.note and mine.name in view.note
    table = view.table_html()
    cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", table)
    assert "final loss" in cells and "tokens/s" in cells and "nan" not in table
    assert f"{mine.history.loss.iloc[-50:].mean():.4f}" in cells
    assert "–" in cells  # your loop did not evaluate: a dash, not nan
    for name, chart in view.charts.items():
        assert chart.has_data == (chart.figure in view.grid.children), name
    assert view.charts["val_loss"].figure in view.grid.children  # lmwidget's run evaluated
    # the runs are named once, above the charts: no legend box sits on a curve
    assert not any(m.display_legend for c in view.charts.values() for m in c.marks.values())
    assert all(label in view.key.value for label in view.legend)


def test_compare_shows_no_validation_columns_or_chart_when_no_run_evaluated():
    a, _ = own()
    b, _ = own(steps=30)
    view = lmwidget.compare(a, b, display=False)
    view.refresh()
    table = view.table_html()
    assert "val loss" not in table and "final loss" in table and "tokens/s" in table
    assert view.charts["val_loss"].figure not in view.grid.children
    assert view.charts["loss"].figure in view.grid.children and view.note == ""


def test_a_cosine_ending_near_0_does_not_squash_the_lr_axis():
    _, d = own(steps=5)
    chart = d.charts["lr"]
    chart.extend("lr", np.arange(1, 101), 3e-3 * (1 + np.cos(np.linspace(0, np.pi, 100))) / 2)
    chart.draw(["lr"])
    assert chart.y_scale.min >= 3e-3 / 1e3 / 2  # three decades and a margin, not down to 1e-7
    assert chart.y_axis.tick_values[0] >= chart.y_scale.min and len(chart.y_axis.tick_values) >= 2


def test_utilisation_near_100_percent_stops_at_100_and_no_toolbar_covers_a_title():
    panel = ResourcesPanel(gpu=False)
    chart = panel.utilisation
    chart.extend("CPU % (of one core)", np.arange(10.0), np.linspace(90, 99.5, 10))
    chart.draw(["CPU % (of one core)"])
    assert (chart.y_scale.min, chart.y_scale.max) == (0, 100) and max(chart.y_axis.tick_values) == 100
    assert not chart.figure.display_toolbar and not LayersPanel(["a"]).figure.display_toolbar


@pytest.mark.parametrize("layers", [["wte", "transformer.ln_f"], ["transformer.h.11.attn.c_attn"]])
def test_the_per_layer_chart_leaves_room_for_its_longest_name(layers):
    panel = LayersPanel(layers)
    longest = max(len(n) for n in layers)
    assert panel.figure.fig_margin["left"] >= 8 * longest  # an 11 px label, at most 8 px a character
