"""Axes: round ticks, domains from 0, a constant inside the chart."""

import math

import numpy as np
import pytest

from lmwidget.views.axes import linear_ticks, log_ticks, nice_step, x_domain, y_domain


@pytest.mark.parametrize("span, step", [(4.7, 1), (401, 100), (0.03, 0.01), (39_800, 10_000), (7, 2)])
def test_steps_are_1_2_or_5_times_a_power_of_ten(span, step):
    assert nice_step(span, 5) == pytest.approx(step)


@pytest.mark.parametrize("lo, hi", [(1.33, 4.67), (0.0, 401.0), (513.0, 39_800.0), (-0.8, 2.3), (0.0012, 0.0031)])
def test_linear_ticks_are_round_and_few(lo, hi):
    low, high, ticks = y_domain(lo, hi)
    assert low <= lo and high >= hi and 2 <= len(ticks) <= 6
    step = np.diff(ticks)
    assert np.allclose(step, step[0]) and nice_step(step[0] * 4, 4) == pytest.approx(step[0])
    assert all(math.isclose(t / step[0], round(t / step[0]), abs_tol=1e-9) for t in ticks)  # on the grid


def test_steps_and_time_start_at_0_with_integer_steps():
    lo, hi, ticks = x_domain(401)
    assert lo == 0.0 and list(ticks) == [0, 100, 200, 300, 400]
    assert list(x_domain(3)[2]) == [0, 1, 2, 3]  # never half a step
    assert x_domain(0)[1] > 1.0  # an empty run still has a width
    assert list(x_domain(2.6, integer=False)[2]) == [0, 1, 2]  # seconds


def test_quantities_that_cannot_be_negative_start_at_0_and_small_changes_stay_small():
    lo, hi, ticks = y_domain(396.0, 407.0, zero=True)  # memory in MB
    assert lo == 0 and hi >= 407 and 10 / (hi - lo) < 0.03  # 10 MB is a small change
    assert y_domain(0.02, 0.9, zero=True)[0] == 0  # per-layer norms: never a negative tick
    assert y_domain(0.0, 3.2, zero=True)[2][0] == 0


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("value", [3e-3, 1.0, 250.0])
def test_a_constant_sits_inside_the_chart(value, log):
    lo, hi, ticks = y_domain(value, value, log=log)
    middle = (math.log10(lo) + math.log10(hi)) / 2 if log else (lo + hi) / 2
    assert lo < value < hi
    assert (math.log10(value) if log else value) == pytest.approx(middle, rel=0.05)
    assert len(ticks) >= 2


@pytest.mark.parametrize("lo, hi, expected", [
    (5, 100, [5, 10, 20, 50, 100]),              # perplexity: not 100/90/80/70 crowded together
    (0.6, 0.8, [0.6, 0.7, 0.8]),                 # grad norm within a decade
    (1e-6, 1, [1e-6, 1e-4, 1e-2, 1]),            # six decades: every other one
    (1e-4, 3e-3, [1e-4, 2e-4, 5e-4, 1e-3, 2e-3]),
])
def test_log_ticks_are_round_and_never_crowd(lo, hi, expected):
    assert log_ticks(lo, hi) == pytest.approx(expected)


def test_a_log_axis_within_a_few_percent_still_has_round_ticks():
    ticks = log_ticks(0.61, 0.64)  # 1..9 x 10^k has one value there at most: a round grid
    assert ticks == pytest.approx([0.61, 0.62, 0.63, 0.64])
    assert linear_ticks(0, 7, 3).tolist() == [0, 5]  # about 3 parts or fewer


@pytest.mark.parametrize("last", [1, 3, 60, 400, 401, 600, 39_800])
def test_the_step_axis_ends_past_the_last_step_and_its_last_tick(last):
    """The last tick's label and a dot at the last step stay inside the chart: the axis
    runs a few percent past both, whatever the run's length."""
    lo, hi, ticks = x_domain(last)
    assert ticks[-1] <= last < hi and (hi - last) / hi >= 0.03 and (hi - ticks[-1]) / hi >= 0.03


def test_a_log_axis_with_a_span_stops_a_few_decades_below_its_top():
    """A cosine schedule ends near 0: the LR axis does not run down to 1e-7 with it."""
    lo, hi, ticks = y_domain(1e-7, 3e-3, log=True, span=1e3)
    assert 1.5e-6 < lo < 3e-6 and hi > 3e-3 and ticks[0] >= lo and len(ticks) >= 2  # 3 decades, a margin
    assert y_domain(1e-7, 3e-3, log=True)[0] < 1e-7  # without a span: all of it
    assert y_domain(1e-4, 3e-3, log=True, span=1e3)[0] < 1e-4  # inside the span: all of it


@pytest.mark.parametrize("lo, hi", [(2.36e-4, 1.42e-2), (0.3, 2.0), (1e-6, 1.0), (5.0, 60.0)])
def test_lines_at_the_ends_of_a_log_axis_stay_off_its_frame(lo, hi):
    """Two runs' constant LRs (or a grad norm's spike) are not drawn on the chart's edges:
    at least 5 % of the axis' height away from them."""
    low, high, ticks = y_domain(lo, hi, log=True)
    height = math.log10(high / low)
    assert math.log10(lo / low) >= 0.05 * height and math.log10(high / hi) >= 0.05 * height
    assert 2 <= len(ticks) <= 6


@pytest.mark.parametrize("top, axis_top", [(98.0, 100), (100.0, 100), (103.0, 150), (40.0, 40), (350.0, 400)])
def test_a_percentage_stays_within_100_while_its_data_do(top, axis_top):
    lo, hi, ticks = y_domain(0.5, top, zero=True, limit=100.0)
    assert (lo, hi) == (0, axis_top) and ticks[0] == 0 and ticks[-1] == hi and len(ticks) >= 3
