"""Tests for lmwidget.history: the columnar metrics store, events and min/max downsampling."""

from __future__ import annotations

import math
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from lmwidget.history import COLUMNS, EVENT_COLUMNS, History, MinMaxSeries

EXPECTED_COLUMNS = ("step", "tokens", "loss", "perplexity", "grad_norm", "lr", "tokens_per_sec",
                    "step_time", "val_loss", "val_perplexity")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))


def row(i: int, val=None) -> dict:
    """The values of step i, with device-tensor-like loss / grad norm as the loop pushes."""
    return dict(step=i + 1, tokens=(i + 1) * 512, lr=1e-3 / (i + 1), tokens_per_sec=1000.0 + i,
                step_time=0.01 + i * 1e-5, loss=torch.tensor(4.0 - i * 1e-3),
                grad_norm=torch.tensor(0.5 + i * 1e-4), val_loss=val)


def push(history: History, i: int, val=None) -> int:
    return history.push(**row(i, val))


# --------------------------------------------------------------------------- History

def test_push_drain_frame_columns_and_values():
    h = History()
    val_at = {4: 3.5, 9: 3.25}
    for i in range(10):
        pending = push(h, i, torch.tensor(val_at[i]) if i in val_at else None)
        assert pending == i + 1  # nothing drained yet
    assert len(h) == 0  # pushed rows are pending until drained
    assert h.drain() == 10
    assert len(h) == 10
    df = h.frame()
    assert isinstance(df, pd.DataFrame)
    assert tuple(df.columns) == EXPECTED_COLUMNS == COLUMNS
    assert len(df) == 10
    expected = pd.DataFrame([row(i) for i in range(10)])
    assert df["step"].tolist() == list(range(1, 11))
    assert df["tokens"].tolist() == [(i + 1) * 512 for i in range(10)]
    np.testing.assert_allclose(df["lr"], expected["lr"].astype(float))
    np.testing.assert_allclose(df["tokens_per_sec"], expected["tokens_per_sec"].astype(float))
    np.testing.assert_allclose(df["step_time"], expected["step_time"].astype(float))
    np.testing.assert_allclose(df["loss"], [4.0 - i * 1e-3 for i in range(10)], rtol=1e-6)
    np.testing.assert_allclose(df["grad_norm"], [0.5 + i * 1e-4 for i in range(10)], rtol=1e-6)
    np.testing.assert_allclose(df["perplexity"], np.exp(df["loss"]), rtol=1e-12)
    # validation columns: NaN except where a val tensor was pushed
    for i in range(10):
        if i in val_at:
            assert df["val_loss"][i] == pytest.approx(val_at[i])
            assert df["val_perplexity"][i] == pytest.approx(math.exp(val_at[i]))
        else:
            assert math.isnan(df["val_loss"][i]) and math.isnan(df["val_perplexity"][i])
    assert df["val_loss"].notna().sum() == len(val_at)


def test_frame_drains_pending_rows_itself():
    h = History()
    for i in range(3):
        push(h, i)
    df = h.frame()
    assert df["step"].tolist() == [1, 2, 3]
    assert h.drain() == 0
    push(h, 3)
    assert h.frame()["step"].tolist() == [1, 2, 3, 4]


def test_empty_history_has_an_empty_frame_with_all_columns():
    df = History().frame()
    assert tuple(df.columns) == EXPECTED_COLUMNS
    assert len(df) == 0


def test_drain_with_nothing_pending_returns_zero():
    h = History()
    assert h.drain() == 0
    push(h, 0)
    push(h, 1)
    assert h.drain() == 2
    assert h.drain() == 0
    assert len(h) == 2


def test_growing_past_the_initial_capacity_keeps_every_value_in_order():
    h = History(capacity=4)
    n = 1000
    for i in range(n):
        push(h, i, torch.tensor(i / 256) if i % 7 == 0 else None)
        if i % 13 == 0:  # drains of assorted sizes, as the dashboard does
            h.drain()
    df = h.frame()
    assert len(df) == n == len(h)
    assert df["step"].tolist() == list(range(1, n + 1))
    assert df["tokens"].tolist() == [(i + 1) * 512 for i in range(n)]
    np.testing.assert_allclose(df["loss"], [4.0 - i * 1e-3 for i in range(n)], rtol=1e-6)
    np.testing.assert_allclose(df["grad_norm"], [0.5 + i * 1e-4 for i in range(n)], rtol=1e-6)
    np.testing.assert_allclose(df["lr"], [1e-3 / (i + 1) for i in range(n)])
    val = df["val_loss"].to_numpy()
    expected_val = np.array([i / 256 if i % 7 == 0 else np.nan for i in range(n)])
    np.testing.assert_array_equal(val, expected_val)


