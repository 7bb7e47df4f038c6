"""Loop: your own PyTorch training loop on the dashboard, watched and steered with one call per step."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import torch
from torch.nn.utils import clip_grads_with_norm_

from lmwidget.checkpoint import saving as checkpoint
from . import loopstate
from lmwidget.core.callbacks import Callbacks
from lmwidget.training.config import check_grad_clip
from lmwidget.core.health import GradNorms, histogram, nonfinite_cause
from lmwidget.core.history import DRAIN_EVERY
from lmwidget.core.source import Source, register
from lmwidget.core.steering import Steered, Steering, base_lr, scale_lr, unwrapped
from lmwidget.system import threads
from lmwidget.system.threads import ThreadTuner, cpu_threads


class StopTraining(Exception):
    """Raised by Loop.tick() when it is called again after the run was stopped (a loop that
    ignored tick()'s False): Loop.start() ends such a loop cleanly, as stopped."""


def check_steerable(model, optimizer, lr_scheduler=None) -> None:
    """Refuse what lmwidget cannot steer, before any thread starts."""
    optimizer, lr_scheduler = unwrapped(optimizer, lr_scheduler)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (AdamW, SGD, ...); got "
                        f"{type(optimizer).__name__}")
    own = {id(p) for p in model.parameters()}
    if not any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
        raise ValueError(f"the optimizer holds none of model {type(model).__name__}'s parameters: "
                         f"pass the optimizer built from model.parameters()")
    if lr_scheduler is not None and unwrapped(getattr(lr_scheduler, "optimizer", None))[0] is not optimizer:
        raise ValueError(f"lr_scheduler {type(lr_scheduler).__name__} is not bound to this optimizer "
                         f"(its .optimizer is another object): pass the scheduler built on it")


def steer(model, optimizer, lr_scheduler=None, *, display: bool = True, **options) -> "Loop":
    """Watch and steer your own training loop: returns its Loop, with the dashboard shown
    in the cell. Call `run.tick(loss)` once per optimizer step, after `loss.backward()` and
    before `optimizer.step()`, and end the loop when it returns False; `run.start(train)`
    runs your loop function `train` in a background thread so the cell returns at once.

    Options: `tokens_per_step` (for tokens/s), `max_steps` (for the progress bar),
    `grad_clip` (lmwidget clips to it; then the clip norm can be steered), `sample` (a
    function of the model returning text: the Sample button), `evaluate` (a function
    returning the validation loss: the Evaluate button), `checkpoint_dir`, `resume` (a
    checkpoint of a Loop: model, optimizer, scheduler, step and history), `callbacks`, `name`.
    """
    check_steerable(model, optimizer, lr_scheduler)
    run = Loop(model, optimizer, lr_scheduler, **options)
    if display:
        run.show()
    return run


