"""Interpreter exit: lmwidget's background threads finish what they are doing, then stop.

Python kills a daemon thread that is still at work when the interpreter goes, and a thread
killed inside torch's C++ aborts the whole process ("terminate called without an active
exception"): a script, a job or a kernel that ends while a view redraws would die instead
of exiting. Threads started here are told the interpreter is going (`exiting()`, and their
`wake`), and each is waited for, `GRACE` seconds at most in all.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable

GRACE = 10.0  # s, for all of them together
_exiting = threading.Event()
_lock = threading.Lock()
_threads: list[tuple[threading.Thread, Callable[[], None] | None]] = []


def exiting() -> bool:
    """Whether the interpreter is going: a loop checking this returns at its next look."""
    return _exiting.is_set()


def start(target: Callable[[], None], name: str, wake: Callable[[], None] | None = None) -> threading.Thread:
    """Start a daemon thread that the interpreter waits for when it exits.

    Args:
        target: the thread's loop; it must return soon after `exiting()` turns true.
        name: the thread's name.
        wake: called at exit, to end a wait the loop may be in (an event's `set`).

    Returns:
        The started thread.
    """
    thread = threading.Thread(target=target, name=name, daemon=True)
    with _lock:
        _threads[:] = [(t, w) for t, w in _threads if t.is_alive()]
        _threads.append((thread, wake))
    thread.start()
    return thread


@atexit.register
def _join_at_exit() -> None:
    _exiting.set()
    with _lock:
        threads = list(_threads)
    for _, wake in threads:
        if wake is not None:
            wake()
    deadline = time.monotonic() + GRACE
    for thread, _ in threads:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
