"""The static summary: valid SVG charts for any data, and a headline of the run."""

import re
import xml.etree.ElementTree as ET

import numpy as np

import lmwidget
from lmwidget.views.summary import MAX_POINTS, summary_html, svg_chart

from tests.conftest import TINY

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str):
    return ET.fromstring(svg)


def polyline_points(root) -> list:
    lines = root.findall(f"{SVG}polyline")
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()] for line in lines]


def test_chart_draws_finite_points_inside_the_plot():
    x = np.arange(1, 101)
    y = np.linspace(3, 1, 100)
    y[10] = np.nan
    y[20] = np.inf
    root = parse(svg_chart("loss", [("train", x, y, "#000", False)]))
    (points,) = polyline_points(root)
    assert len(points) == 98
    xs, ys = zip(*points)
    assert xs == tuple(sorted(xs)) and ys[0] < ys[-1]  # a falling loss is drawn downwards in SVG
    assert 0 <= min(xs) and max(xs) <= int(root.get("width"))
    assert 0 <= min(ys) and max(ys) <= int(root.get("height"))


def test_log_chart_leaves_out_non_positive_values_and_labels_decades():
    x = np.arange(5)
    root = parse(svg_chart("lr", [("lr", x, [1e-4, 1e-3, 0.0, -1.0, 1e-1], "#000", False)], log=True))
    (points,) = polyline_points(root)
    assert len(points) == 3
    labels = {t.text for t in root.iter(f"{SVG}text")}
    assert {"0.001", "0.01", "0.1"} <= labels


def test_ticks_are_round_readable_and_the_step_axis_starts_at_0():
    x = np.arange(1, 402)
    labels = lambda root: [t.text for t in root.iter(f"{SVG}text")]  # noqa: E731
    throughput = labels(parse(svg_chart("tokens / s", [("t", x, np.linspace(513, 39_800, 401), "#000", False)],
                                        zero=True)))
    assert {"0", "10,000", "20,000", "30,000", "40,000"} <= set(throughput)  # not 4e+04
    assert {"0", "100", "200", "300", "400"} <= set(throughput)  # steps from 0, never negative
    norms = labels(parse(svg_chart("grad norm", [("g", x, np.linspace(0.6, 0.8, 401), "#000", False)], log=True)))
    assert {"0.6", "0.7", "0.8"} <= set(norms)  # within a decade: more than one tick
    assert not any(re.fullmatch(r"-?\d*\.\d{5,}", t) for t in throughput + norms)


def test_the_summary_smooths_as_the_dashboard_does():
    from lmwidget.views.smoothing import ema

    x = np.arange(1, 201)
    y = 3 + np.sin(x)  # noisy
    root = parse(svg_chart("loss", [("train", x, y, "#000", False)], smoothing=0.9))
    raw, smooth = polyline_points(root)
    assert [p.get("class") for p in root.findall(f"{SVG}polyline")] == ["lmwidget-summary-raw", "lmwidget-summary-smoothed"]
    assert root.findall(f"{SVG}polyline")[0].get("stroke-opacity") == "0.3"  # faint, its spikes visible
    spread = lambda pts: np.ptp([p[1] for p in pts[50:]])  # noqa: E731
    assert spread(smooth) < spread(raw) / 3
    both = [("train", x, y, "#000", False), ("average", x, ema(y, 0.9), "#000", False)]
    expected = polyline_points(parse(svg_chart("loss", both)))[1]
    np.testing.assert_allclose(np.array(expected), np.array(smooth), atol=0.11)  # the same average
    assert len(polyline_points(parse(svg_chart("loss", [("train", x, y, "#000", False)])))) == 1  # 0: raw only


def test_long_series_are_downsampled_keeping_spikes():
    x = np.arange(100_000)
    y = np.ones(100_000)
    y[77_777] = 50.0
    root = parse(svg_chart("grad norm", [("g", x, y, "#000", False)]))
    (points,) = polyline_points(root)
    assert len(points) <= MAX_POINTS
    ys = sorted(p[1] for p in points)
    assert ys[0] < 60 and ys[-1] > 160  # the spike near the top (50 of 0..60), the flat line at ~168


def test_charts_with_nothing_to_draw():
    for y in ([], [np.nan, np.nan], [5.0, 5.0]):
        root = parse(svg_chart("t", [("s", np.arange(len(y)), y, "#000", False)]))
        assert root.tag == f"{SVG}svg"
    assert "no data" in svg_chart("t", [("s", [], [], "#000", False)])


def test_events_are_rules_with_a_tooltip():
    events = [(5, 0.1, "lr", 0.01, "by hand"), (7, 0.2, "pause", None, "")]
    root = parse(svg_chart("loss", [("train", np.arange(10), np.arange(10.0), "#000", False)], events=events))
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "step 5: lr 0.01 (by hand)" in titles and "step 7: pause" in titles


def test_summary_of_a_run():
    run = lmwidget.train(display=False, max_steps=40, **{**TINY, "eval_interval": 20})
    run.wait(60)
    page = summary_html(run)
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 5  # loss, bits per byte, grad norm, LR, throughput
    assert "lmwidget-summary-bpb" in page
    for svg in svgs:
        parse(svg)
    assert "finished at step 40/40" in page and "best" in page and "tokens/s" in page
