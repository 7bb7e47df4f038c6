"""Steering: what every training loop does at a step boundary (requests, pause, stop) and at its end.

lmwidget's own loop, your loop (Loop) and the Hugging Face and Lightning adapters all go
through it, so a pause, a new LR or a stop means the same thing on each.
"""

from __future__ import annotations

import threading

import torch

from .control import ENDED, LIVE_ONLY, ended_refusal

LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")  # what a schedule keeps in a param group


class Steered:
    """What a loop that goes through `self.steering` shows of it: its state and anomaly."""

    steering: "Steering"

    @property
    def state(self) -> str:
        """One of "running", "paused", "stopped", "finished", "failed"."""
        return self.steering.state

    @property
    def anomaly(self):
        """The last non-finite step: (step, cause), or None."""
        return self.steering.anomaly

    @property
    def self_paused(self) -> bool:
        """Paused by a non-finite step, not by a request."""
        return self.steering.self_paused


def unwrapped(optimizer, lr_scheduler=None):
    """The torch optimizer and scheduler inside a framework's wrappers (Accelerate's
    AcceleratedOptimizer and AcceleratedScheduler, as the Hugging Face Trainer makes them)."""
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer):
        optimizer = inner
    inner = getattr(lr_scheduler, "scheduler", None)
    if inner is not None and hasattr(inner, "base_lrs"):
        lr_scheduler = inner
    return optimizer, lr_scheduler


def base_lr(optimizer, lr_scheduler=None) -> float:
    """The base LR a user steers: the scheduler's first base LR, else the first group's LR."""
    if lr_scheduler is not None and getattr(lr_scheduler, "base_lrs", None):
        return float(lr_scheduler.base_lrs[0])
    return float(optimizer.param_groups[0]["lr"])


