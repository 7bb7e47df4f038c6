"""Loop: your own PyTorch training loop on the dashboard, watched and steered with one call per step."""

from __future__ import annotations

import logging
import math
import threading
import time

import torch
from torch.nn.utils import clip_grads_with_norm_

from lmwidget.checkpoint import saving as checkpoint
from lmwidget.core.health import nonfinite_cause
from lmwidget.core.history import DRAIN_EVERY
from lmwidget.core.monitor import register
from lmwidget.system import threads
from lmwidget.system.threads import ThreadTuner, cpu_threads
from . import loopstate
from .steerable import Steerable


class StopTraining(Exception):
    """Raised by Loop.tick() when it is called again after the run was stopped (a loop that
    ignored tick()'s False): Loop.start() ends such a loop cleanly, as stopped."""


class Loop(Steerable):
    """A run of your own loop. Build it with `lmwidget.steer(model, optimizer, lr_scheduler)`,
    call `tick(loss)` once per optimizer step, after `backward()` and before
    `optimizer.step()`, and run the loop with `start(fn)` (a background thread) or on the
    caller's thread.

    `tick(loss)` records the loss (kept a device tensor), the gradient norm and each layer's
    (before clipping), the LR the optimizer is about to apply and tokens/s; it carries out
    what was asked since the last step (LR, clip norm, sample, save, histograms, evaluate),
    blocks while paused (no CPU), and returns False once stopped: end the loop then.

    Args:
        model: your nn.Module.
        optimizer: the optimizer built on its parameters.
        lr_scheduler: its LR scheduler, if any.
        resume: a checkpoint of a Loop (its save()) to continue: model, optimizer,
            scheduler, step and history.
        **options: `tokens_per_step`, `max_steps`, `grad_clip`, `sample`, `evaluate`,
            `checkpoint_dir`, `callbacks`, `name` (see Steerable).

    Raises:
        TypeError, ValueError: what lmwidget cannot steer, or an option out of range.
        CheckpointError: a `resume` checkpoint that does not fit.
    """

    def __init__(self, model, optimizer, lr_scheduler=None, *, resume=None, **options):
        super().__init__(model, optimizer, lr_scheduler, **options)
        self.step = 0
        self.tokens_seen = 0  # over every step recorded
        self.error = None
        self._began = False
        self._thread = None
        self._tuner = None        # times the CPU threads of the thread start() made
        self._loop_thread = None  # the thread that ticks
        self._t_last = None
        self.record.add_listener(self._check_finite)
        if resume is not None:
            self._restore(checkpoint.read(resume))
        self.unsupported = self._limits()

    # -- where it stands ---------------------------------------------------------------------
    @property
    def threads(self) -> int | None:
        """The CPU intra-op threads of the thread start() made (timed: every CPU or one
        fewer); None for a loop on your own thread, or on an accelerator."""
        return self._tuner.threads if self._tuner is not None else None

    @property
    def started(self) -> bool:
        """True once the run has begun: at its first tick() (begin()), not at start()."""
        return self._began

    # -- the loop's side ----------------------------------------------------------------------
    def tick(self, loss: torch.Tensor, *, tokens: int | None = None) -> bool:
        """Call once per optimizer step, after backward() and before optimizer.step(): records
        the step, carries out what was asked, blocks while paused; False once stopped.

        Args:
            loss: the step's training loss, a tensor (never read here: no host-device sync).
                With gradient accumulation, pass the mean over the step's micro-batches (the
                value the frameworks log), not the last micro-batch's nor the scaled one's.
            tokens: the tokens this step trained on, when not `tokens_per_step`.

        Returns:
            True to go on; False once the run is stopped (end your loop).

        Raises:
            StopTraining: a tick after one that returned False (the loop went on).
        """
        now = time.perf_counter()
        first = not self._began
        if first:
            self.begin()
        elif self.steering.stopped:
            raise StopTraining(f"{self.name} was stopped at step {self.step}: tick() returned False "
                               f"then, and the loop should have ended")
        dt = float("nan") if first else now - self._t_last  # the whole step: yours and the optimizer's
        if not self.steering.boundary():  # requests, pause; False: stopped
            return False
        grad_norm, layers = self.measure()
        self.push(loss, grad_norm, layers, self.optimizer.param_groups[0]["lr"], tokens, dt)
        self._t_last = time.perf_counter()
        return True

    def push(self, loss, grad_norm, layers, lr, tokens, dt: float) -> None:
        """Record one optimizer step (its values may be device tensors: nothing is read).
        Every way of training records its steps here: the thread tuner times them here too."""
        if self._tuner is not None and threading.current_thread() is self._thread:
            self._tuner.tick(time.perf_counter())
        step = self.step + 1
        tokens = self.tokens_per_step if tokens is None else tokens
        rate = tokens / dt if tokens and dt > 0 else float("nan")
        loss = loss.detach()
        if self.sync is not None:  # every rank's: means of loss and grad norm, tokens summed
            tokens = (tokens or 0) * self.sync.world_size
            loss, grad_norm, rate = self.sync.reduce(step, loss, torch.as_tensor(grad_norm, device=loss.device), rate)
        self.tokens_seen += tokens or 0
        pending = self.record.push(
            step=step, tokens=self.tokens_seen, time=self.record.clock(),
            lr=lr, loss=loss, grad_norm=grad_norm, step_time=dt, tokens_per_sec=rate)
        self.step = step
        if layers is not None:
            self.record.layer_grad_norms = (step, layers)
        if pending >= DRAIN_EVERY:  # bounded memory when no view drains for us
            self.record.drain()
        if self.callbacks.wants("on_step_end"):
            self.callbacks.call("on_step_end", self, step, {"loss": loss, "grad_norm": grad_norm,
                                                            "val_loss": None, "lr": self.lr, "tokens": tokens})

    def begin(self) -> None:
        """The first step: the run starts (its clock, callbacks, the runs of this process)."""
        self._began = True
        self._loop_thread = threading.current_thread()
        register(self)
        self.record.start_clock(self.steering.clock0)
        self._t_last = time.perf_counter()
        self.callbacks.call("on_train_begin", self)
        if self._dashboard is not None:
            self._dashboard.kick()  # its updater waited for the start

    def measure(self):
        """The gradient norms (device tensors, before clipping), the clip if lmwidget clips,
        and the histograms asked for: while the gradients exist."""
        grad_norm, layers = self.steering.gradients(self.step + 1)
        if self._grad_clip:
            clip_grads_with_norm_(self.norms.params, self._grad_clip, grad_norm)
        return grad_norm, layers

    def end(self, error: BaseException | None = None) -> None:
        """The loop has ended (returned, was stopped, or raised `error`)."""
        if self.ended:
            return
        self.error = error
        self.steering.end("failed" if error is not None else None)
        self.record.drain()
        self.callbacks.call("on_train_end", self)

    def note_log(self, logger: str, level: int, message: str) -> None:
        """A framework's log line kept out of the cell: an event of kind "log" at this step,
        its value the level ("info", "warning", ...), its detail the logger and the line.

        Args:
            logger: the name of the framework's logger.
            level: the record's level (logging.INFO, ...).
            message: the line.
        """
        self.record.record_event(self.step, "log", logging.getLevelName(level).lower(), f"{logger}: {message}")

    def _check_finite(self, rows: dict) -> None:
        """A drained step whose loss or grad norm is not finite: marked, and the run pauses
        (your optimizer has applied that update; lmwidget cannot skip it)."""
        for step, loss, norm in zip(rows["step"], rows["loss"], rows["grad_norm"]):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                self.steering.nonfinite(int(step), nonfinite_cause(loss, norm))
                return

    # -- checkpoints ------------------------------------------------------------------------
    def request_save(self, path=None) -> checkpoint.PendingSave:
        job = checkpoint.PendingSave(path)
        if threading.current_thread() is self._loop_thread:  # your loop itself, between two ticks
            self.steering.ask_save(job, self._write, now=True)
            return job
        return self.steering.ask_save(job, self._write)

    def _restore(self, payload: dict) -> None:
        loopstate.restore(self, payload)
        self.restored_from = payload["path"]

    # -- running it --------------------------------------------------------------------------
    def start(self, fn, *args, **kwargs) -> "Loop":
        """Run `fn(*args, **kwargs)`, your training loop, in a background thread; returns at
        once. The run ends when `fn` returns (finished, or stopped if stopped), raises
        (failed: `wait()` re-raises it), or raises StopTraining (stopped)."""
        if self._thread is not None or self._began:
            raise RuntimeError(f"{self.name} has already started: build a new one with lmwidget.steer()")
        if not callable(fn):
            raise TypeError(f"start() takes your loop as a function; got {type(fn).__name__}")

        def target():
            if self.device.type == "cpu":  # this thread's only: every CPU or one fewer, timed
                self._tuner = ThreadTuner(cpu_threads(0))
            try:
                fn(*args, **kwargs)
            except StopTraining:
                self.end()
            except BaseException as e:  # shown on the dashboard, re-raised by wait()
                self.end(e)
            else:
                self.end()

        self._thread = threading.Thread(target=target, daemon=True, name=f"lmwidget-run-{self.id}")
        register(self)
        threads.start(self._thread, cpu=self.device.type == "cpu")
        if self._dashboard is not None:
            self._dashboard.kick()
        return self

    def __enter__(self) -> "Loop":
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.end(error if kind is not None and kind is not StopTraining else None)

    @property
    def alive(self) -> bool:
        """True while the thread of start() runs; for a loop on your own thread, from its first
        tick() until it ends."""
        return self._thread.is_alive() if self._thread is not None else (self._began and not self.ended)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return super().wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (True) or `timeout` s pass (False); re-raises the error
        of a loop that failed."""
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError(f"{self.name}'s own loop called wait(): it would wait for itself forever")
        done = self.join(timeout) if self._thread is not None else super().wait(timeout)
        if done and self.error is not None:
            raise self.error
        return done
