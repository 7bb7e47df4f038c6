"""Callbacks: code that watches the loop and steers it through the run's controls."""

from __future__ import annotations

import math
import numbers

HOOKS = ("on_train_begin", "on_step_end", "on_eval", "on_train_end")


class Callback:
    """Override any hook. Each is called on the training thread, between two steps.

    `run` is the Run handle: read `run.state`, `run.step`, `run.lr`, `run.history`; act
    with `run.pause()`, `run.stop(note=...)`, `run.set_lr(lr, note=...)`,
    `run.set_grad_clip(...)` and `run.log_event(...)`. Actions take effect at the next
    step boundary, exactly like the dashboard's buttons, and are recorded as events.

    - `on_train_begin(run)`: before the first step.
    - `on_step_end(run, step, metrics)`: after every step. `metrics` holds `loss` and
      `grad_norm` as 0-d tensors on the training device (reading one as a number, as in
      `float(metrics["loss"])`, waits for the GPU: prefer on_eval, or read every Nth
      step), `val_loss` (a tensor, or None when the step did not evaluate), and plain
      `lr` and `tokens`.
    - `on_eval(run, step, val_loss)`: after each validation estimate, as a float.
    - `on_train_end(run)`: once the loop has ended, whatever the reason (`run.state`).

    An exception raised by a hook fails the run and is shown on the dashboard.

    A callback that keeps state across steps may return it from `state_dict()` (plain
    values: numbers, strings, lists, dicts) to have it saved in checkpoints; a resumed run
    hands it to `load_state_dict(state)` of the callback of the same class at the same
    place in `callbacks=`, after `on_train_begin`.
    """

    def state_dict(self):
        """The callback's state to save in checkpoints, as plain values (numbers, strings, lists,
        dicts).

        Returns:
            None here: nothing is saved.
        """
        return None

    def load_state_dict(self, state) -> None:
        """Take back the state that state_dict() returned, from the checkpoint a run resumes from
        (called after on_train_begin); nothing here.

        Args:
            state: what state_dict() returned when the checkpoint was written.
        """
        pass

    def on_train_begin(self, run) -> None:
        """Called before the first step; nothing here.

        Args:
            run: the run's handle.
        """
        pass

    def on_step_end(self, run, step: int, metrics: dict) -> None:
        """Called after every step; nothing here.

        Args:
            run: the run's handle.
            step: the step just completed.
            metrics: `loss` and `grad_norm` (0-d tensors on the training device), `val_loss` (a
                tensor, or None when the step did not evaluate), `lr` and `tokens`.
        """
        pass

    def on_eval(self, run, step: int, val_loss: float) -> None:
        """Called after each validation estimate; nothing here.

        Args:
            run: the run's handle.
            step: the step it was estimated at.
            val_loss: the validation loss.
        """
        pass

    def on_train_end(self, run) -> None:
        """Called once the loop has ended, whatever the reason (`run.state` says); nothing here.

        Args:
            run: the run's handle.
        """
        pass


def _hook(callback, name):
    """The callback's own hook, or None where it only inherits Callback's no-op."""
    fn = getattr(callback, name, None)
    if fn is None or getattr(type(callback), name, None) is getattr(Callback, name):
        return None
    return fn if callable(fn) else None


class Callbacks:
    """The run's callbacks, dispatched per hook; hooks nobody overrides cost nothing."""

    def __init__(self, callbacks=None):
        if callbacks is None:
            items = []
        elif isinstance(callbacks, (list, tuple)):
            items = list(callbacks)
        else:
            items = [callbacks]
        for cb in items:
            if not any(callable(getattr(cb, name, None)) for name in HOOKS):
                raise TypeError(f"callbacks must be lmwidget.Callback objects (or objects with any of "
                                f"the methods {', '.join(HOOKS)}); got {cb!r}")
        self.items = items
        self._hooks = {name: [fn for fn in (_hook(cb, name) for cb in items) if fn] for name in HOOKS}

    def wants(self, name: str) -> bool:
        return bool(self._hooks[name])

    def call(self, name: str, *args) -> None:
        for fn in self._hooks[name]:
            fn(*args)


def _check(name, value, minimum, integral=False, open_low=False):
    kind = numbers.Integral if integral else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if open_low else value >= minimum)
    if not ok:
        what = "an integer" if integral else "a finite number"
        raise ValueError(f"{name} must be {what} {'>' if open_low else '>='} {minimum}; got {value!r}")
    return value


