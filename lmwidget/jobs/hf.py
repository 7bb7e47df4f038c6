"""HFCallback: one callback makes a Hugging Face Trainer's training a job a notebook attaches to and steers."""

from __future__ import annotations

import sys

from transformers import Trainer, TrainerCallback

from lmwidget.adapters.hf_trainer import HFRun
from lmwidget.adapters.ranked import FRAMEWORK_SHARED, join_ranks
from .serving import ScriptJob


class HFCallback(TrainerCallback):
    """Serve a `transformers.Trainer`'s training as a job: add it the way you add any
    callback, `Trainer(..., callbacks=[lmwidget.HFCallback(run_dir="runs/a")])`, and run
    your script as always (`python train.py`, `torchrun`, `accelerate launch`).

    When `trainer.train()` begins, rank 0 publishes the run's record in `run_dir` (the one
    `python -m lmwidget train` writes) and prints where to attach; `lmwidget.attach(run_dir)`
    shows the dashboard and steers it with the Trainer's own means: pause (in on_step_end),
    stop (should_training_stop), LR (every param group and the scheduler's base LRs), clip
    norm (args.max_grad_norm), save (should_save: the Trainer's checkpoint-N), evaluate
    (should_evaluate, with an eval_dataset), sample (generate, with a tokenizer). Across
    processes rank 0 decides and every rank acts at the same step; the loss shown is the
    mean over the ranks. The job ends when train() returns or raises.

    Args:
        run_dir: the run directory (None: `lmwidget-runs/run-<time>-<pid>`).
        tensorboard: a directory where rank 0 writes TensorBoard event files while it
            trains (needs the tensorboard package).
        ip: the address rank 0 binds (127.0.0.1: this machine only; see lmwidget.attach).
        announce: print where to attach (rank 0, on stdout).
        **options: the run's options: `tokens_per_step`, `checkpoint_dir`, `callbacks`
            (lmwidget's), `name`.
    """

    def __init__(self, run_dir=None, *, tensorboard=None, ip: str = "127.0.0.1", announce: bool = True,
                 **options):
        self.run_dir, self.tensorboard, self.ip, self.announce = run_dir, tensorboard, ip, announce
        self.options = options
        self.run: HFRun | None = None   # the run of the latest train()
        self.job: ScriptJob | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
        trainer = calling_trainer(self)
        sync = join_ranks(args.device, FRAMEWORK_SHARED)
        self.run = run = HFRun(trainer, from_callback=True, sync=sync, **self.options)
        run.hook(callback=False, printers=True)
        run.callback.on_train_begin(args, state, control, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.job = ScriptJob(run, self.run_dir, sync=sync, ip=self.ip, tensorboard=self.tensorboard,
                             announce=sys.stdout if self.announce else None)

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.run.before_update()

    def on_step_end(self, args, state, control, **kw):
        self.run.callback.on_step_end(args, state, control)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if self.run is not None and not self.run.ended:
            self.run.callback.on_evaluate(args, state, control, metrics=metrics)

    def on_save(self, args, state, control, **kw):
        if self.run is not None and not self.run.ended:
            self.run.callback.on_save(args, state, control)

    def on_train_end(self, args, state, control, **kw):
        self.run.unhook()
        self.job.finish()


def calling_trainer(callback) -> Trainer:
    """The Trainer whose callbacks include `callback` and that is calling it now (a
    TrainerCallback is handed the model and optimizer, not the Trainer)."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer) and callback in owner.callback_handler.callbacks:
            return owner
        frame = frame.f_back
    raise RuntimeError("lmwidget.HFCallback was called outside a transformers.Trainer's train(): "
                       "add it with Trainer(..., callbacks=[lmwidget.HFCallback(...)]) or "
                       "trainer.add_callback(...)")
