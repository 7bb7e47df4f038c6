"""steer(): your own training loop watched and steered, in the kernel or, given a run directory, as a job a notebook attaches to."""

from __future__ import annotations

import sys

from lmwidget.adapters.loop import Loop
from lmwidget.adapters.steerable import check_steerable
from lmwidget.adapters.ranked import join_ranks
from lmwidget.writers.tensorboard import write_tensorboard
from lmwidget.core.callbacks import Callbacks
from .serving import EndsJob, ScriptJob


def steer(model, optimizer, lr_scheduler=None, *, run_dir=None, tensorboard=None, display: bool = True,
          ip: str = "127.0.0.1", **options) -> Loop:
    """Watch and steer your own training loop: returns its Loop. Call `run.tick(loss)` once
    per optimizer step, after `loss.backward()` and before `optimizer.step()`, and end the
    loop when it returns False.

    In a notebook the dashboard shows in the cell, and `run.start(train)` runs your loop
    function `train` in a background thread so the cell returns at once. Given `run_dir`,
    the loop is also a job: your script runs as it always did (`python train.py`, or under
    `torchrun`), rank 0 publishes its record there and prints where to attach, and
    `lmwidget.attach(run_dir)` in a notebook shows the dashboard and steers it. Under
    torchrun (a process group your script initialized, for DDP, or one lmwidget initializes)
    rank 0 decides and every rank pauses, stops and applies a new LR or clip norm at the
    same step; the loss shown is the mean over the ranks. The job's run ends with your
    script: when it returns, raises, or `run.end()` is called.

    Args:
        model: the nn.Module your loop trains (DistributedDataParallel's, or its module).
        optimizer: its torch optimizer (the LR control scales its param groups).
        lr_scheduler: its LR scheduler, if any (a new LR scales its base LRs too).
        run_dir: serve the loop as a job from this directory (connection file, record,
            each rank's events); None: no job.
        tensorboard: a directory where the loop's record is written as TensorBoard event
            files while it trains (rank 0's; needs the tensorboard package).
        display: show the dashboard in the running cell (in a notebook).
        ip: the address a job binds (127.0.0.1: this machine only; see attach()).
        **options: `tokens_per_step` (for tokens/s; per rank), `max_steps` (for the progress
            bar), `grad_clip` (lmwidget clips to it; then the clip norm can be steered),
            `sample` (a function of the model returning text: the Sample button; rank 0's),
            `evaluate` (a function returning the validation loss: the Evaluate button;
            rank 0's), `checkpoint_dir`, `resume` (a checkpoint of a Loop), `callbacks`,
            `name`.

    Returns:
        The Loop; with `run_dir`, its `job` (a ScriptJob: `job.run_dir`, `job.connection_file`).

    Raises:
        TypeError: a model, optimizer or scheduler lmwidget cannot steer, or an unknown option.
        ValueError: an option's value is refused (each says why).
        ImportError: `tensorboard` given without the tensorboard package.
    """
    check_steerable(model, optimizer, lr_scheduler)
    sync, ends = None, EndsJob()
    if run_dir is not None:
        sync = join_ranks(next(model.parameters()).device)
        options["sync"] = sync
        options["callbacks"] = Callbacks(options.get("callbacks")).items + [ends]
    run = Loop(model, optimizer, lr_scheduler, **options)
    if run_dir is not None:
        run.job = ends.job = ScriptJob(run, run_dir, sync=sync, ip=ip, announce=sys.stdout,
                                       tensorboard=tensorboard)
    elif tensorboard is not None:
        run.tensorboard = write_tensorboard(run, tensorboard)
    if display:
        run.show()
    return run
