"""History: a run's record (metrics by step, the user's metrics, events, resources, samples), read by any thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import torch

from . import frames
from .schema import BY_NAME, COLUMNS, STORED, check_user_name, filled, user_metric

from .frames import EVENT_COLUMNS  # noqa: F401 (its callers import it from here too)
DRAIN_EVERY = 256  # the loop reads its pending device scalars itself at most this rarely


class History:
    """What a run recorded, appended by the training loop and read by any thread.

    The loop `push`es a row per step whose values (the schema's stored columns) may still be
    device tensors: nothing is read back to the host then. `drain` (called by a view before
    it draws, by readers, and by the loop every DRAIN_EVERY steps) copies every pending
    tensor to the host in one transfer per device, appends the rows to the columns, and hands
    them to the listeners (the spike detector) in order. `log` records the user's own
    metrics the same way. Times are seconds since the run started (`clock()`).
    """

    def __init__(self, capacity: int = 1024):
        self._lock = threading.Lock()        # guards the pending rows, columns, events, samples
        self._drain_lock = threading.Lock()  # one drain at a time, so rows stay in order
        self._pending: list = []             # rows: {column: value}
        self._pending_logged: list = []      # the user's: (step, name, value)
        self._cols = {m.name: np.empty(capacity, dtype=m.dtype) for m in STORED}
        self._n = 0
        self._logged: list = []              # (step, name, float), in the order logged
        self._user: dict = {}                # name -> its Metric, in the order first logged
        self._events: list = []
        self._resources: list = []           # (time, step, {resource: value})
        self._samples: list = []             # (step, text)
        self._histograms: list = []
        self.layer_grad_norms = None         # (step, per-layer norms as a device tensor), newest
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

    def metrics(self) -> list:
        """Every column's declaration: the schema's, then the user's in the order first logged."""
        with self._lock:
            return [*COLUMNS, *self._user.values()]

    # -- rows ----------------------------------------------------------------------------
    def push(self, **values) -> int:
        """Queue one step's row, {column: value} (called by the loop); a column left out takes
        its default. Returns how many rows are pending."""
        with self._lock:
            self._pending.append(values)
            return len(self._pending)

    def log(self, step: int, values: dict) -> None:
        """The user's metrics at `step` ({name: number or 0-d tensor}), kept as they came."""
        for name in values:
            check_user_name(name)
        with self._lock:
            for name, value in values.items():
                if name not in BY_NAME and name not in self._user:
                    self._user[name] = user_metric(name, len(self._user))
                self._pending_logged.append((step, name, value))

    def drain(self) -> int:
        """Move pending rows into the columns; one host-device transfer per device for all of them."""
        with self._drain_lock:
            with self._lock:
                rows, self._pending = self._pending, []
                logged, self._pending_logged = self._pending_logged, []
            if not rows and not logged:
                return 0
            new = {m.name: [row.get(m.name, m.default) for row in rows] for m in STORED}
            values = [v for _, _, v in logged]
            _to_host([*new.values(), values])  # the one sync point
            logged = [(step, name, float(v)) for (step, name, _), v in zip(logged, values)]
            new = {name: filled(name, col, 0) for name, col in new.items()}
            k = len(rows)
            with self._lock:
                self._reserve(self._n + k)
                for name, col in new.items():
                    self._cols[name][self._n:self._n + k] = col
                self._n += k
                for step, name, value in logged:
                    if name in self._user:
                        self._logged.append((step, name, value))
                    elif not self._set_at(step, name, value):  # a schema column, by the user
                        self._pending_logged.append((step, name, value))  # its row comes later
            for listener in self._listeners if rows else ():
                listener(new)
            return k

    def _set_at(self, step: int, name: str, value) -> bool:
        """A schema column logged by the user (run.log(val_loss=...)): set at the row of
        `step`; False while that row is still to come."""
        steps = self._cols["step"][:self._n]
        at = np.flatnonzero(steps == step)
        if len(at):
            self._cols[name][at[-1]] = value
            return True
        return self._n > 0 and step <= steps[-1]  # a step with no row of its own: dropped

    def extend(self, columns: dict) -> int:
        """Append rows already on the host ({column: values}): a remote job's rows as an
        attached notebook receives them. A column the sender did not know takes its default."""
        k = len(columns["step"])
        with self._drain_lock, self._lock:
            self._put_rows(self._n, columns, k)
        return k

    def _put_rows(self, at: int, columns: dict, k: int) -> None:
        """Rows `at` to `at + k` from host arrays, {column: values} (under the lock)."""
        self._reserve(at + k)
        for m in STORED:
            self._cols[m.name][at:at + k] = filled(m.name, columns.get(m.name), k)
        self._n = at + k

    def extend_logged(self, entries) -> None:
        """Append the user's metrics already on the host: (step, name, value) entries."""
        with self._lock:
            for step, name, value in entries:
                if name not in self._user:
                    self._user[name] = user_metric(name, len(self._user))
                self._logged.append((int(step), str(name), float("nan") if value is None else float(value)))

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

    def logged_since(self, start: int) -> list:
        """The user's metrics from entry `start` on: (step, name, value) tuples."""
        with self._lock:
            return self._logged[start:]

    def last(self, name: str, default=float("nan")):
        with self._lock:
            return self._cols[name][self._n - 1] if self._n else default

    def nbytes_per_step(self) -> int:
        return sum(np.dtype(m.dtype).itemsize for m in STORED)

    def frame(self) -> pd.DataFrame:
        """Every step as a DataFrame (see frames.history_frame)."""
        return frames.history_frame(self)

    def user_names(self) -> list[str]:
        """The user's own metrics, in the order first logged."""
        with self._lock:
            return list(self._user)

    # -- resources ---------------------------------------------------------------------------
    def record_resources(self, time: float, step: int, sample: dict) -> None:
        with self._lock:
            self._resources.append((time, step, sample))

    def resources_since(self, start: int) -> list:
        with self._lock:
            return self._resources[start:]

    def resources_frame(self) -> pd.DataFrame:
        """Every resource sample as a DataFrame (see frames.resources_frame)."""
        return frames.resources_frame(self.resources_since(0))

    # -- samples, histograms, per-layer norms --------------------------------------------------
    def add_sample(self, step: int, text: str) -> None:
        with self._lock:
            self._samples.append((int(step), str(text)))

    def samples_since(self, start: int) -> list:
        """Text samples from index `start` on: (step, text)."""
        with self._lock:
            return self._samples[start:]

    def add_histogram(self, histogram: dict) -> None:
        with self._lock:
            self._histograms.append(histogram)

    def histograms_since(self, start: int) -> list:
        with self._lock:
            return self._histograms[start:]

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
        return frames.events_frame(self.events_since(0))

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything recorded, as tensors and plain values (safe to load with weights_only)."""
        self.drain()
        with self._lock:
            n = self._n
            columns = {k: torch.from_numpy(c[:n].copy()) for k, c in self._cols.items()}
            logged = [[s, name, v] for s, name, v in self._logged]
            samples = [[s, text] for s, text in self._samples]
        frame = self.resources_frame()
        resources = {name: torch.from_numpy(frame[name].to_numpy().copy()) for name in frame}
        events = [[int(step), float(t), str(kind), _plain(value), str(detail)]
                  for step, t, kind, value, detail in self.events_since(0)]
        return {"columns": columns, "events": events, "resources": resources, "clock": self.clock(),
                "logged": logged, "samples": samples}

    def load_state_dict(self, state: dict) -> None:
        """Replace what is recorded with a checkpoint's (before the run starts). A column the
        checkpoint's lmwidget did not have takes its default."""
        columns = {name: saved.numpy() for name, saved in state["columns"].items()}
        with self._lock:
            self._put_rows(0, columns, len(columns["step"]))
            self._events = [list(e) for e in state["events"]]
            res = {k: v.tolist() for k, v in state["resources"].items()}
            names = [k for k in res if k not in ("time", "step")]
            self._resources = [(t, int(s), {k: res[k][i] for k in names if not np.isnan(res[k][i])})
                               for i, (t, s) in enumerate(zip(res["time"], res["step"]))]
            self._samples = [(int(s), str(t)) for s, t in state.get("samples", [])]
        self.extend_logged(state.get("logged", []))
        self._t0 = time.monotonic() - float(state["clock"])


def _to_host(lists: list) -> None:
    """Replace, in place, every tensor in these lists by its value as a Python float: one
    stack and one copy to the host per device, whatever the number of values."""
    by_device: dict = {}
    for values in lists:
        for i, v in enumerate(values):
            if torch.is_tensor(v):
                by_device.setdefault(v.device, []).append((values, i, v))
    for found in by_device.values():
        host = torch.stack([v.detach().reshape(()).double() for _, _, v in found]).cpu().numpy().tolist()
        for (values, i, _), value in zip(found, host):
            values[i] = value


def _plain(value):
    """An event value as a checkpoint may hold it: a number, a string, or None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        return float(value)  # numpy scalars, 0-d tensors
    except (TypeError, ValueError):
        return str(value)
