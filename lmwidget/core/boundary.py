"""Boundary: the one step-boundary engine every loop owns; requests, samples, histograms and saves are carried out here, with their events."""

from __future__ import annotations

from typing import Callable

import torch

from .health import GradNorms, histogram
from .steering import Steering

# where a histogram's gradients came from, as the views show it
DURING = "this training step (before clipping)"
FRESH = "one fresh batch (taken between steps)"
LAST = "your last backward pass (taken between steps)"


class Boundary(Steering):
    """What every loop (lmwidget's own, yours, the Hugging Face Trainer's, Lightning's) does
    between two steps, in one place.

    The loop owns one and calls it: `boundary()` at each step boundary (requests, pause,
    stop), `gradients(step)` while a step's gradients exist, and `end()` once it is over.
    A request is carried out by `apply`, which records its event; what only the loop
    knows how to do (set its LR, sample its model, evaluate, write its saves) it hands
    over as functions. Nothing here runs per step unless something was asked for.

    Args:
        source: the loop as the views see it (its `record`, `control`, `step`, `name`,
            `max_steps` and `started`).
        norms: the gradient norms of the model's parameters (its layer groups).
        set_lr: `set_lr(lr) -> bool` applies a new base LR; False when that changes
            nothing (then no event is recorded).
        set_grad_clip: `set_grad_clip(norm) -> bool`, the same for the clip norm.
        sample: `sample() -> str`, text from the current model.
        evaluate: `evaluate()` returns the validation loss (a number or a device tensor),
            or None when the loop's framework evaluates later and records it itself.
        save: `save()` writes every save asked for (each records its own event).
        fresh_grads: `fresh_grads(params) -> grads` of one fresh batch at the current
            weights, with no update, for a histogram asked for between steps; None: the
            gradients the last backward pass left are shown.
        on_eval: `on_eval(step, val_loss)`, called after an evaluation asked for.
    """

    def __init__(self, source, norms: GradNorms, *, set_lr: Callable[[float], bool],
                 set_grad_clip: Callable[[float], bool], sample: Callable[[], str],
                 evaluate: Callable[[], object], save: Callable[[], None],
                 fresh_grads: Callable[[list], list] | None = None,
                 on_eval: Callable[[int, object], None] | None = None):
        super().__init__(source, self.apply)
        self.norms = norms
        self._set_lr, self._set_grad_clip = set_lr, set_grad_clip
        self._sample, self._evaluate, self._save = sample, evaluate, save
        self._fresh_grads, self._on_eval = fresh_grads, on_eval
        self.histogram_of = None  # the layer group whose histograms the next step takes

    def apply(self, kind: str, value, note: str = ""):
        """Carry out one request (on the loop's thread, or on any thread once the loop has
        ended).

        Args:
            kind: "lr", "grad_clip", "sample", "evaluate", "save" or "histogram".
            value: the request's value (the LR, the clip norm, the layer group).
            note: why it was asked for, written into the event.

        Returns:
            The event's value, a (kind, value, note) event, or False for no event.
        """
        if kind == "lr":
            return value if self._set_lr(value) else False
        if kind == "grad_clip":
            return value if self._set_grad_clip(value) else False
        if kind == "sample":
            self.record.add_sample(self.source.step, self._sample())
            return value
        if kind == "evaluate":  # now, at this step: its row gets the validation loss
            value = self._evaluate()
            if value is None:
                return False  # the framework's evaluation records its own event
            step = self.source.step
            self.record.log(step, {"val_loss": value})
            if self._on_eval is not None:
                self._on_eval(step, value)
            return "eval", value, note or "asked for"
        if kind == "save":
            self._save()
            return False
        if kind == "histogram":
            if self.state == "running" and not self.control.closed:
                self.histogram_of = value  # taken during the next step, while gradients exist
            else:
                self._between_steps(value)
        return False  # a request that changes nothing is not an event

    def gradients(self, step: int):
        """The gradient norm of step `step` and each layer group's, as device tensors
        (nothing is read back), and the histograms asked for: call it while the step's
        gradients exist, before they are clipped.

        Returns:
            (total norm, per-group norms).
        """
        norms = self.norms()
        if self.histogram_of is not None:
            group, self.histogram_of = self.histogram_of, None
            params = self.norms.group_params(group)
            self._add_histograms(step, group, DURING, params, [p.grad for p in params])
        return norms

    def _between_steps(self, group: str) -> None:
        """Paused or ended: a fresh batch's gradients (the loop's), else the last ones left."""
        params = self.norms.group_params(group)
        if self._fresh_grads is not None:
            self._add_histograms(self.source.step, group, FRESH, params, self._fresh_grads(params))
        else:
            self._add_histograms(self.source.step, group, LAST, params, [p.grad for p in params])

    def _add_histograms(self, step: int, group: str, where: str, params, grads) -> None:
        grads = [g.flatten() for g in grads if g is not None]
        self.record.add_histogram({
            "step": step, "group": group, "source": where,
            "weights": histogram(torch.cat([p.detach().flatten() for p in params])),
            "grads": histogram(torch.cat(grads)) if grads else None})

    def release(self) -> None:
        """The run was closed: let go of the model's parameters (the layer names stay)."""
        self.norms.params = []
        self.histogram_of = None
