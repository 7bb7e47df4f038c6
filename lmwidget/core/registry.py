"""The run registry: every source that trained in this process, and stopping them at exit."""

from __future__ import annotations

import atexit
import threading

from .control import ENDED

_runs: list = []           # every source that trained in this process, oldest first
_runs_lock = threading.Lock()


def add(source) -> None:
    """Add `source` to the registry (once)."""
    with _runs_lock:
        if source not in _runs:
            _runs.append(source)


def runs() -> list:
    """Every run that trained in this process (yours and lmwidget's), oldest first."""
    with _runs_lock:
        return list(_runs)


def active_runs() -> list:
    """The runs of this process that have not ended, oldest first."""
    return [r for r in runs() if r.state not in ENDED]


@atexit.register
def _stop_all_at_exit() -> None:
    """Stop runs before the interpreter goes: torch work in a dying daemon thread aborts it."""
    for run in active_runs():
        run.stop()
    for run in runs():
        run.join(5.0)
