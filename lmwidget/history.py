"""Full-resolution columnar metrics and events, and min/max downsampling for charts."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import torch

COLUMNS = ("step", "tokens", "loss", "perplexity", "grad_norm", "lr", "tokens_per_sec",
           "step_time", "val_loss", "val_perplexity")
_STORED = {"step": np.int64, "tokens": np.int64, "loss": np.float64, "grad_norm": np.float64,
           "lr": np.float64, "tokens_per_sec": np.float64, "step_time": np.float64,
           "val_loss": np.float64}
EVENT_COLUMNS = ("step", "kind", "value")
DRAIN_EVERY = 256  # the loop reads its pending device scalars itself at most this rarely


class History:
    """Metrics appended by the training loop, read by any thread.

    The loop `push`es a row per step whose loss, grad norm and validation loss are still
    device tensors; nothing is read back to the host then. `drain` (called by the
    dashboard before it draws, by readers, and by the loop every DRAIN_EVERY steps)
    copies all pending scalars to the host in one transfer and appends them to the
    columns.
    """

    def __init__(self, capacity: int = 1024):
        self._lock = threading.Lock()        # guards _pending, the columns and _n
        self._drain_lock = threading.Lock()  # one drain at a time, so rows stay in order
        self._pending: list = []
        self._cols = {k: np.empty(capacity, dtype=t) for k, t in _STORED.items()}
        self._n = 0
        self._events: list = []

    def __len__(self) -> int:
        return self._n

    def push(self, step, tokens, lr, tokens_per_sec, step_time, loss, grad_norm, val_loss) -> int:
        """Queue one step's row (called by the loop); returns how many rows are pending."""
        with self._lock:
            self._pending.append(
                (step, tokens, lr, tokens_per_sec, step_time, loss, grad_norm, val_loss))
            return len(self._pending)

    def drain(self) -> int:
        """Move pending rows into the columns; one host-device transfer for all of them."""
        with self._drain_lock:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return 0
            k = len(rows)
            scalars = torch.stack([torch.as_tensor(r[5]) for r in rows]
                                  + [torch.as_tensor(r[6]) for r in rows])
            scalars = scalars.detach().double().cpu().numpy()  # the one sync point
            val = np.full(k, np.nan)
            evals = [i for i, r in enumerate(rows) if r[7] is not None]
            if evals:
                val[evals] = torch.stack([torch.as_tensor(rows[i][7]) for i in evals]).double().cpu().numpy()
            new = {"step": [r[0] for r in rows], "tokens": [r[1] for r in rows],
                   "lr": [r[2] for r in rows], "tokens_per_sec": [r[3] for r in rows],
                   "step_time": [r[4] for r in rows], "loss": scalars[:k],
                   "grad_norm": scalars[k:], "val_loss": val}
            with self._lock:
                self._reserve(self._n + k)
                for name, values in new.items():
                    self._cols[name][self._n:self._n + k] = values
                self._n += k
            return k

    def _reserve(self, size: int) -> None:
        capacity = len(self._cols["step"])
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity)
        for name, col in self._cols.items():
            grown = np.empty(capacity, dtype=col.dtype)
            grown[:self._n] = col[:self._n]
            self._cols[name] = grown

    def since(self, start: int) -> dict:
        """Copies of the stored columns from row `start` to the end (cost ~ rows returned)."""
        with self._lock:
            return {k: c[start:self._n].copy() for k, c in self._cols.items()}

    def last(self, name: str, default=float("nan")):
        with self._lock:
            return self._cols[name][self._n - 1] if self._n else default

    def nbytes_per_step(self) -> int:
        return sum(np.dtype(t).itemsize for t in _STORED.values())

    def frame(self) -> pd.DataFrame:
        self.drain()
        cols = self.since(0)
        with np.errstate(over="ignore"):  # a diverged loss has an infinite perplexity
            cols["perplexity"] = np.exp(cols["loss"])
            cols["val_perplexity"] = np.exp(cols["val_loss"])
        return pd.DataFrame({k: cols[k] for k in COLUMNS})

    def record_event(self, step: int, kind: str, value=None) -> None:
        with self._lock:
            self._events.append((step, kind, value))

    def events_since(self, start: int) -> list:
        with self._lock:
            return self._events[start:]

    def events_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.events_since(0), columns=list(EVENT_COLUMNS))


