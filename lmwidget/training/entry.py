"""train(): where a run starts from what the user gave, the model resolved once and the run's config new or resumed."""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

from lmwidget.checkpoint import saving as checkpoint
from lmwidget.data import tokenfiles, tokens
from lmwidget.models import pretrained
from lmwidget.models.resolve import choose

from lmwidget.core.callbacks import Callbacks
from lmwidget.core.control import ENDED
from lmwidget.core.registry import active_runs, runs
from lmwidget.errors import LmwidgetWarning
from lmwidget.writers.tensorboard import TensorBoardWriter

from .config import TrainConfig
from .resume import resume_config
from .run import Run


class Start(NamedTuple):
    """What a run starts from: plain options, and the objects given beside them."""

    config: TrainConfig  #: the options, plain values only
    model: object        #: your module (config.model is None), or None: built from the config
    tokenizer: object    #: a tokenizer object given (config.tokenizer is None), or None
    restore: dict | None  #: the checkpoint read, to continue; None for a new run


def configure(model=None, data=None, options: dict | None = None, *, resume=None,
              command_line: bool = False) -> Start:
    """Resolve the model and tokenizer options once and make the run's config from them.

    Args:
        model: "gpt" (None), "lstm", an nn.Module, "MODULE:NAME", or a model directory.
        data: the data option (None: "builtin", or a resumed run's own).
        options: the other options (TrainConfig's).
        resume: a checkpoint file or a directory of them, to continue.
        command_line: the options came from the command line (see resolve.choose).

    Returns:
        The Start: the config (plain values: its model is None when the module is yours, its
        tokenizer None when an object was given), the module given or imported, the tokenizer
        object given, and the checkpoint read (None without `resume`).

    Raises:
        ValueError: an option, the model or the checkpoint is refused (each says why).
        TypeError: an unknown option.
    """
    options = dict(options or {})
    choice = choose(model, options.get("seed", TrainConfig.seed), command_line)
    if choice.module is not None:  # a pretrained module of yours: its own tokenizer, checked
        if "tokenizer" not in options and (own := pretrained.own_tokenizer(choice.module)):
            options["tokenizer"] = own
        pretrained.check_tokenizer(choice.module, options.get("tokenizer", TrainConfig.tokenizer))
    tokenizer = options.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):  # an object: kept beside
        if not tokenfiles.is_dir(data):
            tokens.check(tokenizer, options.get("vocab_size", 0))
        if resume is None:
            options["tokenizer"] = None
    else:
        tokenizer = None
    if resume is None:
        config = TrainConfig.from_options(model=choice.option, data="builtin" if data is None else data,
                                          **options)
        return Start(config, choice.module, tokenizer, None)
    restore = checkpoint.read(resume)
    given = choice.module if choice.module is not None else None if model is None else choice.option
    return Start(resume_config(restore, given, data, options), choice.module, None, restore)


def train(model=None, data=None, *, resume=None, display: bool = True, concurrent: bool = False,
          callbacks=None, ghosts: int = 0, tensorboard=None, **options) -> "Run":
    """Start training in a background thread and return its Run at once.

    In a notebook the dashboard is displayed in the cell's output. If a run is already
    training, no second one starts unless `concurrent=True`: a warning names `%lmstop` and
    the running run is returned.

    Args:
        model: "gpt" (None, the default), "lstm", your nn.Module (forward(idx, targets)
            returns (logits, loss); a Hugging Face causal LM is adapted), "MODULE:NAME" of
            your code, or the directory of a Hugging Face model (save_pretrained's).
        data: "builtin" (None, the default), "shakespeare", a text file's path, text, or a
            token directory (lmwidget.prepare).
        resume: a checkpoint file, or a directory of them (its newest is used), to continue
            with its history; options given override the saved ones, except those that shape
            the model (checkpoint.FIXED).
        display: show the dashboard in the running cell.
        concurrent: start even while another run trains.
        callbacks: a Callback or a list of them (EarlyStopping, ReduceLROnPlateau, your own).
        ghosts: draw the loss curves of this kernel's N latest finished runs faintly.
        tensorboard: a directory where the run writes TensorBoard event files while it
            trains (about once a second, and when it pauses or ends): `tensorboard --logdir`
            on it shows the run live. Needs the tensorboard package.
        **options: TrainConfig's options (lr, max_steps, batch_size, ...). `lr` may be an
            LRFinder (lr_find): its chosen LR, else its suggestion.

    Returns:
        The Run, training in its own thread (or the run already training).

    Raises:
        ValueError: an option, the model, the data or the checkpoint is refused, saying why
            and what would be accepted.
        TypeError: an unknown option.
        ImportError: `tensorboard` was given, and the tensorboard package is not installed.
    """
    if not isinstance(ghosts, int) or isinstance(ghosts, bool) or ghosts < 0:
        raise ValueError(f"ghosts must be an integer >= 0 (earlier runs to draw faintly); got {ghosts!r}")
    if hasattr(options.get("lr"), "suggestion"):  # lr=finder: the LR chosen on its curve
        options["lr"].wait()  # it may still be training the model; re-raises its failure
        options["lr"] = options["lr"].lr
    start = configure(model, data, options, resume=resume)
    callbacks = Callbacks(callbacks)
    running = [r for r in active_runs() if not r.control.stop_requested]  # stopping ones are ending
    if running and not concurrent:
        warnings.warn(
            f"run {running[-1].id} is still training (state {running[-1].state!r}, step "
            f"{running[-1].step}/{running[-1].max_steps}), so no new run was started and that "
            f"run was returned. Stop it with %lmstop (or run.stop()) first, or pass "
            f"concurrent=True (--concurrent) to train both at once.",
            LmwidgetWarning, stacklevel=2)
        run = running[-1]
    else:
        run = Run(start.config, model=start.model, tokenizer=start.tokenizer, callbacks=callbacks.items,
                  restore=start.restore)
        if ghosts:
            run.ghosts = [r for r in runs() if r.state in ENDED and len(r.record)][-ghosts:]
        writer = None if tensorboard is None else TensorBoardWriter(run, tensorboard)  # refused before the start
        run.start()
        if writer is not None:
            writer.start()
    if display:
        run.show()
    return run
