"""Control: the only mutable object that crosses threads, and the run states."""

from __future__ import annotations

import threading
import weakref

STATES = ("running", "paused", "stopped", "finished", "failed")
ENDED = ("stopped", "finished", "failed")
# the controls that act only on a loop still training, and what each would have done
LIVE_ONLY = {"pause": "pause or resume", "stop": "stop", "lr": "change its learning rate",
             "grad_clip": "change its clip norm"}


def ended_refusal(name: str, state: str, step: int, control: str) -> str:
    """Why `control` cannot act on a run that has ended."""
    return (f"{name} has ended ({state} at step {step}): it cannot {LIVE_ONLY[control]} any more; "
            f"sample, save, histograms and exports still work")


class Control:
    """Requests from any thread to the training loop, applied at the next step boundary.

    Who clears what: `pause()`/`resume()` set and clear the pause flag (callers);
    `stop()` is final and never cleared; `request()` adds a pending request that only the
    loop clears, by `take()`-ing it. A later request of the same kind replaces an earlier
    one that the loop has not taken yet. When the loop ends it `close()`s the control,
    taking what is left; from then on `request()` queues nothing and says so. A request and
    a stop may carry a note (why: a policy's reason), which the loop writes into the event.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._paused = False
        self._stop = False
        self._closed = False
        self._requests: dict = {}  # kind -> (value, note)
        self.stop_note = ""
        self.pause_note = ""  # who asked for the latest pause or resume (written into its event)
        self._watchers: weakref.WeakSet = weakref.WeakSet()  # events set when the state changes
        self._watch_lock = threading.Lock()  # a WeakSet may not change while it is iterated

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def closed(self) -> bool:
        """True once the loop has ended: requests are then carried out by the caller."""
        return self._closed

    def pause(self, note: str = "") -> None:
        self._set("_paused", True, note)

    def resume(self, note: str = "") -> None:
        self._set("_paused", False, note)

    def stop(self, note: str = "") -> None:
        with self._cond:
            if not self._stop:
                self.stop_note = note
            self._stop = True
            self._cond.notify_all()

    def _set(self, name: str, value: bool, note: str = "") -> None:
        with self._cond:
            setattr(self, name, value)
            self.pause_note = note
            self._cond.notify_all()

    def request(self, kind: str, value=None, note: str = "") -> bool:
        """Queue a request for the loop; False (nothing queued) once the loop has ended."""
        with self._cond:
            if self._closed:
                return False
            self._requests[kind] = (value, note)
            self._cond.notify_all()
            return True

    def close(self) -> dict:
        """The requests left when the loop ends, {kind: (value, note)} (called by the loop
        only); no more queue."""
        with self._cond:
            self._closed = True
            requests, self._requests = self._requests, {}
        return requests

    def pending(self, kind: str) -> bool:
        return kind in self._requests

    def watch(self, event: threading.Event) -> None:
        """Set `event` whenever the loop's state changes (a view redraws at once)."""
        with self._watch_lock:
            self._watchers.add(event)

    def unwatch(self, event: threading.Event) -> None:
        with self._watch_lock:
            self._watchers.discard(event)

    def announce(self) -> None:
        """The loop's state changed: wake the watchers (called by the loop only)."""
        with self._watch_lock:
            events = list(self._watchers)
        for event in events:
            event.set()

    def take(self) -> dict:
        """The pending requests, {kind: (value, note)}, cleared (called by the loop only)."""
        if not self._requests:  # the common case: no lock taken on the hot path
            return {}
        with self._cond:
            requests, self._requests = self._requests, {}
        return requests

    def wait_while_paused(self, timeout: float | None = None) -> None:
        """Block (no busy loop) until resumed, stopped, a request arrives, or `timeout` s pass."""
        with self._cond:
            self._cond.wait_for(lambda: not self._paused or self._stop or self._requests, timeout)
