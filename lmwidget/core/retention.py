"""Which finished runs keep their model: the newest few stay whole, and older ones while they fit a memory budget."""

from __future__ import annotations

import ctypes
import threading
import weakref

import numpy as np
import torch

KEEP = 3                 # the newest finished runs always kept whole (model, optimizer, data)
MAX_BYTES = 64 << 20     # what finished runs may hold together before the oldest beyond KEEP are closed
_state = {"keep": KEEP, "max_bytes": MAX_BYTES}
_lock = threading.Lock()
_held: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # finished run -> bytes it holds


def _find_malloc_trim():
    try:  # glibc's; musl, macOS and Windows have none and give memory back by themselves or not at all
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


def give_back_host_memory() -> bool:
    """Hand the host memory freed so far back to the system, as torch.cuda.empty_cache() does
    for the device: glibc keeps freed memory in its arenas for reuse, so a closed run's weights
    stayed in the process's resident memory. The call releases the GIL. False where the C
    library has no malloc_trim."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def keep_runs(n: int | None = None, max_bytes: int | None = None) -> dict:
    """How finished runs of this kernel keep their model, optimizer and data: the newest `n`
    (3 to start) always; older ones while all finished runs together hold at most `max_bytes`
    (64 MiB to start; 0: none beyond the newest `n`). Beyond that the oldest are closed:
    their history, events and samples stay (dashboards show their final curves, compare()
    and exports work), their memory goes.

    Args:
        n: finished runs always kept, newest first (None: unchanged).
        max_bytes: what all finished runs may hold together (None: unchanged).

    Returns:
        The settings in force before the call.

    Raises:
        ValueError: `n` or `max_bytes` is not an integer >= 0.
    """
    with _lock:
        before = dict(_state)
        for name, value in (("n", n), ("max_bytes", max_bytes)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"keep_runs takes {name} as an integer >= 0; got {value!r}")
        if n is not None:
            _state["keep"] = n
        if max_bytes is not None:
            _state["max_bytes"] = max_bytes
        return {"n": before["keep"], "max_bytes": before["max_bytes"]}


def held_bytes(run) -> int:
    """About what a finished run holds: its weights four times over (weights, gradients and
    AdamW's two moments) and the tokens it trains on in memory (not a memory-mapped file)."""
    if run.closed:
        return 0
    if run not in _held:
        model, data = getattr(run, "model", None), getattr(run, "dataset", None)
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0
        tokens = sum(a.nbytes if isinstance(a, np.ndarray) and not isinstance(a, np.memmap)
                     else a.numel() * a.element_size() if torch.is_tensor(a) else 0
                     for a in (getattr(data, "train", None), getattr(data, "val", None)))
        _held[run] = 4 * weights + tokens
    return _held[run]


def to_close(runs: list) -> list:
    """The finished runs to close now, oldest first: beyond the newest `keep_runs()` ones, the
    oldest until the rest fit the budget. A run whose thread still writes (a final save) is
    left for the next look."""
    finished = [r for r in runs if r.ended and not r.alive and not r.closed]
    keep, budget = _state["keep"], _state["max_bytes"]
    older = finished[:-keep] if keep else finished
    total = sum(held_bytes(r) for r in finished)
    out = []
    for run in older:
        if total <= budget:
            break
        out.append(run)
        total -= held_bytes(run)
    return out
