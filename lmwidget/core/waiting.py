"""Waiting on a run from the caller's thread: until it ends, or until it reaches a step."""

from __future__ import annotations

import threading
import time


class Waitable:
    """Blocking waits on a source, each polling or watching its state from the caller's
    thread: the training is never touched."""

    @property
    def alive(self) -> bool:
        """Its training still runs (a thread, or a loop on the caller's thread)."""
        return self.started and not self.ended

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` s for the training to end; True once it has."""
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (True) or `timeout` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        changed = threading.Event()
        self.watch(changed)
        try:
            while not self.ended:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                changed.wait(left if left is None else min(left, 1.0))
                changed.clear()
        finally:
            self.unwatch(changed)
        return True

    def wait_for_step(self, step: int, timeout: float | None = None) -> bool:
        """Block until the run has done `step` steps (True): a cell that pauses, samples or
        inspects the run waits for it to have learned something first. False when `timeout`
        s pass, or the run ends or pauses itself (a non-finite step) before that step;
        re-raises a failure. A pause of yours is waited through."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0; got {step!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.step < step:
            if self.ended:
                if self.error is not None:
                    raise self.error
                return False
            if self.self_paused:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)  # the caller's thread: the run is never touched
        return True
