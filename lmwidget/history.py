"""Full-resolution columnar metrics and events, and min/max downsampling for charts."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import torch

COLUMNS = ("step", "tokens", "time", "loss", "perplexity", "grad_norm", "lr", "tokens_per_sec",
           "step_time", "val_loss", "val_perplexity")
# sampled about once a second by an observer, shown at each step as the latest sample by then
RESOURCE_COLUMNS = ("cpu_percent", "rss_mb", "gpu_util", "gpu_mem_mb", "gpu_temp_c", "gpu_power_w")
_STORED = {"step": np.int64, "tokens": np.int64, "time": np.float64, "loss": np.float64,
           "grad_norm": np.float64, "lr": np.float64, "tokens_per_sec": np.float64,
           "step_time": np.float64, "val_loss": np.float64}
EVENT_COLUMNS = ("step", "time", "kind", "value", "detail")
DRAIN_EVERY = 256  # the loop reads its pending device scalars itself at most this rarely
_DEVICE = (6, 7, 8)  # the pushed row's fields that may be device tensors: loss, grad_norm, val_loss
#                     (and tokens_per_sec, in a torchrun job: the sum over its ranks)


class History:
    """Metrics appended by the training loop, read by any thread.

    The loop `push`es a row per step whose loss, grad norm and validation loss are still
    device tensors; nothing is read back to the host then. `drain` (called by the
    dashboard before it draws, by readers, and by the loop every DRAIN_EVERY steps)
    copies all pending scalars to the host in one transfer, appends them to the columns,
    and hands the new rows to the listeners (the spike detector) in order.

    Times are seconds since the run started (`clock()`); events carry one too.
    """

    def __init__(self, capacity: int = 1024):
        self._lock = threading.Lock()        # guards _pending, the columns, _n, events, samples
        self._drain_lock = threading.Lock()  # one drain at a time, so rows stay in order
        self._pending: list = []
        self._cols = {k: np.empty(capacity, dtype=t) for k, t in _STORED.items()}
        self._n = 0
        self._events: list = []
        self._samples: list = []   # (time, step, {resource: value})
        self._listeners: list = []
        self._t0 = time.monotonic()

    def __len__(self) -> int:
        return self._n

    def start_clock(self, elapsed: float = 0.0) -> None:
        """Start the run's clock; a resumed run's clock goes on from `elapsed` seconds."""
        self._t0 = time.monotonic() - elapsed

    def clock(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._t0

    def add_listener(self, listener) -> None:
        """`listener(columns)` is called with every batch of drained rows (on the draining thread)."""
        self._listeners.append(listener)

    def push(self, step, tokens, time, lr, tokens_per_sec, step_time, loss, grad_norm,
             val_loss) -> int:
        """Queue one step's row (called by the loop); returns how many rows are pending."""
        with self._lock:
            self._pending.append(
                (step, tokens, time, lr, tokens_per_sec, step_time, loss, grad_norm, val_loss))
            return len(self._pending)

    def drain(self) -> int:
        """Move pending rows into the columns; one host-device transfer for all of them."""
        with self._drain_lock:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return 0
            k = len(rows)
            loss, norm, val = _DEVICE
            scalars = torch.stack([torch.as_tensor(r[loss]) for r in rows]
                                  + [torch.as_tensor(r[norm]) for r in rows])
            scalars = scalars.detach().double().cpu().numpy()  # the one sync point
            vals = np.full(k, np.nan)
            evals = [i for i, r in enumerate(rows) if r[val] is not None]
            if evals:
                vals[evals] = torch.stack([torch.as_tensor(rows[i][val]) for i in evals]).double().cpu().numpy()
            rates = [r[4] for r in rows]
            if any(torch.is_tensor(r) for r in rates):  # summed over a torchrun job's ranks
                rates = torch.stack([torch.as_tensor(r) for r in rates]).double().cpu().numpy()
            new = {"step": [r[0] for r in rows], "tokens": [r[1] for r in rows],
                   "time": [r[2] for r in rows], "lr": [r[3] for r in rows],
                   "tokens_per_sec": rates, "step_time": [r[5] for r in rows],
                   "loss": scalars[:k], "grad_norm": scalars[k:], "val_loss": vals}
            with self._lock:
                self._reserve(self._n + k)
                for name, values in new.items():
                    self._cols[name][self._n:self._n + k] = values
                self._n += k
            if self._listeners:
                new = {name: np.asarray(values, dtype=_STORED[name]) for name, values in new.items()}
                for listener in self._listeners:
                    listener(new)
            return k

    def extend(self, columns: dict) -> int:
        """Append rows already on the host ({column: values}, every stored column): a remote
        job's rows, as an attached notebook receives them."""
        k = len(columns["step"])
        with self._drain_lock:
            with self._lock:
                self._reserve(self._n + k)
                for name in _STORED:
                    self._cols[name][self._n:self._n + k] = np.asarray(columns[name], dtype=_STORED[name])
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
        frame = pd.DataFrame({k: cols[k] for k in COLUMNS})
        samples = self.resources_frame()
        # each step shows the latest sample taken by its time (NaN before the first one)
        at = np.searchsorted(samples["time"].to_numpy(), cols["time"], side="right") - 1
        for name in RESOURCE_COLUMNS:
            values = np.append(samples[name].to_numpy(dtype=np.float64), np.nan)
            frame[name] = values[at]  # at == -1 picks the NaN
        return frame

    # -- resources ---------------------------------------------------------------------------
    def record_resources(self, time: float, step: int, sample: dict) -> None:
        with self._lock:
            self._samples.append((time, step, sample))

    def resources_since(self, start: int) -> list:
        with self._lock:
            return self._samples[start:]

    def resources_frame(self) -> pd.DataFrame:
        """Every resource sample: time, step and each resource (NaN where not measured)."""
        samples = self.resources_since(0)
        names = list(RESOURCE_COLUMNS) + sorted({k for *_, s in samples for k in s} - set(RESOURCE_COLUMNS))
        data = {"time": [t for t, _, _ in samples], "step": [s for _, s, _ in samples]}
        for name in names:
            data[name] = [float(s.get(name, np.nan)) for *_, s in samples]
        return pd.DataFrame(data, columns=["time", "step", *names]).astype(
            {"time": np.float64, "step": np.int64, **{n: np.float64 for n in names}})

    # -- events ------------------------------------------------------------------------------
    def record_event(self, step: int, kind: str, value=None, detail: str = "",
                     time: float | None = None) -> None:
        """Note an event (at `time`, or now); `value` may be a device tensor, read by readers."""
        with self._lock:
            self._events.append([step, self.clock() if time is None else time, kind, value, detail])

    def events_since(self, start: int) -> list:
        """Events from index `start` on, as (step, time, kind, value, detail) tuples."""
        with self._lock:
            events = self._events[start:]
        for event in events:  # outside the lock: reading a device value may wait for it
            if torch.is_tensor(event[3]):
                event[3] = float(event[3])  # once; a validation loss computed steps ago
        return [tuple(e) for e in events]

    def events_frame(self) -> pd.DataFrame:
        """In step order (spikes are found when rows are drained, after later events)."""
        frame = pd.DataFrame(self.events_since(0), columns=list(EVENT_COLUMNS))
        return frame.sort_values("step", kind="stable", ignore_index=True)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything recorded, as tensors and plain values (safe to load with weights_only)."""
        self.drain()
        with self._lock:
            n = self._n
            columns = {k: torch.from_numpy(c[:n].copy()) for k, c in self._cols.items()}
        samples = self.resources_frame()
        resources = {name: torch.from_numpy(samples[name].to_numpy().copy()) for name in samples}
        events = [[int(step), float(t), str(kind), _plain(value), str(detail)]
                  for step, t, kind, value, detail in self.events_since(0)]
        return {"columns": columns, "events": events, "resources": resources, "clock": self.clock()}

    def load_state_dict(self, state: dict) -> None:
        """Replace what is recorded with a checkpoint's (before the run starts)."""
        columns = state["columns"]
        n = len(columns["step"])
        with self._lock:
            self._reserve(n)
            for name in _STORED:
                self._cols[name][:n] = columns[name].numpy()
            self._n = n
            self._events = [list(e) for e in state["events"]]
            res = {k: v.tolist() for k, v in state["resources"].items()}
            names = [k for k in res if k not in ("time", "step")]
            self._samples = [(t, int(s), {k: res[k][i] for k in names if not np.isnan(res[k][i])})
                             for i, (t, s) in enumerate(zip(res["time"], res["step"]))]
        self._t0 = time.monotonic() - float(state["clock"])


def _plain(value):
    """An event value as a checkpoint may hold it: a number, a string, or None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        return float(value)  # numpy scalars, 0-d tensors
    except (TypeError, ValueError):
        return str(value)