class _Plateau(Callback):
    """Tracks the best validation loss and how many evaluations in a row failed to beat it."""

    def __init__(self, patience: int, min_delta: float):
        self.patience = _check("patience", patience, 1, integral=True)
        self.min_delta = _check("min_delta", min_delta, 0.0)
        self._reset()

    def _reset(self) -> None:
        self.best, self.best_step, self.bad_evals = math.inf, None, 0

    def on_train_begin(self, run) -> None:
        self._reset()  # the same object may serve several runs

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.bad_evals = state["best"], state["best_step"], state["bad_evals"]

    def _improved(self, step: int, val_loss: float) -> bool:
        if math.isfinite(val_loss) and val_loss < self.best - self.min_delta:
            self.best, self.best_step, self.bad_evals = val_loss, step, 0
            return True
        self.bad_evals += 1
        return False

    def _since_best(self) -> str:
        best = "none yet" if self.best_step is None else f"best {self.best:.4f} at step {self.best_step}"
        return (f"validation loss did not improve by more than {self.min_delta:g} for "
                f"{self.bad_evals} evaluations ({best})")


class EarlyStopping(_Plateau):
    """Stop the run when the validation loss has not improved by more than `min_delta` for
    `patience` evaluations in a row."""

    def __init__(self, patience: int = 3, min_delta: float = 0.0):
        super().__init__(patience, min_delta)
        self.stopped_at = None

    def on_train_begin(self, run) -> None:
        """Start afresh (an object may serve several runs): no best loss, no evaluation counted,
        `stopped_at` None.

        Args:
            run: the run's handle.
        """
        super().on_train_begin(run)
        self.stopped_at = None

    def on_eval(self, run, step: int, val_loss: float) -> None:
        """Count an estimate that does not beat the best by more than `min_delta`; at `patience` of
        them in a row, stop the run (the stop event says why) and set `stopped_at` to `step`.

        Args:
            run: the run's handle.
            step: the step it was estimated at.
            val_loss: the validation loss (one that is not finite never counts as better).
        """
        if not self._improved(step, val_loss) and self.bad_evals >= self.patience:
            self.stopped_at = step
            run.stop(note=f"early stopping: {self._since_best()}")

    def __repr__(self) -> str:
        return f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta:g})"


class ReduceLROnPlateau(_Plateau):
    """Multiply the LR by `factor` (not below `min_lr`) when the validation loss has not
    improved by more than `min_delta` for `patience` evaluations; then wait `cooldown`
    evaluations before judging again."""

    def __init__(self, factor: float = 0.5, patience: int = 2, min_delta: float = 0.0,
                 min_lr: float = 1e-6, cooldown: int = 0):
        super().__init__(patience, min_delta)
        _check("factor", factor, 0.0, open_low=True)
        if factor >= 1:
            raise ValueError(f"factor must be a number in (0, 1) (for example 0.5); got {factor!r}")
        self.factor = factor
        self.min_lr = _check("min_lr", min_lr, 0.0, open_low=True)
        self.cooldown = _check("cooldown", cooldown, 0, integral=True)
        self._cooling = 0
        self.reductions: list[tuple[int, float]] = []  # (step, new lr)

    def on_train_begin(self, run) -> None:
        """Start afresh (an object may serve several runs): no best loss, no evaluation counted, no
        cooldown, no reductions.

        Args:
            run: the run's handle.
        """
        super().on_train_begin(run)
        self._cooling, self.reductions = 0, []

    def state_dict(self) -> dict:
        """The plateau's state for checkpoints: best, best_step, bad_evals, cooling and
        reductions ([step, lr] pairs)."""
        return {**super().state_dict(), "cooling": self._cooling,
                "reductions": [[step, lr] for step, lr in self.reductions]}

    def load_state_dict(self, state: dict) -> None:
        """Take back the state that state_dict() returned, when a run resumes from a checkpoint.

        Args:
            state: what state_dict() returned.
        """
        super().load_state_dict(state)
        self._cooling = state["cooling"]
        self.reductions = [(step, lr) for step, lr in state["reductions"]]

    def on_eval(self, run, step: int, val_loss: float) -> None:
        """Count an estimate that does not beat the best by more than `min_delta` (during a
        cooldown, count down instead); at `patience` of them in a row, set the LR to
        max(lr * factor, min_lr) if that is lower (an event says why, and `reductions` records it),
        then wait `cooldown` estimates.

        Args:
            run: the run's handle.
            step: the step it was estimated at.
            val_loss: the validation loss (one that is not finite never counts as better).
        """
        if self._improved(step, val_loss):
            return
        if self._cooling:
            self._cooling -= 1
            self.bad_evals = 0
            return
        if self.bad_evals < self.patience:
            return
        lr = max(run.lr * self.factor, self.min_lr)
        if lr < run.lr:
            reason = f"reduce LR on plateau: {self._since_best()}"
            run.set_lr(lr, note=reason)
            self.reductions.append((step, lr))
        self.bad_evals, self._cooling = 0, self.cooldown

    def __repr__(self) -> str:
        return (f"ReduceLROnPlateau(factor={self.factor:g}, patience={self.patience}, "
                f"min_delta={self.min_delta:g}, min_lr={self.min_lr:g}, cooldown={self.cooldown})")
