"""TrainConfig: every option of a run, with the checks that refuse bad input early."""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
from dataclasses import dataclass

import torch.nn as nn

from lmwidget.core.values import check_grad_clip, check_lr, is_number  # noqa: F401 (check_* imported from here too)

from lmwidget.models import pretrained
from lmwidget.data import tokenfiles, tokens
from lmwidget.models.builtin import MODELS

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "exponential")
DTYPES = ("float32", "bfloat16")
ANOMALY_ACTIONS = ("pause", "skip")


@dataclass
class TrainConfig:
    """Every option of a run, as plain values, each field's default the option's (the Options
    guide says what each does); from_options() builds one and validates it, as train() does."""
    model: str | None = "gpt"    # "gpt", "lstm", a Hugging Face model's directory (save_pretrained's),
                                 # or None: a module of yours, given beside the config (train(model=...))
    data: object = "builtin"     # "builtin" (offline), "shakespeare", a file path, or a str of text
    tokenizer: str | None = "char"  # "char", "word", "bpe", or a tokenizer.json path or directory (a
                                 # pretrained model's own beside it, unless one is given); None: a
                                 # tokenizer object given beside the config, or a resumed run's own
    vocab_size: int = 0          # word: the most frequent kept; bpe: its size; 0: 10,000 / 1,024
    max_steps: int = 2000
    batch_size: int = 16         # sequences per micro-step
    block_size: int = 64         # context length in tokens
    lr: float = 3e-3             # base learning rate; the schedule shapes it, set_lr moves it
    optimizer: str = "adamw"
    weight_decay: float = 0.01   # AdamW's decoupled decay (L2 for Adam and SGD)
    momentum: float = 0.9        # SGD only
    schedule: str = "constant"   # constant: the slider's value is the LR applied, which suits tuning by hand
    warmup_steps: int = 0        # linear warmup from 0, before any schedule
    min_lr_ratio: float = 0.1    # where cosine and exponential decay end, as a fraction of lr
    grad_clip: float = 1.0       # max global gradient norm; 0 turns clipping off
    grad_accum: int = 1          # micro-steps per optimizer step: effective batch = batch_size * grad_accum
    eval_interval: int = 100     # steps between validation-loss estimates (and at the last step); 0: never
    eval_iters: int = 10         # validation batches per estimate
    val_fraction: float = 0.1    # the tail of the corpus held out for validation
    seed: int = 1337             # the same seed gives the same loss curve on CPU
    device: str = "auto"         # "auto" picks cuda when available, else cpu
    threads: int = 0             # CPU threads of the training step; 0: every usable CPU or one
                                 # fewer, whichever trains faster now, and one fewer while other
                                 # work wants a CPU (threads.ThreadTuner)
    dtype: str = "float32"       # "bfloat16": autocast forward passes to bf16 (tensor cores on GPUs)
    compile: bool = False        # torch.compile the model: faster steps after a slow first one
    fsdp: bool = False           # under torchrun, shard the model over the ranks (FSDP2) instead
                                 # of a whole copy on each (DDP): models larger than one GPU
    n_layer: int = 2             # the defaults learn visibly within a minute on 2 CPU cores
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    anomaly: str = "pause"       # a non-finite loss or grad norm always skips the update; "pause"
                                 # then pauses the run, "skip" trains on
    spike_factor: float = 10.0   # mark a grad norm this many times its running median (and a loss
                                 # ln(spike_factor) above its own) as an anomaly; 0: off
    checkpoint_dir: object = None  # where checkpoints go; None: lmwidget-checkpoints/run-<time>-<id>
                                 # in the working directory (created at the first save)
    checkpoint_every: int = 0    # save every N steps, and where the run ends; 0: only when asked
    keep_checkpoints: int = 3    # periodic checkpoints kept (the newest); 0 keeps them all
    save_best: bool = False      # keep best.pt: the checkpoint of the lowest validation loss

    @classmethod
    def option_names(cls) -> list[str]:
        """The names of every option (the fields), in the order they are declared."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, **options) -> "TrainConfig":
        """A validated config of the options given by name (train()'s keyword options).

        Args:
            **options: option values by name; an option not given keeps its default. A pretrained
                model directory with a tokenizer.json brings it, unless `tokenizer` is given.

        Returns:
            The config, checked by validate().

        Raises:
            TypeError: an unknown option, or an nn.Module as `model` (a module of yours is given
                beside the config, with model=None).
            ValueError: an option's value is refused (see validate()).
        """
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; valid options: "
                            f"{', '.join(cls.option_names())}")
        if isinstance(options.get("model"), nn.Module):
            raise TypeError(f"TrainConfig keeps plain values: model is \"gpt\", \"lstm\", a model "
                            f"directory, or None for a module of yours given beside it: "
                            f"train(model=module, ...) or Run(config, model=module); got a "
                            f"{type(options['model']).__name__}")
        tokenizer = options.get("tokenizer")
        if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
            raise TypeError(f"TrainConfig keeps plain values: tokenizer is \"char\", \"word\", \"bpe\", a "
                            f"tokenizer.json path, or None for a tokenizer object given beside it: "
                            f"train(tokenizer=..., ...) or Run(config, tokenizer=...); got a "
                            f"{type(tokenizer).__name__}")
        for name in ("tokenizer", "data", "checkpoint_dir"):  # paths as the plain str they name
            if isinstance(options.get(name), os.PathLike):
                options[name] = os.fspath(options[name])
        config = cls(**pretrained.with_own_tokenizer(options))
        config.validate()
        return config

    def validate(self) -> None:
        """Check every option, raising at the first one refused; also normalizes in place: a
        model directory's path becomes a str, a numpy number the Python int or float it equals.

        Raises:
            ValueError: an unknown model, tokenizer, optimizer, schedule, dtype or anomaly action,
                a number out of its range, a tokenizer that does not fit the model or vocab_size,
                save_best without evaluations, or a checkpoint_dir or device of the wrong type;
                each says why.
        """
        if pretrained.is_directory(self.model):
            pretrained.check_directory(self.model)
            self.model = os.fspath(self.model)  # a plain str: checkpoints keep it, resume reloads it
        elif self.model is not None and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid: {pretrained.ACCEPTED}")
        pretrained.check_tokenizer(self.model, self.tokenizer)
        check_lr(self.lr)
        if self.tokenizer is not None and not tokenfiles.is_dir(self.data):  # a token directory
            tokens.check(self.tokenizer, self.vocab_size)                      # brings its own
        for name in ("max_steps", "batch_size", "block_size", "grad_accum", "eval_iters",
                     "n_layer", "n_head", "n_embd"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_interval", "threads", "checkpoint_every", "keep_checkpoints"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("seed", self.seed, minimum=0)
        check_grad_clip(self.grad_clip)
        for name in ("weight_decay", "momentum", "min_lr_ratio"):
            _check_float(name, getattr(self, name), 0.0, 1e6 if name == "weight_decay" else 1.0)
        _check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        _check_float("val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        for f in dataclasses.fields(self):  # numpy numbers become the Python ones they equal
            value = getattr(self, f.name)
            if isinstance(value, numbers.Number) and not isinstance(value, bool):
                setattr(self, f.name, int(value) if isinstance(value, numbers.Integral) else float(value))
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("anomaly", self.anomaly, ANOMALY_ACTIONS)
        if not (is_number(self.spike_factor) and (self.spike_factor == 0 or 1 < self.spike_factor < math.inf)):
            raise ValueError(f"spike_factor must be 0 (off) or a finite number > 1 (for example 10); "
                             f"got {self.spike_factor!r}")
        if self.schedule == "exponential" and self.min_lr_ratio == 0:
            raise ValueError("min_lr_ratio must be > 0 with schedule='exponential' (the LR "
                             "would be 0 after the first step); got 0")
        for name in ("compile", "save_best", "fsdp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.save_best and not self.eval_interval:
            raise ValueError("save_best=True needs validation losses: set eval_interval > 0 "
                             "(it is 0, so the run never evaluates)")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise ValueError(f"checkpoint_dir must be a directory path (str or os.PathLike) or "
                             f"None; got {self.checkpoint_dir!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}")

    def summary(self) -> dict:
        """The options as plain values (a module of yours is None here: Run.options() names its class)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["tokenizer"] = None if self.tokenizer is None else tokens.label(self.tokenizer)
        if not isinstance(self.data, str) or len(self.data) > 80:
            out["data"] = f"<text of {len(self.data)} characters>" if isinstance(self.data, str) else str(self.data)
        return out


def _check_int(name, value, minimum) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_float(name, value, low, high, low_open=False, high_open=False) -> None:
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}; got {value!r}")


