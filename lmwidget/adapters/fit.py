"""fit(): a Hugging Face or Lightning trainer's training in a background thread, with the dashboard."""

from __future__ import annotations

from .hf_trainer import HFRun, is_hf_trainer
from .lightning_trainer import LightningRun, is_lightning_trainer


def fit(trainer, *args, display: bool = True, **kwargs):
    """Train with `trainer` in a background thread of the kernel and return its run at once,
    with the live dashboard in the cell.

    A `transformers.Trainer`: `lmwidget.fit(trainer)` runs `trainer.train(*args, **kwargs)`.
    A Lightning `Trainer`: `lmwidget.fit(trainer, model, datamodule=...)` runs
    `trainer.fit(model, ...)`. lmwidget's options for the run (`tokens_per_step`,
    `sample`, `checkpoint_dir`, `callbacks`, `name`) go in `run_options={...}`. The
    trainer's own progress bar is left out: the dashboard shows the progress. What the
    framework logs while it trains stays out of the cell: lines known to be harmless are
    dropped, its other lines go to the run's events (`lmwidget.adapters.chatter.quiet`);
    its warnings and errors, and yours, are shown as ever.

    Args:
        trainer: a `transformers.Trainer`, or a Lightning (or `pytorch_lightning`) `Trainer`.
        *args: passed on to `trainer.train` (a checkpoint to resume from) or, after the
            LightningModule, to `trainer.fit` (data loaders).
        display: show the dashboard in the current cell.
        **kwargs: passed on to `trainer.train` or `trainer.fit` (`ckpt_path=`, ...), except
            `run_options`, lmwidget's options for the run.

    Returns:
        The run (an `HFRun` or a `LightningRun`, both a `Loop`), already training.

    Raises:
        TypeError: `trainer` is neither framework's Trainer, or a Lightning fit without its
            LightningModule.
    """
    options = kwargs.pop("run_options", None) or {}
    if is_hf_trainer(trainer):
        run = HFRun(trainer, **options)
        run.start(run.run_trainer, *args, **kwargs)
    elif is_lightning_trainer(trainer):
        if not args and "model" not in kwargs:
            raise TypeError("lmwidget.fit(trainer, model, ...) needs the LightningModule to train")
        model = args[0] if args else kwargs.pop("model")
        run = LightningRun(trainer, model, **options)
        run.start(run.run_trainer, *args[1:], **kwargs)
    else:
        raise TypeError(f"fit() takes a transformers.Trainer or a Lightning Trainer; got "
                        f"{type(trainer).__module__}.{type(trainer).__name__} (for your own loop, "
                        f"see lmwidget.steer)")
    if display:
        run.show()
    return run
