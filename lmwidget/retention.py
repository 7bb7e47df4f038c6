"""Which finished runs keep their model: the newest few stay whole, older ones keep only their record."""

from __future__ import annotations

import threading

KEEP = 3  # finished runs kept whole (model, optimizer, data) by default
_state = {"keep": KEEP}
_lock = threading.Lock()


def keep_runs(n: int | None = None) -> int:
    """How many finished runs of this kernel keep their model, optimizer and data (the newest
    `n`; 3 to start). Older ones are closed as a new run starts: their history, events and
    samples stay (dashboards show their final curves, compare() and exports work), their
    memory goes. Returns the number in force before; `keep_runs()` only reads it."""
    with _lock:
        before = _state["keep"]
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"keep_runs takes an integer >= 0 (finished runs kept whole); got {n!r}")
            _state["keep"] = n
        return before


def to_close(runs: list) -> list:
    """The finished runs, oldest first, beyond the newest `keep_runs()` that still hold
    their model. A run whose thread still writes (a final save) is left for the next time."""
    finished = [r for r in runs if r.ended and not r.alive]
    keep = _state["keep"]
    older = finished[:-keep] if keep else finished
    return [r for r in older if not r.closed]