def _check_choice(name, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")


# (flag, TrainConfig field, type, help); --steps is the one flag that is not the field's name
OPTIONS = [
    ("--model", "model", str, "gpt or lstm"),
    ("--data", "data", str, "builtin, shakespeare, a path to a UTF-8 text file, or a token directory (python -m lmwidget prepare)"),
    ("--tokenizer", "tokenizer", str, "char, word, bpe, or a tokenizer.json file or directory"),
    ("--vocab-size", "vocab_size", int, "word: most frequent kept; bpe: its size (0: 10000 / 1024)"),
    ("--steps", "max_steps", int, "optimizer steps to train"),
    ("--lr", "lr", float, "base learning rate"),
    ("--batch-size", "batch_size", int, "sequences per micro-step"),
    ("--block-size", "block_size", int, "context length in tokens"),
    ("--optimizer", "optimizer", str, "one of " + ", ".join(OPTIMIZERS)),
    ("--weight-decay", "weight_decay", float, "weight decay"),
    ("--momentum", "momentum", float, "SGD momentum"),
    ("--schedule", "schedule", str, "one of " + ", ".join(SCHEDULES)),
    ("--warmup-steps", "warmup_steps", int, "linear warmup steps"),
    ("--min-lr-ratio", "min_lr_ratio", float, "final LR of cosine/exponential decay, as a fraction"),
    ("--grad-clip", "grad_clip", float, "max gradient norm (0: no clipping)"),
    ("--grad-accum", "grad_accum", int, "micro-steps per optimizer step"),
    ("--eval-interval", "eval_interval", int, "steps between validation estimates"),
    ("--eval-iters", "eval_iters", int, "batches per validation estimate"),
    ("--val-fraction", "val_fraction", float, "fraction of the corpus held out"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N"),
    ("--threads", "threads", int, "CPU threads for training (0: every CPU or one fewer, whichever is faster)"),
    ("--dtype", "dtype", str, "float32, or bfloat16 for bf16 autocast"),
    ("--n-layer", "n_layer", int, "layers"),
    ("--n-head", "n_head", int, "attention heads (GPT)"),
    ("--n-embd", "n_embd", int, "embedding / hidden size"),
    ("--dropout", "dropout", float, "dropout probability"),
    ("--anomaly", "anomaly", str, "after a non-finite step: pause, or skip and train on"),
    ("--spike-factor", "spike_factor", float, "mark grad-norm/loss spikes this many times the median (0: off)"),
    ("--checkpoint-dir", "checkpoint_dir", str, "where checkpoints go (default: lmwidget-checkpoints/run-<time>-<id>)"),
    ("--checkpoint-every", "checkpoint_every", int, "save every N steps and at the end (0: only when asked)"),
    ("--keep-checkpoints", "keep_checkpoints", int, "periodic checkpoints kept, newest first (0: all)"),
]


def add_options(parser, model_help: str) -> None:
    """The training options (%lmtrain's and the command line's) on an argparse parser; only
    the options given end up in the parsed namespace."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for flag, field, type_, help_ in OPTIONS:
        parser.add_argument(flag, dest=field, type=type_, default=argparse.SUPPRESS,
                            help=f"{model_help if field == 'model' else help_} (default: {defaults[field]})")
    parser.add_argument("--compile", dest="compile", action="store_const", const=True,
                        default=argparse.SUPPRESS, help="torch.compile the model")
    parser.add_argument("--fsdp", dest="fsdp", action=argparse.BooleanOptionalAction,
                        default=argparse.SUPPRESS, help="under torchrun, shard the model over the "
                        "ranks with FSDP2 instead of DDP (--no-fsdp: resume an FSDP job's checkpoint without)")
    parser.add_argument("--save-best", dest="save_best", action="store_const", const=True,
                        default=argparse.SUPPRESS, help="keep best.pt, the lowest validation loss")
    parser.add_argument("--resume", dest="resume", default=None, metavar="PATH",
                        help="continue a checkpoint (a file, or a directory: its newest); other "
                        "options override the saved ones")
    parser.add_argument("--early-stopping", dest="early_stopping", type=int, default=None,
                        metavar="PATIENCE", help="stop after PATIENCE evaluations without a better "
                        "validation loss")
    parser.add_argument("--reduce-lr-on-plateau", dest="reduce_lr", type=int, default=None,
                        metavar="PATIENCE", help="halve the LR after PATIENCE evaluations without "
                        "a better validation loss")