def test_since_and_last():
    h = History()
    assert math.isnan(h.last("loss"))
    assert h.last("step", default=-1) == -1
    for i in range(5):
        push(h, i)
    h.drain()
    assert h.last("step") == 5
    tail = h.since(3)
    assert tail["step"].tolist() == [4, 5]
    tail["step"][:] = 0  # a copy: the store is untouched
    assert h.since(0)["step"].tolist() == [1, 2, 3, 4, 5]


def test_nbytes_per_step_is_small_and_real():
    h = History()
    nbytes = h.nbytes_per_step()
    assert 0 < nbytes <= 128
    cols = h.since(0)
    assert nbytes == sum(c.dtype.itemsize for c in cols.values())


def test_events_frame():
    h = History()
    empty = h.events_frame()
    assert tuple(empty.columns) == ("step", "kind", "value") == EVENT_COLUMNS
    assert len(empty) == 0
    h.record_event(3, "pause")
    h.record_event(3, "lr", 0.01)
    h.record_event(7, "resume")
    df = h.events_frame()
    assert tuple(df.columns) == ("step", "kind", "value")
    assert df["step"].tolist() == [3, 3, 7]
    assert df["kind"].tolist() == ["pause", "lr", "resume"]
    assert df["value"][1] == 0.01
    assert df["value"][0] is None or pd.isna(df["value"][0])
    assert [e[1] for e in h.events_since(1)] == ["lr", "resume"]


def test_concurrent_push_and_drain_lose_no_row_and_keep_order():
    h = History(capacity=16)
    n = 20_000
    losses = [torch.tensor(i / 1000) for i in range(n)]
    norms = [torch.tensor(-i / 1000) for i in range(n)]
    done = threading.Event()
    some_drained = threading.Event()
    errors = []
    drained = []

    def pusher():
        try:
            for i in range(n):
                if i == n // 2:  # make sure the drainer really runs while rows are pushed
                    some_drained.wait(10)
                h.push(i, i * 2, 0.1, 1.0, 0.01, losses[i], norms[i],
                       losses[i] if i % 100 == 0 else None)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    def drainer():
        try:
            while not done.is_set():
                drained.append(h.drain())
                if drained[-1]:
                    some_drained.set()
            drained.append(h.drain())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=pusher), threading.Thread(target=drainer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "push/drain deadlocked"
    assert not errors, errors
    assert sum(drained) == n
    assert some_drained.is_set()  # the drainer really ran concurrently with the pusher
    assert sum(1 for k in drained if k) >= 2
    df = h.frame()
    assert len(df) == n
    np.testing.assert_array_equal(df["step"].to_numpy(), np.arange(n))
    np.testing.assert_array_equal(df["tokens"].to_numpy(), 2 * np.arange(n))
    np.testing.assert_array_equal(df["loss"].to_numpy(), torch.stack(losses).double().numpy())
    np.testing.assert_array_equal(df["grad_norm"].to_numpy(), torch.stack(norms).double().numpy())
    val = df["val_loss"].to_numpy()
    assert np.isnan(val[np.arange(n) % 100 != 0]).all()
    np.testing.assert_array_equal(val[::100], torch.stack(losses[::100]).double().numpy())


# --------------------------------------------------------------------------- MinMaxSeries

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

    from lmwidget.history import MinMaxSeries

    series = MinMaxSeries()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        series.extend([1, 2, 3, 4], [2.5, np.inf, 1e39, 2.0])
        x, y = series.points()
    assert x.tolist() == [1, 2, 3, 4]
    assert y[0] == 2.5 and np.isnan(y[1]) and np.isnan(y[2]) and y[3] == 2.0


def test_a_diverged_loss_has_an_infinite_perplexity_without_warnings():
    import warnings

    h = History()
    h.push(1, 10, 1.0, 1.0, 0.1, torch.tensor(1000.0), torch.tensor(1.0), torch.tensor(900.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = h.frame()
    assert np.isinf(frame.perplexity[0]) and np.isinf(frame.val_perplexity[0])