class MinMaxSeries:
    """An incremental min/max summary of a growing (x, y) series in <= max_points points.

    Points fall into buckets of `width` consecutive samples; each bucket keeps its lowest
    and highest point, in x order, so spikes survive downsampling. When the buckets fill
    their budget, neighbours merge and the width doubles, so the bucket grid never depends
    on how the data arrived. Appending costs O(new points) amortised; `points()` costs
    O(max_points) however long the series. The newest point is always shown.
    """

    def __init__(self, max_points: int = 2000):
        if max_points < 8:
            raise ValueError(f"max_points must be at least 8; got {max_points}")
        # buckets (2 points each) plus the unfinished tail (its min, max and newest point)
        self._cap = (max_points - 3) // 2 // 2 * 2  # even, so a full set merges pairwise
        self.width = 1
        self._bx = np.empty((0, 2))  # per bucket: x of its two extremes, in order
        self._by = np.empty((0, 2))
        self._tx = np.empty(0)       # the tail: raw points not yet filling a bucket
        self._ty = np.empty(0)
        self._last = None            # the newest (x, y)

    def extend(self, x, y) -> None:
        tx = np.concatenate((self._tx, np.asarray(x, dtype=np.float64)))
        ty = np.concatenate((self._ty, np.asarray(y, dtype=np.float64)))
        pos = 0
        while len(tx) - pos >= self.width:
            k = min((len(tx) - pos) // self.width, self._cap - len(self._bx))
            n = k * self.width
            bx, by = _extremes(tx[pos:pos + n].reshape(k, self.width),
                               ty[pos:pos + n].reshape(k, self.width))
            self._bx = np.concatenate((self._bx, bx))
            self._by = np.concatenate((self._by, by))
            pos += n
            if len(self._bx) == self._cap:
                m = self._cap // 2
                self._bx, self._by = _extremes(self._bx.reshape(m, 4), self._by.reshape(m, 4))
                self.width *= 2
        self._tx, self._ty = tx[pos:], ty[pos:]
        if len(tx):
            self._last = (tx[-1], ty[-1])

    def points(self):
        """New contiguous float32 arrays (x, y), a point once where a bucket's extremes coincide;
        non-finite values (and values beyond float32) become NaN."""
        bx, by = self._bx, self._by
        if len(self._tx):
            tx, ty = _extremes(self._tx[None, :], self._ty[None, :])
            bx, by = np.concatenate((bx, tx)), np.concatenate((by, ty))
        keep = np.ones(bx.shape, dtype=bool)
        keep[:, 1] = bx[:, 1] != bx[:, 0]
        x, y = bx[keep], by[keep]
        if self._last is not None and self._last[0] != x[-1]:  # the newest, even if unremarkable
            x, y = np.append(x, self._last[0]), np.append(y, self._last[1])
        with np.errstate(over="ignore"):
            y = y.astype(np.float32)
        y[~np.isfinite(y)] = np.nan  # a gap in the line: an infinite value would break the axis
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def _extremes(x, y):
    """Per row: the points of lowest and highest y (NaN-safe), ordered by x."""
    rows = np.arange(len(y))
    nan = np.isnan(y)
    lo = np.where(nan, np.inf, y).argmin(axis=1)
    hi = np.where(nan, -np.inf, y).argmax(axis=1)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    return (np.stack((x[rows, first], x[rows, second]), axis=1),
            np.stack((y[rows, first], y[rows, second]), axis=1))
