"""Updater: the one thread that writes a view's widget traits, started and woken by a kick, throttled by time."""

from __future__ import annotations

import html
import threading
import traceback
from collections.abc import Callable

from lmwidget.system import shutdown

UPDATE_INTERVAL = 0.25  # s: at most 4 redraws per second


class Updater:
    """The thread that redraws a view, while there is something to draw.

    `kick()` starts it when it is not running and wakes it at once. Each round it reads
    whether the view's source has ended, draws, and then waits `wait()` seconds (or until
    `wake` is set: a click, the run's state changing, the page). It ends once the source had
    ended before a draw and `drawn()` says that draw left nothing to show; once `retire()`d,
    after `retired()`; and when the interpreter exits (lmwidget.system.shutdown waits for
    it). A drawing error is shown in `errors`, never raised: the view goes on.

    Args:
        name: the thread's name.
        draw: one redraw, given whether the source had ended before it.
        ended: whether nothing more will happen by itself (read before each draw).
        errors: the HTML widget a drawing error's traceback is written to.
        error_title: a line written above that traceback.
        drawn: whether everything is shown (asked under the lock a kick starts under, so
            no kick is lost); by default one draw after the end is enough.
        wait: seconds to the next redraw; by default UPDATE_INTERVAL.
        retired: the view's last act once retired (on this thread, which draws).
    """

    def __init__(self, name: str, draw: Callable[[bool], None], ended: Callable[[], bool], errors,
                 error_title: str = "", drawn: Callable[[], bool] = lambda: True,
                 wait: Callable[[], float] = lambda: UPDATE_INTERVAL,
                 retired: Callable[[], None] | None = None):
        self.name = name
        self.wake = threading.Event()  # set: redraw now
        self.thread: threading.Thread | None = None  # while it runs
        self._draw, self._ended, self._drawn, self._wait, self._retired = draw, ended, drawn, wait, retired
        self._errors, self._error_title = errors, error_title
        self._lock = threading.Lock()
        self._retiring = False

    @property
    def running(self) -> bool:
        """Whether the thread runs (it ends once everything is drawn)."""
        return self.thread is not None

    def on_thread(self) -> bool:
        """Whether the caller is the updater's thread (its own writes are no user's)."""
        return threading.current_thread() is self.thread

    def kick(self) -> None:
        """Make sure the thread runs, and wake it now."""
        self.wake.set()
        with self._lock:
            if self.thread is None:
                self.thread = shutdown.start(self._loop, self.name, wake=self.wake.set)

    def retire(self) -> None:
        """End the thread after `retired()`, which it runs next."""
        self._retiring = True
        self.kick()

    def join(self, timeout: float | None) -> None:
        """Wait up to `timeout` s for the thread to end (not when called from it)."""
        with self._lock:
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            if shutdown.exiting():  # the interpreter is going: nobody is left to see a redraw
                with self._lock:
                    self.thread = None
                return
            if self._retiring:
                with self._lock:
                    try:
                        if self._retired is not None:
                            self._retired()
                    finally:
                        self.thread = None
                    return
            ended = self._ended()  # read first: the last draw sees the end
            try:
                self._draw(ended)
            except Exception:  # never let a drawing bug kill the view silently
                self._errors.value = f"<pre>{self._error_title}{html.escape(traceback.format_exc())}</pre>"
            with self._lock:  # a kick starts the thread under this lock: no lost start
                if ended and not self._retiring and self._drawn():
                    self.thread = None
                    return
            self.wake.wait(self._wait())
            self.wake.clear()
