"""Tests for lmwidget.core.history: the columnar metrics store, events and min/max downsampling."""

from __future__ import annotations

import math
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from lmwidget.core.history import EVENT_COLUMNS, History
from lmwidget.core.schema import COLUMNS

EXPECTED_COLUMNS = ("step", "tokens", "time", "loss", "perplexity", "grad_norm", "lr",
                    "tokens_per_sec", "step_time", "val_loss", "val_perplexity", "bpb", "val_bpb", "cpu_percent",
                    "rss_mb", "gpu_util", "gpu_mem_mb", "gpu_temp_c", "gpu_power_w")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))


def row(i: int, val=None) -> dict:
    """The values of step i, with device-tensor-like loss / grad norm as the loop pushes."""
    return dict(step=i + 1, tokens=(i + 1) * 512, time=0.5 * i, lr=1e-3 / (i + 1), tokens_per_sec=1000.0 + i,
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
    assert tuple(df.columns) == EXPECTED_COLUMNS == tuple(m.name for m in COLUMNS)
    assert len(df) == 10
    expected = pd.DataFrame([row(i) for i in range(10)])
    assert df["step"].tolist() == list(range(1, 11))
    assert df["tokens"].tolist() == [(i + 1) * 512 for i in range(10)]
    np.testing.assert_allclose(df["lr"], expected["lr"].astype(float))
    np.testing.assert_allclose(df["tokens_per_sec"], expected["tokens_per_sec"].astype(float))
    np.testing.assert_allclose(df["step_time"], expected["step_time"].astype(float))
    np.testing.assert_allclose(df["time"], expected["time"].astype(float))
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
    assert tuple(empty.columns) == ("step", "time", "kind", "value", "detail") == EVENT_COLUMNS
    assert len(empty) == 0
    h.record_event(3, "pause")
    h.record_event(3, "lr", 0.01, "plateau")
    h.record_event(7, "resume")
    h.record_event(5, "anomaly", 40.0, "a spike found late", time=1.5)  # drained after step 7
    df = h.events_frame()
    assert tuple(df.columns) == EVENT_COLUMNS
    assert df["step"].tolist() == [3, 3, 5, 7]  # in step order, ties in the order recorded
    assert df["kind"].tolist() == ["pause", "lr", "anomaly", "resume"]
    assert df["value"][1] == 0.01 and df["detail"][1] == "plateau" and df["detail"][0] == ""
    assert df["value"][0] is None or pd.isna(df["value"][0])
    assert df["time"][2] == 1.5 and (df["time"] >= 0).all()
    assert [e[2] for e in h.events_since(1)] == ["lr", "resume", "anomaly"]  # as recorded


def test_a_device_tensor_event_value_is_read_once_by_a_reader():
    h = History()
    h.record_event(10, "eval", torch.tensor(2.5))
    (event,) = h.events_since(0)
    assert event[3] == 2.5 and isinstance(event[3], float)
    assert isinstance(h._events[0][3], float)  # stored back: later readers pay nothing


def test_resources_are_joined_to_the_steps_by_time():
    h = History()
    for i in range(6):
        h.push(**row(i))  # times 0, 0.5, ..., 2.5
    h.record_resources(0.7, 2, {"cpu_percent": 50.0, "rss_mb": 100.0})
    h.record_resources(1.9, 4, {"cpu_percent": 80.0, "rss_mb": 120.0, "gpu_util": 30.0})
    df = h.frame()
    # each step shows the latest sample by its time; none before the first sample
    np.testing.assert_array_equal(df["cpu_percent"], [np.nan, np.nan, 50.0, 50.0, 80.0, 80.0])
    np.testing.assert_array_equal(df["gpu_util"], [np.nan] * 4 + [30.0, 30.0])
    assert df["gpu_power_w"].isna().all()
    samples = h.resources_frame()
    assert samples["time"].tolist() == [0.7, 1.9] and samples["step"].tolist() == [2, 4]
    assert np.isnan(samples["gpu_util"][0]) and samples["gpu_util"][1] == 30.0


def test_listeners_get_every_drained_row_once_in_order():
    h = History()
    seen = []
    h.add_listener(lambda cols: seen.append(cols["step"].tolist()))
    for i in range(3):
        push(h, i)
    h.drain()
    push(h, 3)
    h.frame()
    h.drain()  # nothing new: no call
    assert seen == [[1, 2, 3], [4]]


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
                h.push(step=i, tokens=i * 2, time=i * 0.01, lr=0.1, tokens_per_sec=1.0,
                       step_time=0.01, loss=losses[i], grad_norm=norms[i],
                       val_loss=losses[i] if i % 100 == 0 else None)
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


def test_a_diverged_loss_has_an_infinite_perplexity_without_warnings():
    import warnings

    h = History()
    h.push(step=1, tokens=10, time=0.0, lr=1.0, tokens_per_sec=1.0, step_time=0.1,
           loss=torch.tensor(1000.0), grad_norm=torch.tensor(1.0), val_loss=torch.tensor(900.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = h.frame()
    assert np.isinf(frame.perplexity[0]) and np.isinf(frame.val_perplexity[0])
