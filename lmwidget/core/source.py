"""Source: the one interface between the views and whatever trains (lmwidget's loop, yours, a framework's, a job)."""

from __future__ import annotations

import itertools
from pathlib import Path
import threading
import time

import pandas as pd
import torch

from lmwidget.system.resources import ResourceSampler

from .closing import Closable
from .control import ENDED, LIVE_ONLY, Control, ended_refusal
from .history import History
from .values import check_grad_clip, check_lr
from .viewers import Viewable
from .waiting import Waitable

# what a source may be asked to do; a view shows each one a source cannot do disabled
CONTROLS = ("pause", "stop", "lr", "grad_clip", "sample", "save", "histogram", "evaluate")
_ids = itertools.count(1)  # one numbering for every source of this process


class Source(Viewable, Closable, Waitable):
    """What the dashboard, compare, the static summary, the exports and a job's stream read,
    and what their controls act on.

    A source has a `record` (a History: metrics by step, the user's metrics, events,
    resource samples, text samples, histograms) and a `control` (a Control: pause, stop and
    requests, crossing threads). It says where the run stands (`state`, `step`, `max_steps`,
    `lr`, `grad_clip`, `paused`, `elapsed`, `error`, `anomaly`), what it is (`describe()`,
    `options()`, `layers`, `device`), and which controls it cannot carry out
    (`unsupported`: {control: why}). Subclasses: Run (lmwidget's own loop), Loop (yours,
    and the Hugging Face and Lightning adapters built on it) and RemoteRun (an attached job).
    """

    #: {control: why} for every control (see CONTROLS) this source cannot carry out
    unsupported: dict = {}

    def __init__(self):
        self.id = next(_ids)
        self.record = History()
        self.control = Control()
        self.ghosts: list = []     # earlier runs its dashboard draws faintly
        self._dashboard = None     # made on first use (Viewable.dashboard)
        self._shown_in = None      # the execution count of the cell that displayed the dashboard
        self._lock = threading.Lock()

    # -- what it is ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The run's name in messages and views: "run <id>"."""
        return f"run {self.id}"

    def describe(self) -> dict:
        """What trains and how, as short strings for a header: at least "model"."""
        return {"model": "a model"}

    def options(self) -> dict:
        """The run's options as plain values (compare labels runs by those that differ)."""
        return {}

    @property
    def layers(self) -> list[str]:
        """The layer groups of the per-layer gradient norms, in model order."""
        return []

    @property
    def device(self) -> torch.device:
        """The device the model trains on; the CPU unless a subclass says otherwise."""
        return torch.device("cpu")

    # -- where it stands -----------------------------------------------------------------------
    state = "running"
    step = 0
    max_steps = None   # None: not known (the progress shows no total)
    lr = float("nan")
    grad_clip = 0.0
    started = False
    error = None
    anomaly = None
    restored_from = None

    @property
    def paused(self) -> bool:
        """Paused, or asked to pause (the Pause button reads "Resume"); never once ended."""
        return self.control.paused and not self.ended

    @property
    def self_paused(self) -> bool:
        """Paused by a non-finite step of its own, not by a request."""
        return False

    @property
    def ended(self) -> bool:
        """True once the run's state is "stopped", "finished" or "failed"."""
        return self.state in ENDED

    @property
    def elapsed(self) -> float:
        """Seconds on the run's clock (a resumed run's goes on from its checkpoint's); 0.0 before the start."""
        return self.record.clock() if self.started else 0.0

    @property
    def start_time(self) -> float | None:
        """The wall-clock time (time.time()) of the run's clock's zero, for exports."""
        return time.time() - self.elapsed if self.started else None

    @property
    def last_save(self):
        """The newest save's outcome: ("ok", {"step", "path", "bytes", "seconds"}) or
        ("error", message); None before any."""
        return None

    @property
    def checkpoints(self) -> list[dict]:
        """Every checkpoint the run wrote (step, kind, path, bytes, seconds); empty here."""
        return []

    # -- its record ---------------------------------------------------------------------------
    @property
    def history(self):
        """Per-step metrics as a pandas DataFrame (a fresh copy at each access)."""
        return self.record.frame()

    @property
    def events(self):
        """What happened, as a DataFrame: step, time, kind, value, detail."""
        return self.record.events_frame()

    @property
    def resources(self):
        """Every resource sample: about one a second while the run trains (lmwidget.core.monitor)."""
        return self.record.resources_frame()

    @property
    def samples(self) -> list[tuple[int, str]]:
        """Every text sample taken, as (step, text), oldest first."""
        return self.record.samples_since(0)

    @property
    def histograms(self) -> list[dict]:
        """Histograms asked for with request_histogram(), oldest first."""
        return self.record.histograms_since(0)

    @property
    def layer_grad_norms(self):
        """The newest step's gradient norm of each layer group (before clipping), as a
        pandas Series named by that step; None before the first step."""
        latest = self.record.layer_grad_norms
        if latest is None:
            return None

        step, norms = latest
        return pd.Series(torch.as_tensor(norms).double().cpu().numpy(), index=self.layers, name=step)

    def log(self, **metrics) -> None:
        """Record metrics of your own at the current step (`run.log(val_acc=0.91)`): numbers
        or 0-d tensors (kept on their device until a view reads them). Each lands in the
        history, the exports and a chart of its own."""
        self.record.log(self.step, metrics)

    def log_event(self, kind: str, value=None, detail: str = "") -> None:
        """Mark something at the current step: it joins `events` and the charts' markers."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty string; got {kind!r}")
        self.record.record_event(self.step, kind, value, str(detail))

    @property
    def gpu_status(self) -> str:
        """Which GPU the resource samples describe, or why there is none."""
        return self._resource_sampler().gpu_status

    def sample_resources(self) -> dict:
        """Sample CPU, memory and GPU now and record it (the resource monitor calls this about
        once a second; never the training loop)."""
        sampler = self._resource_sampler()
        with self._lock:
            sample = sampler.sample()
        self.record.record_resources(self.record.clock(), self.step, sample)
        return sample

    def _resource_sampler(self):
        with self._lock:
            if getattr(self, "_sampler", None) is None:
                self._sampler = ResourceSampler(self.device)
            return self._sampler

    # -- steering -----------------------------------------------------------------------------
    def supports(self, control: str) -> bool:
        """True when this source can carry out `control` (it is not in `unsupported`).

        Args:
            control: one of CONTROLS ("pause", "stop", "lr", "save", ...).
        """
        return control not in self.unsupported

    def _check(self, control: str) -> None:
        """Refuse a control this source cannot carry out, or one that acts only on a loop
        still training once the run has ended, saying why."""
        if control in self.unsupported:
            raise NotImplementedError(f"{self.name} cannot {control}: {self.unsupported[control]}")
        if control in LIVE_ONLY and self.ended:
            raise RuntimeError(ended_refusal(self.name, self.state, self.step, control))

    # pause, resume and stop ask for a state that an ended run is past: then they do nothing
    def pause(self, note: str = "") -> None:
        """Pause at the next step boundary; `note` (who or why) goes into the pause event.
        Nothing once the run has ended."""
        if not self._past("pause"):
            self.control.pause(note)

    def resume(self, note: str = "") -> None:
        """Let a paused run go on from the step boundary where it waits; `note` goes into the
        resume event. Nothing once it has ended."""
        if not self._past("pause"):
            self.control.resume(note)

    def stop(self, note: str = "") -> None:
        """Stop at the next step boundary; `note` (why) goes into the stop event. Nothing
        once the run has ended."""
        if not self._past("stop"):
            self.control.stop(note)

    def _past(self, control: str) -> bool:
        """True when the run has ended (the control has nothing to do); refuses a control
        this source cannot carry out."""
        if control in self.unsupported:
            self._check(control)
        return self.ended

    def set_lr(self, lr, note: str = "") -> None:
        """Set the base learning rate, applied at the next step; a schedule still shapes it."""
        self._check("lr")
        self._request("lr", check_lr(lr), note)

    def set_grad_clip(self, grad_clip, note: str = "") -> None:
        """Set the max gradient norm (0 turns clipping off), applied at the next step."""
        self._check("grad_clip")
        self._request("grad_clip", check_grad_clip(grad_clip), note)

    def request_sample(self, note: str = "") -> None:
        """Ask for a text sample without waiting: it lands in `samples` (and the dashboard)."""
        self._check("sample")
        self._request("sample", None, note)

    def sample(self, timeout: float | None = 30.0) -> str:
        """Text generated by the current model (taken between two training steps)."""
        before = len(self.record.samples_since(0))
        self.request_sample()
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(samples := self.record.samples_since(before)) == 0:
            if self.error is not None and self.ended:
                raise RuntimeError(f"{self.name} failed before the sample was taken: {self.error!r}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no sample within {timeout} s; the training step may be slow")
            time.sleep(0.01)
        return samples[0][1]

    def request_histogram(self, layer: str) -> None:
        """Ask for histograms of a layer group's weights and gradients (see `layers`)."""
        self._check("histogram")
        if layer not in self.layers:
            raise ValueError(f"unknown layer {layer!r}; this model's layers: {', '.join(self.layers)}")
        self._request("histogram", layer)

    def evaluate(self, note: str = "") -> None:
        """Ask for a validation estimate at the next step boundary (the `val_loss` column)."""
        self._check("evaluate")
        self._request("evaluate", None, note)

    def request_save(self, path=None):
        """Ask for a checkpoint without waiting; returns a job whose `wait(timeout)` gives
        {"path", "step", "bytes", ...}."""
        raise NotImplementedError(f"{self.name} cannot save: {self.unsupported.get('save', 'not built')}")

    def save(self, path=None, timeout: float | None = 60.0):
        """Write a checkpoint of this step and return its path; blocks until it is written."""
        return Path(self.request_save(path).wait(timeout)["path"])

    def _request(self, kind: str, value=None, note: str = "") -> None:
        """Queue a request for the loop, carried out at its next step boundary."""
        if not self.control.request(kind, value, note):
            raise RuntimeError(f"{self.name} has ended ({self.state}): it cannot {kind} any more")

    def watch(self, event: threading.Event) -> None:
        """Set `event` whenever the run's state changes (a view redraws at once)."""
        self.control.watch(event)

    def unwatch(self, event: threading.Event) -> None:
        """Stop setting `event` at the run's state changes (undoes watch())."""
        self.control.unwatch(event)

    def __repr__(self) -> str:
        total = "?" if self.max_steps is None else self.max_steps
        return (f"<lmwidget.{type(self).__name__} {self.id}: {self.describe().get('model')}, "
                f"{self.state}, step {self.step}/{total}, lr={self.lr:.3g}>")
