"""The resource monitor: one daemon thread that samples CPU, memory and GPU for every live run
of this process about once a second, off the training threads, with or without a view; it
also closes the finished runs that keep_runs() no longer keeps whole."""

from __future__ import annotations

import atexit
import threading
import time
import weakref

from . import registry, retention
from lmwidget.system.resources import SAMPLE_INTERVAL

TICK = 0.1  # s between looks: a run is first sampled within this of its start, however short
_lock = threading.Lock()
_state: dict = {"thread": None}
_sampled: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # run -> when last sampled


def register(source) -> None:
    """A source starts training in this process (runs() lists it, and its resources are
    sampled about once a second until it ends, off its thread)."""
    registry.add(source)
    watch()  # it also closes the finished runs that keep_runs() no longer keeps whole


def watch() -> None:
    """Make sure the monitor runs (a run has just been registered)."""
    with _lock:
        thread = _state["thread"]
        if _state.get("exiting"):
            return
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=_loop, name="lmwidget-resources", daemon=True)
            _state["thread"] = thread
            thread.start()


def running() -> bool:
    """Whether the monitor's thread is alive (it ends once every run has ended)."""
    thread = _state["thread"]
    return thread is not None and thread.is_alive()


@atexit.register
def _stop_at_exit() -> None:
    """The interpreter is going: the monitor stops between two looks, never inside one."""
    with _lock:
        _state["exiting"] = True
        thread = _state["thread"]
    if thread is not None and thread is not threading.current_thread():
        thread.join(2.0)


def _loop() -> None:
    runs = registry.runs
    while not _state.get("exiting"):
        for run in retention.to_close(runs()):  # here, never on a training thread
            try:
                run.close()
            except Exception:  # a view failing to let go must not end the sampling
                pass
        with _lock:  # decided under the lock watch() takes: a run registered now is seen
            waiting = [r for r in runs() if not r.ended]
            if not waiting or _state.get("exiting"):
                _state["thread"] = None
                return
        now = time.monotonic()
        for run in waiting:
            if run.started and not run.ended and now - _sampled.get(run, -SAMPLE_INTERVAL) >= SAMPLE_INTERVAL:
                _sampled[run] = now
                try:
                    run.sample_resources()
                except Exception:  # a GPU gone, a process table unreadable: the next second may do
                    pass
        time.sleep(TICK)
