"""Lightning on the dashboard: a Callback that records every optimizer step and obeys the controls."""

from __future__ import annotations

from pathlib import Path
import sys
import time

import torch

from lmwidget.core.steering import scale_lr
from .chatter import quiet
from .loop import Loop


PACKAGES = ("lightning.pytorch", "pytorch_lightning")  # Lightning 2.x, under either name


def _package(trainer):
    """The Lightning package `trainer` comes from (its callbacks must come from the same)."""
    for name in PACKAGES:
        module = sys.modules.get(name)
        if module is not None and isinstance(trainer, module.Trainer):
            return module
    return None


def is_lightning_trainer(obj) -> bool:
    return _package(obj) is not None


class LightningRun(Loop):
    """A Lightning `Trainer.fit()`, as a source: its callback (`self.callback`) records each
    optimizer step's loss (from training_step's output, on the device), gradient norm before
    clipping (and each layer's) and LR applied, and a logged `val_loss`; at each step end it
    carries out the controls with Lightning's own means:

    pause: blocks in on_train_batch_end · stop: trainer.should_stop · LR: every optimizer's
    param groups and every scheduler's base LRs · clip norm: trainer.gradient_clip_val ·
    save: trainer.save_checkpoint (a .ckpt that `fit(ckpt_path=...)` resumes) · sample: a
    function you pass (`sample=fn(model) -> str`).

    Args:
        trainer: the Lightning Trainer.
        module: the LightningModule it fits.
        from_callback: made by a callback while `trainer.fit()` runs (lmwidget.LightningCallback).
        **options: Loop's (`tokens_per_step`, `sample`, `checkpoint_dir`, `callbacks`,
            `name`, `sync`).
    """

    def __init__(self, trainer, module, *, from_callback: bool = False, **options):
        if not is_lightning_trainer(trainer):
            raise TypeError(f"expected a Lightning Trainer; got {type(trainer).__name__}")
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"fit() needs the LightningModule to train; got {type(module).__name__}")
        mine = [cb for cb in trainer.callbacks if isinstance(getattr(cb, "run", None), LightningRun)]
        if mine:
            raise ValueError(f"this Trainer already has lmwidget's callback (for {mine[0].run.name}): "
                             f"a Trainer is watched by one run at a time")
        if not from_callback and str(getattr(trainer.state, "status", "")).endswith("RUNNING"):
            raise RuntimeError("this Trainer is already running fit(): wait for it to return first")
        self.trainer = trainer
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        super().__init__(module, None, None, max_steps=max_steps,
                         grad_clip=float(trainer.gradient_clip_val or 0.0), **options)
        self._loss = None
        self._tokens = 0       # this optimizer step's input tokens (its batches' first tensors)
        self._norms = None
        self._lr = None
        self._stepped = None   # the trainer's global_step when this step's update was measured
        self._t_step = None
        self.callback = _bridge(_package(trainer))(self)
        self.unsupported = {**self.unsupported, "evaluate":
                            "Lightning validates on its own schedule (val_check_interval, "
                            "check_val_every_n_epoch); trainer.validate() after fit"}

    RELEASED = Loop.RELEASED + ("trainer", "_optimizers", "_schedulers", "_loss", "_norms")

    def describe(self) -> dict:
        return {**super().describe(), "trainer": "Lightning"}

    def hook(self) -> None:
        trainer = self.trainer
        bar = getattr(_package(trainer).callbacks, "ProgressBar", None)
        self._removed = [cb for cb in trainer.callbacks if bar is not None and isinstance(cb, bar)]
        trainer.callbacks = [cb for cb in trainer.callbacks if cb not in self._removed] + [self.callback]

    def unhook(self) -> None:
        trainer = self.trainer
        trainer.callbacks = [cb for cb in trainer.callbacks if cb is not self.callback] + self._removed

    def train_start(self, trainer) -> None:
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
        self.bind(trainer.optimizers[0], schedulers[0] if schedulers else None)
        self._optimizers, self._schedulers = list(trainer.optimizers), schedulers
        if self.max_steps is None:
            total = trainer.estimated_stepping_batches
            self.max_steps = int(total) if total != float("inf") else None
        self.step = trainer.global_step
        if not self.started:
            self.begin()
        self._t_step = time.perf_counter()

    def before_update(self, optimizer) -> None:
        self._norms = self.measure()  # before Lightning clips, right after this hook
        self._lr = optimizer.param_groups[0]["lr"]

    def batch_end(self, trainer, outputs, batch) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss):
            self._loss = loss.detach() if self._loss is None else self._loss + loss.detach()
        self._tokens += _first_tensor(batch).numel() if _first_tensor(batch) is not None else 0
        if self._norms is None or self._stepped == trainer.global_step:
            return  # a micro-batch of gradient accumulation: the step goes on
        self._stepped = trainer.global_step
        self.step = trainer.global_step - 1  # Lightning's count (a resumed fit goes on from its own)
        now = time.perf_counter()
        # Lightning hands on_train_batch_end each micro-batch's loss already divided by
        # accumulate_grad_batches: their sum is the step's mean training_step loss
        loss = self._loss if self._loss is not None else torch.tensor(float("nan"))
        grad_norm, layers = self._norms
        self.push(loss, grad_norm, layers, self._lr, self.tokens_per_step or self._tokens, now - self._t_step)
        self._loss = self._norms = None
        self._tokens = 0
        if not self.steering.boundary():
            trainer.should_stop = True
        self._t_step = time.perf_counter()

    def measure(self):
        return self.steering.gradients(self.step + 1)  # Lightning clips itself, to gradient_clip_val

    # -- what the step boundary carries out, with Lightning's own means --------------------------
    def _apply_lr(self, lr: float) -> bool:
        scale_lr(self._optimizers, self._schedulers, lr / self.lr)
        return True

    def _apply_grad_clip(self, grad_clip: float) -> bool:
        self.trainer.gradient_clip_val = grad_clip or None
        return super()._apply_grad_clip(grad_clip)

    def _save_now(self) -> None:
        if self.sync is not None and not self.sync.is_main:
            # a save is collective under DDP: every rank takes part, Lightning writes on rank 0
            self.trainer.save_checkpoint(str(Path(self.checkpoint_dir) / f"saved-{self.step:07d}.ckpt"))
            return
        super()._save_now()

    def _write(self, path, step: int) -> dict:
        """Lightning's own checkpoint (a .ckpt that fit(ckpt_path=...) resumes), written by
        the training thread between steps, or by the caller once the run has ended."""
        if not self.started:
            raise RuntimeError(f"{self.name} has not started training: there is nothing to save yet")

        name = f"saved-{step:07d}.ckpt"
        target = Path(self.checkpoint_dir) / name if path is None else Path(path).expanduser()
        if path is not None and (str(path).endswith(("/", "\\")) or target.is_dir()):
            target = target / name
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.trainer.save_checkpoint(str(target))
        return {"path": str(target), "kind": "saved", "bytes": target.stat().st_size,
                "seconds": time.perf_counter() - t0}

    def validated(self, trainer) -> None:
        value = trainer.callback_metrics.get("val_loss")
        if value is not None:
            self.record.log(self.step, {"val_loss": value.detach() if torch.is_tensor(value) else float(value)})
            self.record.record_event(self.step, "eval", value, "Lightning's validation")

    def run_trainer(self, *args, **kwargs) -> None:
        """`trainer.fit(module, *args, **kwargs)` on this thread, hooked, its chatter kept
        out of the cell (`lmwidget.adapters.chatter.quiet`)."""
        self.hook()
        try:
            with quiet(self.note_log):
                self.trainer.fit(self.model, *args, **kwargs)
        finally:
            self.unhook()


def _first_tensor(batch):
    """The batch's inputs: its first tensor (token ids, for a language model); None if none."""
    if torch.is_tensor(batch):
        return batch
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    return next((v for v in values if torch.is_tensor(v)), None)


_bridges: dict = {}  # package name -> its Callback class


def _bridge(pl):
    """The Lightning Callback class of package `pl` (made once per package)."""
    if pl.__name__ not in _bridges:
        class Bridge(pl.Callback):
            def __init__(self, run: LightningRun):
                self.run = run

            def on_train_start(self, trainer, pl_module):
                self.run.train_start(trainer)

            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                self.run.before_update(optimizer)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.run.batch_end(trainer, outputs, batch)

            def on_validation_end(self, trainer, pl_module):
                if not trainer.sanity_checking:
                    self.run.validated(trainer)

        _bridges[pl.__name__] = Bridge
    return _bridges[pl.__name__]
