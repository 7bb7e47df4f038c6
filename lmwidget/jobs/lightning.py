"""LightningCallback: one callback makes a Lightning fit a job a notebook attaches to and steers."""

from __future__ import annotations

import sys

from lmwidget.adapters.lightning_trainer import LightningRun
from lmwidget.adapters.ranked import FRAMEWORK_SHARED, join_ranks
from .serving import ScriptJob

try:  # Lightning 2.x, under its new name or its old one
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - only pytorch_lightning installed
    from pytorch_lightning import Callback


class LightningCallback(Callback):
    """Serve a Lightning `Trainer.fit()` as a job: add it the way you add any callback,
    `L.Trainer(..., callbacks=[lmwidget.LightningCallback(run_dir="runs/a")])`, and run your
    script as always (`python train.py`, with `strategy="ddp"` and several devices too).

    When training starts, rank 0 publishes the run's record in `run_dir` (the one
    `python -m lmwidget train` writes) and prints where to attach; `lmwidget.attach(run_dir)`
    shows the dashboard and steers it with Lightning's own means: pause (in
    on_train_batch_end), stop (trainer.should_stop), LR (every optimizer's param groups and
    every scheduler's base LRs), clip norm (gradient_clip_val), save (trainer.save_checkpoint,
    a .ckpt that `fit(ckpt_path=...)` resumes), sample (with `sample=fn(model) -> str`).
    Evaluate is not offered: Lightning validates on its own schedule. Across processes
    rank 0 decides and every rank acts at the same step; the loss shown is the mean over
    the ranks. The job ends when fit() returns or raises.

    Args:
        run_dir: the run directory (None: `lmwidget-runs/run-<time>-<pid>`).
        tensorboard: a directory where rank 0 writes TensorBoard event files while it
            trains (needs the tensorboard package).
        ip: the address rank 0 binds (127.0.0.1: this machine only; see lmwidget.attach).
        announce: print where to attach (rank 0, on stdout).
        **options: the run's options: `tokens_per_step`, `sample`, `checkpoint_dir`,
            `callbacks` (lmwidget's), `name`.
    """

    def __init__(self, run_dir=None, *, tensorboard=None, ip: str = "127.0.0.1", announce: bool = True,
                 **options):
        self.run_dir, self.tensorboard, self.ip, self.announce = run_dir, tensorboard, ip, announce
        self.options = options
        self.run: LightningRun | None = None   # the run of the latest fit()
        self.job: ScriptJob | None = None

    def on_train_start(self, trainer, pl_module):
        sync = join_ranks(pl_module.device, FRAMEWORK_SHARED)
        self.run = run = LightningRun(trainer, pl_module, from_callback=True, sync=sync, **self.options)
        run.train_start(trainer)
        self.job = ScriptJob(run, self.run_dir, sync=sync, ip=self.ip, tensorboard=self.tensorboard,
                             announce=sys.stdout if self.announce else None)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.run.before_update(optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.run.batch_end(trainer, outputs, batch)

    def on_validation_end(self, trainer, pl_module):
        if self.run is not None and not self.run.ended and not trainer.sanity_checking:
            self.run.validated(trainer)

    def on_train_end(self, trainer, pl_module):
        self.job.finish()

    def on_exception(self, trainer, pl_module, exception):
        if self.job is not None:
            self.job.finish(exception)
