"""LR range test: a short run with an exponentially growing LR, live, with suggestions and click-to-choose."""

from __future__ import annotations

import atexit
import math
import threading

import numpy as np
import torch

from lmwidget.training.config import TrainConfig, check_lr
from lmwidget.training.entry import configure
from lmwidget.data.dataset import Dataset
from lmwidget.models.hf import unwrap
from lmwidget.models import resolve
from lmwidget.system import threads
from lmwidget.core.registry import active_runs
from lmwidget.system.threads import cpu_threads
from lmwidget.training.optim import make_optimizer, resolve_device
from lmwidget.training.entry import train
from lmwidget.views.charts import show_in_notebook

from .view import LRFinderView

MIN_POINTS = 10         # smoothed points needed before anything is suggested
_running: list = []     # finders whose thread may still run


@atexit.register
def _stop_at_exit() -> None:
    """Stop the tests before the interpreter goes: torch work in a dying daemon thread aborts it."""
    for finder in list(_running):
        finder.stop()
        finder.join(5.0)


def smooth(losses, beta: float = 0.95) -> np.ndarray:
    """Exponential moving average with bias correction (the first values are not pulled to 0)."""
    out, avg = np.empty(len(losses)), 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def suggest(lrs, smoothed) -> dict:
    """{"steepest": the LR where the smoothed loss falls fastest against log10(lr),
    "min/10": the LR of the lowest smoothed loss divided by 10}; {} with too few points."""
    lrs, smoothed = np.asarray(lrs, np.float64), np.asarray(smoothed, np.float64)
    finite = np.isfinite(smoothed)
    if finite.sum() < MIN_POINTS:
        return {}
    lrs, smoothed = lrs[finite], smoothed[finite]
    low = int(np.argmin(smoothed))
    slope = np.gradient(smoothed, np.log10(lrs))
    skip = max(1, len(lrs) // 20)  # the first points are mostly the average warming up
    window = slope[skip:max(low, skip + 1)]
    steepest = skip + int(np.argmin(window)) if len(window) else low
    return {"steepest": float(lrs[steepest]), "min/10": float(lrs[low] / 10)}


class LRFinder:
    """The LR range test: trains `steps` steps from `start` to `end` (log-spaced LR) on a copy
    of the model's starting point, records the loss, and stops early once the smoothed loss
    exceeds `diverge` times its minimum or is not finite. The model's weights are restored
    afterwards. Thread-safe; `widget` is its live chart."""

    def __init__(self, config: TrainConfig, model: torch.nn.Module, dataset: Dataset,
                 start: float = 1e-6, end: float = 10.0, steps: int = 100, diverge: float = 4.0,
                 beta: float = 0.95):
        start, end = check_lr(start), check_lr(end)
        if not end > start:
            raise ValueError(f"end must be larger than start; got start={start!r}, end={end!r}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < MIN_POINTS:
            raise ValueError(f"steps must be an integer >= {MIN_POINTS}; got {steps!r}")
        if not (isinstance(diverge, (int, float)) and diverge > 1):
            raise ValueError(f"diverge must be a number > 1 (for example 4); got {diverge!r}")
        self.config, self.model, self.data = config, model, dataset
        self.start, self.end, self.steps, self.diverge, self.beta = start, end, steps, diverge, beta
        self.device = resolve_device(config.device)
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.state = "running"  # then "finished", "diverged", "stopped" or "failed"
        self.error: BaseException | None = None
        self._chosen = None
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lmwidget-lrfind")
        self._view = None

    # -- the test -------------------------------------------------------------------------
    def lr_at(self, i: int) -> float:
        """The LR of step `i`: log-spaced from `start` at step 0 to `end` at step `steps - 1`."""
        return self.start * (self.end / self.start) ** (i / (self.steps - 1))

    def _run(self) -> None:
        cfg = self.config
        model = self.model
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        was_training = model.training
        state = "failed"
        try:
            if self.device.type == "cpu":
                torch.set_num_threads(cpu_threads(cfg.threads))
            model.to(self.device).train()
            data = self.data.to(self.device)
            optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                      enabled=cfg.dtype == "bfloat16")
            gen = torch.Generator().manual_seed(cfg.seed)
            best = math.inf
            state = "finished"
            for i in range(self.steps):
                if self._stop:
                    state = "stopped"
                    break
                lr = self.lr_at(i)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = data.batch("train", cfg.batch_size, cfg.block_size, gen)
                with autocast:
                    _, loss = model(x, y)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                value = float(loss.detach())  # each step decides whether to go on: read at once
                with self._lock:
                    self.lrs.append(lr)
                    self.losses.append(value)
                    smoothed = smooth(self.losses, self.beta)[-1]
                best = min(best, smoothed)
                if not math.isfinite(smoothed) or smoothed > self.diverge * best:
                    state = "diverged"
                    break
        except BaseException as e:  # shown on the widget, re-raised by wait()
            self.error, state = e, "failed"
        finally:
            with torch.no_grad():
                model.load_state_dict(initial)  # the model is as it was before the test
            model.zero_grad(set_to_none=True)
            model.train(was_training)
            self.state = state  # done only once the weights are back
            _running.remove(self)

    def start_test(self) -> "LRFinder":
        """Start the test in a thread of its own; returns this finder at once."""
        _running.append(self)
        threads.start(self._thread, cpu=self.device.type == "cpu")
        return self

    def stop(self) -> None:
        """Ask the test to stop before its next step (then its state is "stopped"); returns at once."""
        self._stop = True

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` s for the test's thread to end; True once it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the test ends (True) or `timeout` s pass (False); re-raises its failure."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self.error is not None:
            raise self.error
        return True

    @property
    def done(self) -> bool:
        """True once the test has ended (its weights restored): finished, diverged, stopped or failed."""
        return self.state != "running"

    # -- results --------------------------------------------------------------------------
    def results(self):
        """(lrs, losses, smoothed losses) as arrays, a consistent copy."""
        with self._lock:
            lrs, losses = np.array(self.lrs), np.array(self.losses)
        return lrs, losses, smooth(losses, self.beta)

    @property
    def suggestions(self) -> dict:
        """The suggested LRs so far, {"steepest": lr, "min/10": lr} (see suggest()); {} with too few points."""
        lrs, _, smoothed = self.results()
        return suggest(lrs, smoothed)

    @property
    def suggestion(self) -> float | None:
        """The steepest descent of the smoothed loss (None until there are enough points)."""
        return self.suggestions.get("steepest")

    @property
    def chosen(self) -> float | None:
        """The LR chosen by a click on the curve, or by choose(); None until then."""
        return self._chosen

    def choose(self, lr) -> None:
        """Choose `lr`, as a click on the curve does: `lr` and train() use it from then on. Raises
        ValueError unless `lr` is a finite number > 0."""
        self._chosen = check_lr(lr)
        if self._view is not None:
            self._view.kick()

    @property
    def lr(self) -> float:
        """The chosen LR, else the suggestion; what `train(lr=finder)` uses."""
        if self._chosen is not None:
            return self._chosen
        if not self.done:
            raise RuntimeError("the LR range test is still running: wait for it "
                               "(finder.wait()), or click a point on its curve to choose an LR")
        if self.suggestion is None:
            why = f" ({self.error!r}; finder.wait() raises it)" if self.error is not None else ""
            raise RuntimeError(f"the LR range test {self.state} after {len(self.lrs)} steps{why}, "
                               f"too few to suggest an LR: choose one with finder.choose(lr)")
        return self.suggestion

    def train(self, **options):
        """Start a run of the same model (from its starting weights), data and options at
        `self.lr`; `options` override them (max_steps=..., and train()'s display=...).
        Waits for the test to end first: it trains the same model until then."""
        self.wait()
        config = {name: getattr(self.config, name) for name in TrainConfig.option_names()}
        if config["model"] is None:  # a module of yours: the same one, back at its starting weights
            config["model"] = self.model
        if config["tokenizer"] is None:  # a tokenizer object given: the same one
            config["tokenizer"] = self.data.tokenizer
        config.update(lr=self.lr)
        config.update(options)
        return train(**config)

    # -- display --------------------------------------------------------------------------
    @property
    def widget(self):
        """The test's live chart widget (made on first use)."""
        with self._lock:
            if self._view is None:
                self._view = LRFinderView(self)
        return self._view

    def _ipython_display_(self) -> None:
        show_in_notebook(self.widget)

    def __repr__(self) -> str:
        s = self.suggestion
        return (f"<lmwidget.LRFinder {self.state}, {len(self.lrs)}/{self.steps} steps, "
                f"suggestion {'-' if s is None else f'{s:.2e}'}, chosen "
                f"{'-' if self._chosen is None else f'{self._chosen:.2e}'}>")


def lr_find(model="gpt", data="builtin", *, start: float = 1e-6, end: float = 10.0,
            steps: int = 100, diverge: float = 4.0, beta: float = 0.95, display: bool = True,
            **options) -> LRFinder:
    """Run the LR range test in the background and return its LRFinder at once.

    A built-in model starts from the weights train() would give it with the same seed; your
    own module is restored to its weights afterwards. In a notebook the live chart is shown:
    click a point to choose that LR, then "Train with this LR" (or
    `lmwidget.train(..., lr=finder)`).

    Args:
        model: as in train(): "gpt", "lstm", your nn.Module, or a model directory.
        data: as in train(): a corpus name, a text file, text, or a token directory.
        start: the first LR tried.
        end: the last LR tried; the LR grows exponentially from `start` to `end`.
        steps: the training steps of the test.
        diverge: stop once the smoothed loss is this many times its minimum.
        beta: the loss's exponential smoothing (0.95: about 14 steps of lag on a 100-step
            test, where fastai's 0.98 lags about 34 and pushes the minimum late).
        display: show the live chart in the running cell.
        **options: train()'s other options (batch_size, block_size, grad_clip, ...).

    Returns:
        The LRFinder, already training in its own thread.

    Raises:
        ValueError: an option is refused, `beta` is outside [0, 1), or a run is training the
            same module.
        TypeError: an unknown option.
    """
    config, module, tokenizer, _ = configure(model, data, options)
    if module is not None:
        busy = [r for r in active_runs() if unwrap(r.model) is unwrap(module)]
        if busy:
            raise ValueError(f"run {busy[0].id} is training this model ({busy[0].state}); the range "
                             f"test would train the same weights. Stop it first, or pass a copy")
    dataset = Dataset.from_config(config, tokenizer)
    dataset.check_block_size(config.block_size)
    net = resolve.build(config, dataset, resolve_device(config.device), module=module)
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"beta must be a number in [0, 1) (for example 0.95); got {beta!r}")
    finder = LRFinder(config, net, dataset, start, end, steps, diverge, beta).start_test()
    if display:
        show_in_notebook(finder.widget)
    return finder


