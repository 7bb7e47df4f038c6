"""Pacer: flow control of chart redraws between a view's updater and the page."""

import threading
import time

import pytest

import lmwidget.views.pacing as pacing
from lmwidget.views.pacing import ACK_TIMEOUT, BROWSER_SHARE, FIRST_ACK_WAIT, Pacer


@pytest.fixture
def pacer(monkeypatch):
    monkeypatch.setattr(pacing, "cell_running", lambda: False)
    return Pacer(threading.Event())


def test_no_redraw_sent_nothing_held(pacer):
    assert pacer.held() == 0.0


def test_before_any_acknowledgement_each_redraw_holds_the_charts_briefly(pacer):
    """A page still loading (or no page at all) is never sent a backlog of redraws: until a
    front end takes part, the charts wait FIRST_ACK_WAIT after each one, then go on."""
    pacer.sent()
    assert FIRST_ACK_WAIT - 0.1 < pacer.held() <= FIRST_ACK_WAIT
    pacer._sent_at -= FIRST_ACK_WAIT  # as if a second went by with no acknowledgement
    assert pacer.held() == 0.0


def test_an_acknowledged_redraw_frees_the_charts_after_the_pages_share(pacer):
    pacer.sent()
    time.sleep(0.05)
    pacer.acked.value = pacer.drawn.value  # the page handled it
    assert pacer._wake.is_set() and len(pacer.page_times) == 1
    page_time = pacer.page_times[0]
    assert 0.05 <= page_time < 1.0
    # the page spends at most BROWSER_SHARE of its time on charts
    assert 0 < pacer.held() <= page_time * (1 / BROWSER_SHARE - 1) + 1e-6


def test_once_a_page_takes_part_the_charts_wait_for_its_acknowledgement(pacer):
    pacer.sent()
    pacer.acked.value = pacer.drawn.value
    pacer._free_at = 0.0  # its share has passed
    pacer.sent()  # not acknowledged yet: held up to ACK_TIMEOUT, woken by the acknowledgement
    assert ACK_TIMEOUT - 0.1 < pacer.held() <= ACK_TIMEOUT


def test_a_stale_acknowledgement_frees_nothing(pacer):
    pacer.sent()
    pacer.sent()
    pacer.acked.value = 1  # the page has handled only the first
    assert not pacer._wake.is_set() and not pacer.page_times
    assert pacer.held() > FIRST_ACK_WAIT  # it takes part now: it waits for redraw 2
