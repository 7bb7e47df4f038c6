"""Tests for lmwidget.views.downsample: min/max downsampling of growing series."""

from __future__ import annotations

import numpy as np
import pytest

from lmwidget.views.downsample import MinMaxSeries


def random_walk(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.arange(n, dtype=np.float64)
    y = np.cumsum(rng.standard_normal(n))
    return x, y


def _as_pairs(px, py):
    return set(zip(px.tolist(), py.tolist()))


def _assert_well_formed(px, py, max_points=2000):
    assert len(px) == len(py) <= max_points
    for a in (px, py):
        assert isinstance(a, np.ndarray)
        assert a.dtype == np.float32
        assert a.flags["C_CONTIGUOUS"]
        assert a.ndim == 1
    assert np.all(np.diff(px) > 0), "x must be strictly increasing"


@pytest.mark.parametrize("n", [10, 2_000, 100_000, 1_000_000])
def test_minmax_points_are_bounded_sorted_float32_and_keep_the_extremes(n):
    x, y = random_walk(n, seed=n)
    spike_at = n // 3 + 1
    y[spike_at] = y.max() + 1000.0  # a single spike must survive downsampling
    s = MinMaxSeries()
    s.extend(x, y)
    px, py = s.points()
    _assert_well_formed(px, py)
    if n <= 2000 // 2:
        assert len(px) == n  # few points: all of them
    else:
        assert len(px) >= 2000 // 4  # not needlessly coarse
    pairs = _as_pairs(px, py)
    lo, hi = int(np.argmin(y)), int(np.argmax(y))
    assert hi == spike_at
    assert (np.float32(x[lo]).item(), np.float32(y[lo]).item()) in pairs
    assert (np.float32(x[hi]).item(), np.float32(y[hi]).item()) in pairs
    assert py.min() == np.float32(y.min()) and py.max() == np.float32(y.max())
    # every output point is an input point
    idx = px.astype(np.int64)
    np.testing.assert_array_equal(py, y[idx].astype(np.float32))
    assert px[0] >= 0 and px[-1] <= n - 1


def test_minmax_keeps_a_negative_spike_and_the_endpoints_of_the_range_covered():
    x, y = random_walk(300_000, seed=7)
    y[123_457] = y.min() - 500.0
    s = MinMaxSeries()
    s.extend(x, y)
    px, py = s.points()
    assert (123_457.0, np.float32(y[123_457]).item()) in _as_pairs(px, py)
    # the output spans the whole series, not just its beginning
    assert px[0] < 300_000 / 1000 and px[-1] > 300_000 - 300_000 / 1000


@pytest.mark.parametrize("n", [2_000, 100_000, 1_000_000])
def test_minmax_one_extend_equals_many_small_chunks(n):
    x, y = random_walk(n, seed=3)
    whole = MinMaxSeries()
    whole.extend(x, y)
    chunked = MinMaxSeries()
    rng = np.random.default_rng(11)
    i = 0
    while i < n:
        k = int(rng.integers(1, 700 if n <= 100_000 else 5000))
        chunked.extend(x[i:i + k], y[i:i + k])
        i += k
    (ax, ay), (bx, by) = whole.points(), chunked.points()
    np.testing.assert_array_equal(ax, bx)
    np.testing.assert_array_equal(ay, by)


def test_minmax_equal_chunks_match_one_extend_and_points_can_be_read_midway():
    x, y = random_walk(50_000, seed=5)
    whole = MinMaxSeries()
    whole.extend(x, y)
    chunked = MinMaxSeries()
    for i in range(0, 50_000, 1000):
        chunked.extend(x[i:i + 1000], y[i:i + 1000])
        px, py = chunked.points()  # reading in between changes nothing
        _assert_well_formed(px, py)
        assert px[-1] <= i + 999
    for a, b in zip(whole.points(), chunked.points()):
        np.testing.assert_array_equal(a, b)


def test_minmax_nan_values_do_not_break_it():
    n = 200_000
    x, y = random_walk(n, seed=9)
    rng = np.random.default_rng(1)
    y[rng.choice(n, size=n // 20, replace=False)] = np.nan  # scattered NaN
    y[50_000:60_000] = np.nan  # a long stretch of NaN (e.g. diverged)
    s = MinMaxSeries()
    step = 4_321
    for i in range(0, n, step):
        s.extend(x[i:i + step], y[i:i + step])
    px, py = s.points()
    _assert_well_formed(px, py)
    src = y[px.astype(np.int64)]
    finite = np.isfinite(src)
    assert np.isfinite(py[finite]).all()  # finite where the input is finite
    np.testing.assert_array_equal(py[finite], src[finite].astype(np.float32))
    assert np.isnan(py[~finite]).all()
    # NaN only stands for stretches that are all NaN: most points are finite
    assert finite.mean() > 0.9
    pairs = _as_pairs(px[finite], py[finite])
    lo, hi = int(np.nanargmin(y)), int(np.nanargmax(y))
    assert (float(lo), np.float32(y[lo]).item()) in pairs
    assert (float(hi), np.float32(y[hi]).item()) in pairs


def test_minmax_small_series_with_nan_keeps_finite_points():
    s = MinMaxSeries()
    s.extend([0, 1, 2, 3], [1.0, np.nan, 3.0, np.nan])
    px, py = s.points()
    _assert_well_formed(px, py)
    assert px.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert py[0] == 1.0 and py[2] == 3.0
    assert np.isnan(py[1]) and np.isnan(py[3])


def test_minmax_empty_series_returns_two_empty_arrays():
    s = MinMaxSeries()
    px, py = s.points()
    assert isinstance(px, np.ndarray) and isinstance(py, np.ndarray)
    assert px.shape == (0,) and py.shape == (0,)
    s.extend([], [])
    px, py = s.points()
    assert px.shape == (0,) and py.shape == (0,)
    s.extend([5.0], [2.5])
    px, py = s.points()
    assert px.tolist() == [5.0] and py.tolist() == [2.5]


@pytest.mark.parametrize("max_points", [100, 500])
def test_minmax_respects_a_smaller_budget(max_points):
    x, y = random_walk(123_456, seed=2)
    s = MinMaxSeries(max_points=max_points)
    for i in range(0, len(x), 10_000):
        s.extend(x[i:i + 10_000], y[i:i + 10_000])
    px, py = s.points()
    _assert_well_formed(px, py, max_points=max_points)
    assert len(px) >= max_points // 4
    assert py.max() == np.float32(y.max()) and py.min() == np.float32(y.min())


def test_diverged_values_become_gaps_without_warnings():
    import warnings

    series = MinMaxSeries()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        series.extend([1, 2, 3, 4], [2.5, np.inf, 1e39, 2.0])
        x, y = series.points()
    assert x.tolist() == [1, 2, 3, 4]
    assert y[0] == 2.5 and np.isnan(y[1]) and np.isnan(y[2]) and y[3] == 2.0
