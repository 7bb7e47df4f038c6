"""Replay protection: request ids kept for the whole freshness window, by time, not by count."""

from lmwidget.remote.transport.replay_protection import ReplayWindow


def test_an_id_is_kept_until_its_request_goes_stale_by_its_own_time_stamp():
    window = ReplayWindow(max_age=60, capacity=10)
    assert window.check("a", 1000.0, now=1000.0) is None
    assert window.check("b", 1050.0, now=1000.0) is None  # from 50 s ahead: kept until 1110
    assert window.check("a", 1000.0, now=1060.0) == "replayed"  # 60 s old: still fresh
    assert window.check("a", 1000.0, now=1060.5) == "stale"
    assert window.check("c", 1060.0, now=1060.5) is None and len(window) == 2  # "a" forgotten: stale anyway
    assert window.check("b", 1050.0, now=1109.0) == "replayed"
    assert window.check("x", float("nan"), now=1000.0) == "stale"


def test_beyond_its_capacity_new_requests_are_refused_rather_than_old_ids_forgotten():
    window = ReplayWindow(max_age=60, capacity=3)
    assert [window.check(i, 1000.0, now=1000.0) for i in "abc"] == [None, None, None]
    assert window.check("d", 1001.0, now=1001.0) == "too many requests"
    assert [window.check(i, 1000.0, now=1059.0) for i in "abc"] == ["replayed"] * 3
    assert window.check("d", 1061.0, now=1061.0) is None  # the first three went stale: room again
