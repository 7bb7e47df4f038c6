"""Run: the handle on one run of lmwidget's own loop (its thread, trainer and dashboard), and train()."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import torch

from lmwidget.checkpoint import saving as checkpoint
from lmwidget.core.callbacks import Callbacks
from lmwidget.core.control import ENDED
from lmwidget.core.monitor import register
from lmwidget.core.source import Source
from lmwidget.core.steering import Steered
from lmwidget.data import tokens
from lmwidget.data.dataset import Dataset
from lmwidget.models import pretrained, resolve
from lmwidget.models.builtin import count_params
from lmwidget.models.hf import unwrap
from lmwidget.system import threads
from . import trainstate
from .branching import start_branch
from .config import TrainConfig
from .optim import resolve_device
from .builtin_loop import BuiltinLoop


def _of_trainer(name: str, doc: str) -> property:
    """A Run property that reads its BuiltinLoop's attribute `name`, documented by `doc`."""
    def get(self):
        return getattr(self._trainer, name)

    get.__doc__ = doc
    return property(get)


def data_label(data, summary) -> str:
    """The data as a header names it: a corpus' or file's name, or "a text of 892,315 characters"."""
    if isinstance(data, os.PathLike) or (isinstance(data, str) and len(data) < 4096 and "\n" not in data):
        if os.path.isfile(os.path.expanduser(os.fspath(data))):
            return os.path.basename(os.fspath(data))
    if isinstance(data, str):
        return data if len(data) <= 80 and "\n" not in data else f"a text of {len(data):,} characters"
    return str(summary)  # the config's plain value