def scale_lr(optimizers, schedulers, ratio: float) -> None:
    """Multiply every LR by `ratio`: each param group's (its current LR and the schedule's
    own keys), and each scheduler's base LRs, so a schedule keeps shaping the new base and
    groups keep their ratios."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for key in LR_KEYS:
                if key not in group:
                    continue
                if torch.is_tensor(group[key]):
                    group[key].mul_(ratio)
                else:
                    group[key] = group[key] * ratio
    for scheduler in schedulers:
        if scheduler is None:
            continue
        if getattr(scheduler, "base_lrs", None) is not None:
            scheduler.base_lrs = [b * ratio for b in scheduler.base_lrs]


class Steering:
    """The step boundary and the end of a run, for a source whose loop calls `boundary()`.

    `apply(kind, value, note)` carries out one request and returns the event's value (or a
    (kind, value, note) triple, or False for no event). Who changes what: `boundary` and
    `end` run on the loop's thread; requests made after the end are carried out by the
    caller, under the same lock as the end's leftovers, so none is lost or reordered.
    """

    def __init__(self, source, apply):
        self.source, self.record, self.control = source, source.record, source.control
        self.apply = apply
        self._state = "running"
        self.stopped = False       # the loop was told to stop (and told so)
        self.self_paused = False   # paused by a non-finite step of its own
        self.anomaly = None        # the last non-finite step: (step, cause)
        self.clock0 = 0.0          # where the run's clock starts (a resumed run's goes on)
        self.last_save = None      # ("ok", result) or ("error", message)
        self.saved: list[dict] = []
        self._saves: list = []
        self._lock = threading.RLock()  # the end's leftover requests and later ones, in order

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        self.control.announce()  # views redraw now, not at their next tick

    @property
    def between_steps(self) -> bool:
        """No step is under way: paused, ended, or not begun (the loop's gradients are stale)."""
        return self._state != "running" or self.control.closed or not self.source.started

    def boundary(self) -> bool:
        """Carry out the requests, wait while paused (no CPU); False when the loop must stop."""
        while True:
            requests, paused, stop, note = self.decide()
            for kind, (value, request_note) in requests.items():
                self._carry_out(kind, value, request_note)
            self.between()
            if stop:
                if not self.stopped:
                    self.record.record_event(self.source.step, "stop", None, note)
                self.stopped = True
                return False
            if not paused:
                self.self_paused = False
                self.resuming()
                if self._state == "paused":
                    # the event, then the state
                    self.record.record_event(self.source.step, "resume", None, self.control.pause_note)
                    self.state = "running"
                return True
            if self._state != "paused":
                self.pausing()
                self.record.record_event(self.source.step, "pause", None, self.control.pause_note)
                self.record.drain()  # every reader sees the run up to where it paused
                self.state = "paused"
            self.wait_paused()

    # what a loop with more to do at its boundary (lmwidget's own, under torchrun) overrides
    def decide(self):
        """This boundary's (requests, paused, stop, stop note)."""
        c = self.control
        return c.take(), c.paused, c.stop_requested, c.stop_note

    def between(self) -> None:
        """After the requests, before a pause or the next step."""

    def pausing(self) -> None:
        """The loop is about to pause."""

    def resuming(self) -> None:
        """The loop goes on (or starts) from a boundary."""

    def wait_paused(self) -> None:
        self.control.wait_while_paused()

    def _carry_out(self, kind: str, value, note: str) -> None:
        event = self.apply(kind, value, note)
        if event is False:
            return
        if isinstance(event, tuple):
            kind, value, note = event
        else:
            value = event
        self.record.record_event(self.source.step, kind, value, note)

    def request(self, kind: str, value=None, note: str = "") -> None:
        """A request from any thread: queued for the loop, or, once it has ended, carried
        out now (a sample, a histogram) or refused (a new LR or clip norm: RuntimeError).
        Under the end's lock: a request is either among the end's leftovers or after them."""
        with self._lock:
            if self.control.request(kind, value, note):
                return
            if kind in LIVE_ONLY:
                raise RuntimeError(ended_refusal(self.source.name, self._state, self.source.step, kind))
            self._carry_out(kind, value, note)

    def end(self, state: str | None = None) -> None:
        """The loop is over: the requests left are carried out, and the state is final
        ("failed", or else "stopped" or "finished")."""
        with self._lock:
            for kind, (value, note) in self.control.close().items():
                self._carry_out(kind, value, note)
            max_steps = self.source.max_steps
            if state is None:
                stopped = self.stopped or self.control.stop_requested
                state = "stopped" if stopped or (max_steps and self.source.step < max_steps) else "finished"
            self.state = state

    def nonfinite(self, step: int, cause: str, value=None, pause: bool = True,
                  update: str = "your optimizer applied it") -> None:
        """A step whose loss or grad norm was not finite: marked, and (`pause`) the run
        pauses itself, through the same control as the button."""
        self.anomaly = (step, cause)
        self.record.record_event(step, "anomaly", value, f"{cause} at step {step}: {update}"
                                 + ("; the run paused itself" if pause else ""))
        if pause and not self.control.closed:
            self.self_paused = True  # until resumed: wait() returns rather than hang
            self.control.pause()

    # -- saves --------------------------------------------------------------------------------
    def ask_save(self, job, write, now: bool = False):
        """Write `job` at the next step boundary, or now when the loop is not running (or
        `now`: asked by the loop's own thread, between two steps)."""
        with self._lock:
            self._saves.append(job)
            if not now and self.source.started and self.control.request("save"):
                return job
        self.run_saves(write)
        return job

    def run_saves(self, write) -> None:
        """Write every save asked for: `write(path, step)` writes one (path None: the
        source's own place) and returns {"path", "kind", "bytes", "seconds"}."""
        with self._lock:
            jobs, self._saves = self._saves, []
        for job in jobs:
            step = self.source.step
            try:
                result = {**write(job.path, step), "step": step}
                self.saved.append(result)
                self.last_save = ("ok", result)
                self.record.record_event(step, "checkpoint", None,
                                         f"saved: {result['path']} ({result['bytes'] / 1e6:.2f} MB)")
                job.finish(result)
            except Exception as e:
                self.last_save = ("error", f"save at step {step} failed: {e}")
                self.record.record_event(step, "checkpoint", None, self.last_save[1])
                job.finish(error=e)

    def finish_saves(self, result: dict) -> None:
        """A framework wrote its own checkpoint (`result`): every save asked for is done by it."""
        with self._lock:
            jobs, self._saves = self._saves, []
        self.saved.append(result)
        self.last_save = ("ok", result)
        for job in jobs:
            job.finish(result)

    @property
    def ended(self) -> bool:
        return self._state in ENDED
