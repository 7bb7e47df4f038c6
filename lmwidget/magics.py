"""IPython magics: %lmtrain starts a run with its dashboard, %lmstop stops every run."""

from __future__ import annotations

import argparse
import os
import shlex

import torch.nn as nn
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from .core.callbacks import EarlyStopping, ReduceLROnPlateau
from .core.registry import active_runs
from .data.tokens import TOKENIZERS
from .lrfind.finder import lr_find
from .training.config import OPTIONS, add_options
from .training.entry import train
from .views.frontends import prepare as prepare_frontend

class _Help(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}. See {self.prog} --help")

    def exit(self, status=0, message=None):
        raise _Help()


def _parser() -> _Parser:
    parser = _Parser(prog="%lmtrain", description="Train a language model in the background "
                     "with a live dashboard; returns the Run (run = %lmtrain ...).")
    add_options(parser, "gpt, lstm, the name of a variable holding an nn.Module, or a Hugging "
                        "Face model's directory")
    parser.add_argument("--ghosts", dest="ghosts", type=int, default=0, metavar="N",
                        help="draw the loss of this kernel's N latest finished runs faintly")
    parser.add_argument("--concurrent", action="store_true",
                        help="start even if another run is still training")
    parser.add_argument("--callbacks", dest="callbacks", default=None, metavar="NAME",
                        help="the name of a variable holding a Callback or a list of them")
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help="write TensorBoard event files into DIR while the run trains")
    return parser


@magics_class
class LmMagics(Magics):
    @line_magic
    def lmtrain(self, line: str):
        """Start a run: %lmtrain --model gpt --steps 2000 --lr 3e-3 (see %lmtrain --help)."""
        parser = _parser()
        try:
            options = vars(parser.parse_args(shlex.split(line)))
        except _Help:
            return None
        concurrent = options.pop("concurrent")
        resume = options.pop("resume")
        ghosts = options.pop("ghosts")
        tensorboard = options.pop("tensorboard")
        try:
            callbacks = self._callbacks(options.pop("callbacks"), options.pop("early_stopping"),
                                        options.pop("reduce_lr"))
        except (ValueError, TypeError) as e:
            raise UsageError(f"%lmtrain: {e}") from None
        self._resolve_model(options, "%lmtrain")
        try:
            return train(concurrent=concurrent, callbacks=callbacks, resume=resume, ghosts=ghosts,
                         tensorboard=tensorboard, **options)
        except (ValueError, TypeError, ConnectionError, FileNotFoundError, ImportError) as e:
            raise UsageError(f"%lmtrain: {e}") from None

    def _resolve_model(self, options: dict, prog: str) -> None:
        """--model NAME of a variable: the nn.Module it holds (a directory stays a path)."""
        model = options.get("model")
        if model is not None and model not in ("gpt", "lstm"):
            value = self.shell.user_ns.get(model)
            if isinstance(value, nn.Module):
                options["model"] = value
            elif not os.path.isdir(os.path.expanduser(model)):
                raise UsageError(f"{prog}: --model {model!r} is neither gpt, lstm nor the name "
                                 f"of a variable holding an nn.Module, nor an existing directory "
                                 f"of a Hugging Face model")
        tokenizer = options.get("tokenizer")
        if isinstance(tokenizer, str) and tokenizer.isidentifier() and tokenizer not in TOKENIZERS \
                and tokenizer in self.shell.user_ns:  # the name of a variable holding a tokenizer
            options["tokenizer"] = self.shell.user_ns[tokenizer]

    def _callbacks(self, name, early_stopping, reduce_lr) -> list:
        callbacks = []
        if name is not None:
            if name not in self.shell.user_ns:
                raise ValueError(f"--callbacks {name!r} is not the name of a variable")
            value = self.shell.user_ns[name]
            callbacks += list(value) if isinstance(value, (list, tuple)) else [value]
        if early_stopping is not None:
            callbacks.append(EarlyStopping(patience=early_stopping))
        if reduce_lr is not None:
            callbacks.append(ReduceLROnPlateau(patience=reduce_lr))
        return callbacks

    @line_magic
    def lmfind(self, line: str):
        """The LR range test: %lmfind --start 1e-6 --end 10 --steps 100 (and %lmtrain's model
        and data options); returns the LRFinder (finder = %lmfind ...)."""
        parser = _Parser(prog="%lmfind", description="LR range test: train with an exponentially "
                         "growing LR, show the smoothed loss against it, suggest an LR; click a "
                         "point to choose one.")
        for flag, field, type_, help_ in OPTIONS:
            if field not in ("max_steps", "lr", "schedule", "warmup_steps", "min_lr_ratio",
                             "eval_interval", "eval_iters", "anomaly", "spike_factor",
                             "checkpoint_dir", "checkpoint_every", "keep_checkpoints"):
                parser.add_argument(flag, dest=field, type=type_, default=argparse.SUPPRESS, help=help_)
        parser.add_argument("--start", type=float, default=1e-6, help="first LR (default: 1e-6)")
        parser.add_argument("--end", type=float, default=10.0, help="last LR (default: 10)")
        parser.add_argument("--steps", type=int, default=100, help="steps of the test (default: 100)")
        try:
            options = vars(parser.parse_args(shlex.split(line)))
        except _Help:
            return None
        self._resolve_model(options, "%lmfind")
        try:
            return lr_find(**options)
        except (ValueError, TypeError, ConnectionError) as e:
            raise UsageError(f"%lmfind: {e}") from None

    @line_magic
    def lmstop(self, line: str = ""):
        """Stop every run that is still training, and wait (up to 5 s each) for it to end."""
        running = active_runs()
        for run in running:
            run.stop()
        for run in running:
            if not run.join(5.0):
                print(f"run {run.id} was asked to stop; its step is still running (step {run.step})")
            else:
                print(f"run {run.id} {run.state} at step {run.step}/{run.max_steps}")
        if not running:
            print("no run is training")


def load_ipython_extension(ipython) -> None:
    """Add `%lmtrain`, `%lmstop` and `%lmfind` to IPython; `%load_ext lmwidget` calls it.

    Args:
        ipython: the running `InteractiveShell`.
    """
    prepare_frontend()  # Colab: its custom widget manager, before any dashboard is drawn
    ipython.register_magics(LmMagics)