class Run(Steered, Source):
    """One run of lmwidget's own training loop. Every method is thread-safe and returns at
    once, except wait(), sample() and save()."""

    def __init__(self, config: TrainConfig, *, model: torch.nn.Module | None = None,
                 tokenizer=None, dataset: Dataset | None = None, callbacks=None,
                 restore: dict | None = None, sync=None):
        """Prepare a run (call start()).

        Args:
            config: its options (plain values).
            model: your module when config.model is None (checked against the data); else
                a model to train instead of building one from the config.
            tokenizer: a tokenizer object when config.tokenizer is None.
            dataset: a dataset to train on instead of loading config.data.
            callbacks: Callback objects.
            restore: a checkpoint (checkpoint.read) to continue.
            sync: a RankSync in a torchrun job (the command line's).

        Raises:
            ValueError: the model, tokenizer or data is refused, or one the config leaves to
                be given beside it is missing.
        """
        super().__init__()
        default_dir = Path("lmwidget-checkpoints") / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{self.id}"
        self.checkpoint_dir = Path(config.checkpoint_dir or default_dir).expanduser().resolve()
        # the resolved directory is saved with the options: a resumed run keeps saving there
        self.config = config = dataclasses.replace(config, checkpoint_dir=str(self.checkpoint_dir))
        callbacks = Callbacks(callbacks)
        if dataset is None:
            if restore is not None:  # the checkpoint's own tokenizer, stored as JSON
                tokenizer = checkpoint.tokenizer_of(restore)
            elif tokenizer is None and config.tokenizer is None:
                raise ValueError("the config's tokenizer is None, which stands for a tokenizer object "
                                 "given beside it, and none was given: pass tokenizer=<the tokenizer>")
            dataset = Dataset.from_config(config, tokenizer)
        if restore is not None:
            trainstate.check_data(dataset, config.data, restore)
        dataset.check_block_size(config.block_size)
        if model is None or config.model is None:  # built from the config, or yours: checked once
            # a model to shard (fsdp) is built in host memory: it may not fit one device whole
            device = sync.device if sync is not None else resolve_device(config.device)
            model = resolve.build(config, dataset, torch.device("cpu") if config.fsdp else device, module=model)
        self._model_class = type(unwrap(model)).__name__  # what options() names a module of yours by
        self._tokenizer_label = tokens.label(dataset.tokenizer)  # and a tokenizer given beside
        self._trainer = BuiltinLoop(config, model, dataset, self.control, self.record,
                                callbacks, handle=self, checkpoint_dir=self.checkpoint_dir,
                                restore=restore, sync=sync)
        self._thread = threading.Thread(target=self._trainer.run, daemon=True,
                                        name=f"lmwidget-run-{self.id}")
        self._described = None

    def start(self) -> "Run":
        """Start training in a background thread and return at once; a dashboard made before
        the start follows it from then on.

        Returns:
            This run.

        Raises:
            RuntimeError: the run was started already (its thread starts once).
        """
        register(self)
        with self._lock:  # a save of the unstarted run is written before or after, never during
            threads.start(self._thread, cpu=self.device.type == "cpu")
        if self._dashboard is not None:
            self._dashboard.kick()  # a view made before the start follows it from now
        return self

    @property
    def started(self) -> bool:
        """True once start() has started the training thread (still True after the run ends)."""
        return self._thread.ident is not None

    @property
    def alive(self) -> bool:
        """The training thread is running (it ends once the run has ended and saved)."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` s for the training thread to end; True once it has."""
        if self.started:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- what the run is and does -----------------------------------------------------------
    def describe(self) -> dict:
        if self._described is None:  # fixed for the run's life, and kept once it is closed
            model = pretrained.describe(self.model, self.config.model)
            self._described = {"model": f"{model} ({count_params(unwrap(self.model)):,} parameters)",
                               "tokenizer": self.tokenizer.describe(),
                               "data": data_label(self.config.data, self.config.summary()["data"])}
        return dict(self._described)

    def _release(self) -> None:
        self.describe()
        self._trainer.release()

    def options(self) -> dict:
        """The run's options as plain values; a module of yours named by its class."""
        out = self.config.summary()
        if out["model"] is None:
            out["model"] = self._model_class
        if out["tokenizer"] is None:
            out["tokenizer"] = self._tokenizer_label
        return out

    @property
    def layers(self) -> list[str]:
        """The layer groups of the per-layer gradient norms, in model order."""
        return list(self._trainer.grad_norms.names)

    device = _of_trainer("device", "Where it trains.")
    steering = _of_trainer("steering", "The loop's step-boundary engine: its state, anomaly and "
                           "requests (Steered reads it).")
    step = _of_trainer("step", "Optimizer steps completed.")
    threads = _of_trainer("threads", "The CPU intra-op threads the training step uses now: "
                          "`threads=`, or what the thread tuner settled on; None before the start "
                          "and on an accelerator.")
    lr = _of_trainer("base_lr", "The base learning rate (the schedule shapes what is applied).")
    grad_clip = _of_trainer("grad_clip", "The max gradient norm it clips to (0: off).")
    model = _of_trainer("model", "The model it trains; None once the run was closed.")
    tokenizer = _of_trainer("tokenizer", "The tokenizer of its data (kept once the run was closed).")
    dataset = _of_trainer("data", "The tokens it trains on (memory-mapped when `data` is a token "
                          "directory); None once the run was closed.")
    error = _of_trainer("error", "What ended the run with a failure, or None.")
    restored_from = _of_trainer("restored_from", "The checkpoint this run resumed from, if any.")

    @property
    def max_steps(self) -> int:
        """The optimizer steps the run trains for (its config's `max_steps`)."""
        return self.config.max_steps

    @property
    def elapsed(self) -> float:
        """Seconds the training loop has run in this process, up to its end (or now while it
        runs); 0.0 before the start. A resumed run's earlier training is not counted."""
        t = self._trainer
        return 0.0 if t.started is None else (t.ended or time.time()) - t.started

    @property
    def start_time(self) -> float | None:
        """The wall-clock time (time.time()) at which the run's clock read 0: the start, or earlier
        for a resumed run, whose clock goes on from its checkpoint's; None before the start."""
        t = self._trainer
        return None if t.started is None else t.started - t.clock0

    @property
    def last_save(self):
        """The newest save's outcome: ("ok", {"step", "kind", "path", "bytes", "seconds"}) or
        ("error", message); None before any."""
        return self._trainer.checkpointer.last

    @property
    def checkpoints(self) -> list[dict]:
        """Every checkpoint this run wrote: step, kind, path, bytes, seconds."""
        return list(self._trainer.checkpointer.saved)

    # -- steering -------------------------------------------------------------------------
    def _request(self, kind: str, value=None, note: str = "") -> None:
        """Queue a request for the loop; once the loop has ended, carry it out here (after
        the loop's own leftovers, in one order)."""
        self.steering.request(kind, value, note)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (True), or return False once `timeout` seconds pass or
        the run pauses itself on a non-finite step (it then waits for you: lower the LR and
        resume, or stop it). A pause of yours is waited through.

        Re-raises the exception of a failed run. In a notebook this blocks widget
        messages while it waits, unless comms run over subshells.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"run {self.id}'s own training thread (a callback?) called wait(): "
                               f"it would wait for itself forever")
        if not self.started:
            raise RuntimeError(f"run {self.id} has not started: call run.start() first")
        deadline = None if timeout is None else time.monotonic() + timeout
        changed, control = threading.Event(), self.control
        control.watch(changed)  # set at every state change: no polling
        try:
            while self._thread.is_alive() and self.state not in ENDED:
                if (self.state == "paused" and self._trainer.self_paused and control.paused
                        and not control.stop_requested):  # and nobody has told it to go on yet
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                changed.wait(left)
                changed.clear()
        finally:
            control.unwatch(changed)
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            return False
        if self.error is not None:
            raise self.error
        return True

    # -- checkpoints ------------------------------------------------------------------------
    def request_save(self, path=None) -> checkpoint.PendingSave:
        """Ask for a checkpoint without waiting (the Save button); see save()."""
        self._check("save")
        return self._ask(checkpoint.PendingSave(path))

    def save(self, path=None, timeout: float | None = 60.0) -> Path:
        """Write a checkpoint of this step and return its path; blocks until it is written.

        `path`: a file, a directory to save into, or None for `checkpoint_dir`
        (saved-<step>.pt). Taken between two steps while the run trains, at once while it
        is paused or has ended. The file is written atomically; `lmwidget.train(resume=path)`
        continues the run from it. Raises what went wrong (a full disk, a bad path).
        """
        return super().save(path, timeout)

    def _ask(self, job: checkpoint.PendingSave) -> checkpoint.PendingSave:
        """Have the loop carry out `job` between two steps (or carry it out now, from a
        callback, before the start, or after the end)."""
        self._trainer.checkpointer.ask(job)
        if threading.current_thread() is self._thread:  # a callback, between two steps
            self.steering.apply("save", None)
            return job
        with self._lock:
            unstarted = not self.started
            if unstarted:
                self.steering.apply("save", None)
        if not unstarted:
            self._request("save")
        return job

    def branch(self, *, display: bool = True, callbacks=None, timeout: float | None = 60.0,
               **options) -> "Run":
        """A new run that starts from this one's current state (weights, optimizer, LR as
        steered, data position, RNG states) and history, with `options` changed (lr=...).

        The branch is taken between two steps (at once if paused or ended) and returned
        paused at the branch step: its dashboard's Resume (or `branch.resume()`) starts it.
        This run goes on untouched, so two choices can be tried from the same point and
        compared. Options that shape the model or the data split cannot change.
        """
        self._check("save")
        copied = self._ask(checkpoint.PendingSave(memory=True)).wait(timeout)
        return start_branch(self, copied, display=display, callbacks=callbacks, options=options)

    def __repr__(self) -> str:
        model = self.options()["model"]
        return (f"<lmwidget.Run {self.id}: {model}, {self.state}, step {self.step}/"
                f"{self.max_steps}, lr={self.lr:.3g}>")
