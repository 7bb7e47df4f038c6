"""Steerable: your model, optimizer and scheduler as lmwidget steers them; what the views see of them, and what the step boundary does with them."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lmwidget.checkpoint import saving as checkpoint
from lmwidget.core.boundary import Boundary
from lmwidget.core.callbacks import Callbacks
from lmwidget.core.health import GradNorms
from lmwidget.core.source import Source
from lmwidget.core.steering import Steered, base_lr, scale_lr, unwrapped
from lmwidget.core.values import check_grad_clip
from . import loopstate
from .ranked import RankedBoundary


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


class Steerable(Steered, Source):
    """A model with the optimizer and scheduler built on it, steered by lmwidget: what the
    views see of them (description, options, layers, LR, clip norm, saves) and what the step
    boundary carries out with them (a new LR or clip norm, a sample, an evaluation, a save).
    `Loop` adds how your loop drives it; the framework adapters change the means.

    Args:
        model: your nn.Module.
        optimizer: the optimizer built on its parameters (None: a framework's, bound later).
        lr_scheduler: its LR scheduler, if any.
        tokens_per_step: tokens in one optimizer step (for tokens/s).
        max_steps: the steps the loop will take (for the progress bar).
        grad_clip: the clip norm lmwidget applies (then it can be steered); None: yours.
        sample: a function of the model returning text (the Sample button).
        evaluate: a function returning the validation loss (the Evaluate button).
        checkpoint_dir: where saves go.
        callbacks: a Callback or a list of them.
        name: the model's name in the dashboard (else its class's).
        sync: the ranks of a distributed run (`ranked.join_ranks`): rank 0 decides at each
            step boundary and every rank acts alike; None for one process.

    Raises:
        TypeError, ValueError: what lmwidget cannot steer, or an option out of range.
    """

    def __init__(self, model, optimizer, lr_scheduler=None, *, tokens_per_step: int | None = None,
                 max_steps: int | None = None, grad_clip: float | None = None, sample=None,
                 evaluate=None, checkpoint_dir=None, callbacks=None, name: str | None = None, sync=None):
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
        wrapped = isinstance(model, torch.nn.parallel.DistributedDataParallel)  # name what it wraps
        self._label = name or type(model.module if wrapped else model).__name__
        self._lr0 = float("nan")  # the LR before an adapter's optimizer exists
        self.callbacks = Callbacks(callbacks)
        self.norms = GradNorms(model.named_parameters())
        self.sync = sync
        means = dict(set_lr=self._apply_lr, set_grad_clip=self._apply_grad_clip, sample=self._generate,
                     evaluate=self._evaluate_now, save=self._save_now, on_eval=self._on_eval)
        self.steering = (Boundary(self, self.norms, **means) if sync is None else
                         RankedBoundary(sync, self, self.norms, **means))
        self.checkpoint_dir = Path(checkpoint_dir or Path("lmwidget-checkpoints") /
                                   f"loop-{time.strftime('%Y%m%d-%H%M%S')}-{self.id}").expanduser().resolve()

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
        self.steering.release()

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
        """The layer groups of the per-layer gradient norms, in model order."""
        return list(self.norms.names)

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (the one it had when closed, once closed)."""
        return self._closed_as["device"] if self.closed else next(self.model.parameters()).device

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
        """The clip norm lmwidget applies (0: off); None when it does not clip (your loop may)."""
        return self._grad_clip

    @property
    def last_save(self):
        """The newest save's outcome: ("ok", {"step", "kind", "path", "bytes", "seconds"}) or
        ("error", message); None before any."""
        return self.steering.last_save

    @property
    def checkpoints(self) -> list[dict]:
        """Every checkpoint this loop wrote: step, kind, path, bytes, seconds."""
        return list(self.steering.saved)

    def bind(self, optimizer, lr_scheduler=None) -> None:
        """The optimizer and scheduler a framework made as training began (an adapter's)."""
        optimizer, lr_scheduler = unwrapped(optimizer, lr_scheduler)
        check_steerable(self.model, optimizer, lr_scheduler)
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler

    # -- what the step boundary carries out with your loop's means -------------------------------
    def _apply_lr(self, lr: float) -> bool:
        scale_lr([self.optimizer], [self.lr_scheduler], lr / self.lr)
        return True

    def _apply_grad_clip(self, grad_clip: float) -> bool:
        self._grad_clip = grad_clip
        return True

    def _generate(self) -> str:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return str(self._sample(self.model))
        finally:
            self.model.train(was)

    def _evaluate_now(self):
        return self._evaluate()

    def _on_eval(self, step: int, val_loss) -> None:
        self.callbacks.call("on_eval", self, step, float(val_loss))

    def _save_now(self) -> None:
        self.steering.run_saves(self._write)

    def _write(self, path, step: int) -> dict:
        """One checkpoint of this loop (model, optimizer, scheduler, step, history)."""
        return checkpoint.save_to(loopstate.payload(self, "saved"), path, self.checkpoint_dir,
                                  checkpoint.SAVED.format(step))

    def _request(self, kind: str, value=None, note: str = "") -> None:
        self.steering.request(kind, value, note)
