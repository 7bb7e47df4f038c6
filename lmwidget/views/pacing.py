"""Pacer: the page sets the pace of chart redraws, so a slow browser never queues them ahead of a click."""

from __future__ import annotations

import collections
import math
import statistics
import threading
import time

import ipywidgets as w

from .frontends import cell_running

ACK_TIMEOUT = 10.0     # s: the longest the charts wait for a front end to handle the last redraw
BROWSER_SHARE = 1 / 3  # of the page's time spent drawing charts, at most: it stays free for clicks
FIRST_ACK_WAIT = 1.0   # s: until a front end has acknowledged a redraw, the charts wait this long
                       # after each one, so a page still loading never queues a backlog of them


class Pacer:
    """Flow control between a view's updater and the page.

    The updater numbers each redraw in `drawn`; a front end copies the number into `acked`
    (an ipywidgets jsdlink, run by the page) once it has handled every message before it,
    and sends it back. The charts wait for that acknowledgement, then leave the page two
    thirds of its time, while the status never waits. Until the first acknowledgement, the
    charts wait FIRST_ACK_WAIT after each redraw. No acknowledgement ever comes with no front
    end, and none can come over the kernel's main thread while a cell runs (no comms over
    subshells): then the charts go on by time alone.
    """

    def __init__(self, wake: threading.Event):
        self.drawn, self.acked = w.IntText(0), w.IntText(0)
        self.link = w.jsdlink((self.drawn, "value"), (self.acked, "value"))
        self.acked.observe(self._on_ack, names="value")
        self.page_times = collections.deque(maxlen=5)  # s a front end took per redraw, latest
        self._wake = wake          # set when the page has caught up
        self._seen = False         # a front end has acknowledged a redraw: it takes part
        self._on_main = False      # acknowledgements come through the kernel's main thread
        self._sent_at = None       # when the last redraw was sent, until acknowledged
        self._free_at = -math.inf  # no chart redraw before this (monotonic s): the page's share

    def _on_ack(self, change) -> None:
        """A front end has handled everything up to redraw `change["new"]` (any thread)."""
        self._seen = True
        self._on_main = threading.current_thread() is threading.main_thread()
        sent = self._sent_at
        if change["new"] != self.drawn.value or sent is None:
            return
        now = time.monotonic()
        self.page_times.append(now - sent)
        self._free_at = now + statistics.median(self.page_times) * (1 / BROWSER_SHARE - 1)
        self._sent_at = None
        self._wake.set()

    @property
    def acks_on_main(self) -> bool:
        """Whether the page's acknowledgements come through the kernel's main thread: no
        subshell serves this view's widgets, so a running cell holds them (and clicks) back."""
        return self._seen and self._on_main

    def held(self) -> float:
        """Seconds until the charts may be redrawn; 0 when they may be now."""
        now, sent = time.monotonic(), self._sent_at
        if not self._seen:
            return 0.0 if sent is None else max(0.0, sent + FIRST_ACK_WAIT - now)
        if self._on_main and cell_running():
            return 0.0
        if sent is not None and now < sent + ACK_TIMEOUT:
            return sent + ACK_TIMEOUT - now  # the acknowledgement wakes the updater sooner
        return max(0.0, self._free_at - now)

    def sent(self) -> None:
        """A redraw went out (after its last message): number it for the page."""
        self._sent_at = time.monotonic()
        self.drawn.value += 1