class Loop(Steered, Source):
    """A run of your own loop. Build it with `lmwidget.steer(model, optimizer, lr_scheduler)`,
    call `tick(loss)` once per optimizer step, after `backward()` and before
    `optimizer.step()`, and run the loop with `start(fn)` (a background thread) or on the
    caller's thread.

    `tick(loss)` records the loss (kept a device tensor), the gradient norm and each layer's
    (before clipping), the LR the optimizer is about to apply and tokens/s; it carries out
    what was asked since the last step (LR, clip norm, sample, save, histograms, evaluate),
    blocks while paused (no CPU), and returns False once stopped: end the loop then.
    """

    def __init__(self, model, optimizer, lr_scheduler=None, *, tokens_per_step: int | None = None,
                 max_steps: int | None = None, grad_clip: float | None = None, sample=None,
                 evaluate=None, checkpoint_dir=None, resume=None, callbacks=None, name: str | None = None):
        if optimizer is not None or not isinstance(model, torch.nn.Module):  # an adapter binds it later
            check_steerable(model, optimizer, lr_scheduler)
        for what, value in (("tokens_per_step", tokens_per_step), ("max_steps", max_steps)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{what} must be an integer >= 1 or None; got {value!r}")
        for what, fn in (("sample", sample), ("evaluate", evaluate)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{what} must be a function (or None); got {type(fn).__name__}")
        super().__init__()
        optimizer, lr_scheduler = unwrapped(optimizer, lr_scheduler)
        self.model, self.optimizer, self.lr_scheduler = model, optimizer, lr_scheduler
        self.tokens_per_step, self.max_steps = tokens_per_step, max_steps
        self._grad_clip = None if grad_clip is None else check_grad_clip(grad_clip)
        self._sample, self._evaluate = sample, evaluate
        self._label = name or type(model).__name__
        self._lr0 = float("nan")  # the LR before an adapter's optimizer exists
        self.callbacks = Callbacks(callbacks)
        self.norms = GradNorms(model.named_parameters())
        self.steering = Steering(self, self.apply_request)
        self.checkpoint_dir = Path(checkpoint_dir or Path("lmwidget-checkpoints") /
                                   f"loop-{time.strftime('%Y%m%d-%H%M%S')}-{self.id}").expanduser().resolve()
        self.step = 0
        self.tokens_seen = 0  # over every step recorded
        self.error = None
        self._histogram_of = None
        self._began = False
        self._thread = None
        self._tuner = None        # times the CPU threads of the thread start() made
        self._loop_thread = None  # the thread that ticks
        self._t_last = None
        self.record.add_listener(self._check_finite)
        if resume is not None:
            self._restore(checkpoint.read(resume))
        self.unsupported = self._limits()

    def _limits(self) -> dict:
        out = {}
        if self._grad_clip is None:
            out["grad_clip"] = "lmwidget clips only when you let it: pass grad_clip=... (0 for off)"
        if self._sample is None:
            out["sample"] = "pass sample=fn, a function of the model that returns text"
        if self._evaluate is None:
            out["evaluate"] = "pass evaluate=fn, a function that returns the validation loss"
        return out

    #: what close() lets go of: the model and what holds it or its state (adapters add theirs)
    RELEASED = ("model", "optimizer", "lr_scheduler", "_sample", "_evaluate")

    def _release(self) -> None:
        """Drop lmwidget's references to your model, optimizer, scheduler and functions (you
        may hold your own); what it showed of them stays."""
        self._closed_as = {"describe": self.describe(), "options": self.options(), "lr": self.lr,
                           "device": self.device}
        for name in self.RELEASED:
            setattr(self, name, None)
        self.norms.params = []
        self._histogram_of = None

    # -- what it is -------------------------------------------------------------------------
    def describe(self) -> dict:
        if self.closed:
            return dict(self._closed_as["describe"])
        params = sum(p.numel() for p in self.model.parameters())
        out = {"model": f"{self._label} ({params:,} parameters)"}
        if self.optimizer is not None:  # a framework's is made as its training begins
            out["optimizer"] = type(self.optimizer).__name__
        if self.lr_scheduler is not None:
            out["schedule"] = type(self.lr_scheduler).__name__
        return out

    def options(self) -> dict:
        if self.closed:
            return dict(self._closed_as["options"])
        return {"model": self._label, "optimizer": type(self.optimizer).__name__ if self.optimizer else None,
                "lr_scheduler": type(self.lr_scheduler).__name__ if self.lr_scheduler else None,
                "max_steps": self.max_steps, "tokens_per_step": self.tokens_per_step, "lr": self.lr,
                "grad_clip": self._grad_clip}

    @property
    def layers(self) -> list[str]:
        return list(self.norms.names)

    @property
    def device(self) -> torch.device:
        return self._closed_as["device"] if self.closed else next(self.model.parameters()).device

    @property
    def threads(self) -> int | None:
        """The CPU intra-op threads of the thread start() made (timed: every CPU or one
        fewer); None for a loop on your own thread, or on an accelerator."""
        return self._tuner.threads if self._tuner is not None else None

    @property
    def started(self) -> bool:
        return self._began

    @property
    def lr(self) -> float:
        """The base LR: the scheduler's first base LR, else the first param group's LR."""
        if self.closed:
            return self._closed_as["lr"]
        if self.optimizer is None:  # a framework's, not made yet
            return self._lr0
        return base_lr(self.optimizer, self.lr_scheduler)

    @property
    def grad_clip(self):
        return self._grad_clip

    @property
    def last_save(self):
        return self.steering.last_save

    @property
    def checkpoints(self) -> list[dict]:
        return list(self.steering.saved)

    # -- the loop's side ----------------------------------------------------------------------
    def tick(self, loss: torch.Tensor, *, tokens: int | None = None) -> bool:
        """Call once per optimizer step, after backward() and before optimizer.step(): records
        the step, carries out what was asked, blocks while paused; False once stopped."""
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
        self.tokens_seen += tokens or 0
        pending = self.record.push(
            step=step, tokens=self.tokens_seen, time=self.record.clock(),
            lr=lr, loss=loss.detach(), grad_norm=grad_norm, step_time=dt,
            tokens_per_sec=tokens / dt if tokens and dt > 0 else float("nan"))
        self.step = step
        if layers is not None:
            self.record.layer_grad_norms = (step, layers)
        if pending >= DRAIN_EVERY:  # bounded memory when no view drains for us
            self.record.drain()
        if self.callbacks.wants("on_step_end"):
            self.callbacks.call("on_step_end", self, step, {"loss": loss.detach(), "grad_norm": grad_norm,
                                                            "val_loss": None, "lr": self.lr, "tokens": tokens})

    def bind(self, optimizer, lr_scheduler=None) -> None:
        """The optimizer and scheduler a framework made as training began (an adapter's)."""
        optimizer, lr_scheduler = unwrapped(optimizer, lr_scheduler)
        check_steerable(self.model, optimizer, lr_scheduler)
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler

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
        grad_norm, layers = self.norms()
        if self._histogram_of is not None:
            self._take_histograms(self.step + 1, "this training step (before clipping)")
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

    def _check_finite(self, rows: dict) -> None:
        """A drained step whose loss or grad norm is not finite: marked, and the run pauses
        (your optimizer has applied that update; lmwidget cannot skip it)."""
        for step, loss, norm in zip(rows["step"], rows["loss"], rows["grad_norm"]):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                self.steering.nonfinite(int(step), nonfinite_cause(loss, norm))
                return

    # -- requests, carried out between steps ------------------------------------------------
    def apply_request(self, kind: str, value, note: str):
        """Carry out one request; returns the event's value, or False for no event."""
        if kind == "lr":
            scale_lr([self.optimizer], [self.lr_scheduler], value / self.lr)
        elif kind == "grad_clip":
            self._grad_clip = value
        elif kind == "sample":
            self.record.add_sample(self.step, self._generate())
        elif kind == "histogram":
            if self.steering.between_steps:
                self._take_histograms(self.step, "your last backward pass (taken between steps)")
            else:
                self._histogram_of = value
                return False
        elif kind == "evaluate":
            value = self._evaluate()
            self.record.log(self.step, {"val_loss": value})
            self.callbacks.call("on_eval", self, self.step, float(value))
            return ("eval", value, note or "asked for")
        elif kind == "save":
            self.steering.run_saves(self._write)
            return False
        return value

    def _generate(self) -> str:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return str(self._sample(self.model))
        finally:
            self.model.train(was)

    def _take_histograms(self, step: int, where: str) -> None:
        group, self._histogram_of = self._histogram_of, None
        params = self.norms.group_params(group)
        grads = [p.grad.flatten() for p in params if p.grad is not None]
        self.record.add_histogram({
            "step": step, "group": group, "source": where,
            "weights": histogram(torch.cat([p.detach().flatten() for p in params])),
            "grads": histogram(torch.cat(grads)) if grads else None})

    # -- checkpoints ------------------------------------------------------------------------
    def request_save(self, path=None) -> checkpoint.SaveJob:
        job = checkpoint.SaveJob(path)
        if threading.current_thread() is self._loop_thread:  # your loop itself, between two ticks
            self.steering.ask_save(job, self._write, now=True)
            return job
        return self.steering.ask_save(job, self._write)

    def _write(self, path, step: int) -> dict:
        """One checkpoint of this loop (model, optimizer, scheduler, step, history)."""
        return checkpoint.save_to(loopstate.payload(self, "saved"), path, self.checkpoint_dir,
                                  checkpoint.SAVED.format(step))

    def _restore(self, payload: dict) -> None:
        loopstate.restore(self, payload)
        self.restored_from = payload["path"]

    def _request(self, kind: str, value=None, note: str = "") -> None:
        self.steering.request(kind, value, note)

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
