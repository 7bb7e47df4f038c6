"""Tests for lmwidget.core.control.Control: pause/resume/stop, requests and the pause wait."""

from __future__ import annotations

import threading
import time

import pytest

from lmwidget.core.control import ENDED, STATES, Control

from tests.harness.pace import scaled

GUARD_S = 2.0  # a wait that should end promptly must end well within this


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))


def start_waiter(control: Control):
    """Run wait_while_paused in a daemon thread; returns (thread, returned_event)."""
    returned = threading.Event()

    def target():
        control.wait_while_paused()
        returned.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, returned


def assert_still_waiting(thread, returned, for_s: float = 0.15):
    thread.join(for_s)
    assert thread.is_alive() and not returned.is_set(), "wait_while_paused returned while paused"


def assert_returns(thread, returned):
    t0 = time.monotonic()
    thread.join(scaled(GUARD_S))
    assert not thread.is_alive(), "wait_while_paused did not return (hung)"
    assert returned.is_set()
    return time.monotonic() - t0


def test_initial_state():
    c = Control()
    assert c.paused is False
    assert c.stop_requested is False
    assert c.take() == {}
    assert not c.pending("lr")


def test_states_constants():
    assert set(ENDED) <= set(STATES)
    assert "running" in STATES and "paused" in STATES and "running" not in ENDED


def test_pause_and_resume_toggle_paused():
    c = Control()
    c.pause()
    assert c.paused is True
    c.pause()  # idempotent
    assert c.paused is True
    c.resume()
    assert c.paused is False
    c.resume()
    assert c.paused is False
    c.pause()
    assert c.paused is True
    assert c.stop_requested is False  # pausing is not stopping


def test_stop_is_final():
    c = Control()
    c.stop()
    assert c.stop_requested is True
    c.resume()
    c.pause()
    c.resume()
    c.request("lr", 0.1)
    c.take()
    assert c.stop_requested is True
    c.stop()
    assert c.stop_requested is True


def test_request_then_take_returns_and_clears():
    c = Control()
    c.request("lr", 0.01)
    c.request("sample")
    assert c.take() == {"lr": (0.01, ""), "sample": (None, "")}
    assert c.take() == {}
    assert not c.pending("lr") and not c.pending("sample")


def test_take_returns_a_dict_the_control_no_longer_shares():
    c = Control()
    c.request("lr", 0.5)
    taken = c.take()
    c.request("grad_clip", 1.0)
    assert taken == {"lr": (0.5, "")}
    assert c.take() == {"grad_clip": (1.0, "")}


def test_a_later_request_of_the_same_kind_replaces_the_earlier():
    c = Control()
    c.request("lr", 0.1)
    c.request("grad_clip", 1.0)
    c.request("lr", 0.2)
    c.request("lr", 0.3)
    assert c.take() == {"lr": (0.3, ""), "grad_clip": (1.0, "")}


def test_pending():
    c = Control()
    assert c.pending("lr") is False
    c.request("lr", 0.1)
    assert c.pending("lr") is True
    assert c.pending("grad_clip") is False
    c.request("sample")  # a request with no value is still pending
    assert c.pending("sample") is True
    c.take()
    assert c.pending("lr") is False and c.pending("sample") is False


def test_wait_while_paused_returns_immediately_when_not_paused():
    c = Control()
    t0 = time.monotonic()
    c.wait_while_paused()
    assert time.monotonic() - t0 < scaled(0.5)
    # also after a pause/resume cycle
    c.pause()
    c.resume()
    thread, returned = start_waiter(c)
    assert assert_returns(thread, returned) < scaled(GUARD_S)


def test_wait_while_paused_returns_immediately_when_stopped_or_with_a_pending_request():
    c = Control()
    c.pause()
    c.request("lr", 0.1)
    assert_returns(*start_waiter(c))
    c.take()
    c.stop()
    assert_returns(*start_waiter(c))


def test_wait_while_paused_returns_promptly_on_resume():
    c = Control()
    c.pause()
    thread, returned = start_waiter(c)
    assert_still_waiting(thread, returned)
    c.resume()
    assert assert_returns(thread, returned) < scaled(1.0)
    assert c.paused is False


def test_wait_while_paused_returns_promptly_on_stop():
    c = Control()
    c.pause()
    thread, returned = start_waiter(c)
    assert_still_waiting(thread, returned)
    c.stop()
    assert assert_returns(thread, returned) < scaled(1.0)
    assert c.paused is True and c.stop_requested is True


def test_wait_while_paused_returns_promptly_on_a_request():
    c = Control()
    c.pause()
    thread, returned = start_waiter(c)
    assert_still_waiting(thread, returned)
    c.request("sample")
    assert assert_returns(thread, returned) < scaled(1.0)
    assert c.paused is True  # a request does not unpause
    assert c.take() == {"sample": (None, "")}
    # and with nothing pending and still paused, it waits again
    thread, returned = start_waiter(c)
    assert_still_waiting(thread, returned)
    c.resume()
    assert_returns(thread, returned)


def test_many_waiters_all_wake_on_resume():
    c = Control()
    c.pause()
    waiters = [start_waiter(c) for _ in range(5)]
    for thread, returned in waiters:
        assert_still_waiting(thread, returned, for_s=0.02)
    c.resume()
    for thread, returned in waiters:
        assert_returns(thread, returned)


def test_notes_travel_with_requests_and_the_first_stop():
    c = Control()
    c.request("lr", 0.1, note="plateau")
    assert c.take() == {"lr": (0.1, "plateau")}
    c.stop("early stopping")
    c.stop("a later click")
    assert c.stop_note == "early stopping"  # the stop that took effect keeps its reason


def test_announce_sets_every_watcher_and_forgets_dropped_ones():
    c = Control()
    a, b = threading.Event(), threading.Event()
    c.watch(a)
    c.watch(b)
    c.announce()
    assert a.is_set() and b.is_set()
    del b
    assert len(c._watchers) == 1  # a view that is gone is not kept alive by its run


def test_watchers_come_and_go_while_the_loop_announces():
    """wait() adds and removes a watcher from other threads while the loop announces."""
    c, errors, done = Control(), [], threading.Event()

    def announcer():
        try:
            while not done.is_set():
                c.announce()
        except Exception as e:  # a WeakSet changed size during iteration
            errors.append(e)

    thread = threading.Thread(target=announcer)
    thread.start()
    for _ in range(20_000):
        e = threading.Event()
        c.watch(e)
        c.unwatch(e)
    done.set()
    thread.join(10)
    assert errors == [] and len(c._watchers) == 0
