"""The config that continues a checkpoint: its options, its current LR and clip norm, and the options that may change."""

from __future__ import annotations

import torch

from lmwidget.checkpoint import loading
from lmwidget.checkpoint.options import FIXED, tokenizer_of
from lmwidget.data import tokens
from lmwidget.data.chars import CharTokenizer
from lmwidget.errors import CheckpointError

from .config import TrainConfig


def resume_config(payload: dict, model=None, data=None, options: dict | None = None):
    """The TrainConfig that continues a checkpoint: its options, its current LR and clip norm,
    with `options` overriding any but the FIXED ones."""
    options = dict(options or {})
    if payload.get("source", "run") != "run":
        raise CheckpointError(f"checkpoint {payload['path']} was written by lmwidget.steer() (your own "
                              f"loop): resume it with lmwidget.steer(model, optimizer, ..., resume=path)")
    loading.check_keys(payload)
    path, saved, state = payload["path"], dict(payload["config"]), payload["trainer"]
    for name in FIXED:
        if name in options and options[name] != saved.get(name):
            raise ValueError(f"{name}={options[name]!r} differs from checkpoint {path}'s "
                             f"{name}={saved.get(name)!r}: a resumed or branched run keeps its model, "
                             f"optimizer and data split. Leave {name} out, or start a new run")
    if saved["model"] is None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"checkpoint {path} was trained with your own model "
                             f"{payload['model_class']}: pass model=<a {payload['model_class']} built "
                             f"the same way> to resume it")
    elif model is not None and model != saved["model"]:
        raise ValueError(f"model={model!r} differs from checkpoint {path}'s model "
                         f"{saved['model']!r}: leave model out to resume it")
    saved_tokenizer = tokenizer_of(payload)
    if "tokenizer" in options:
        given = options["tokenizer"]
        same = (given == saved.get("tokenizer", "char") if isinstance(given, str)
                else saved_tokenizer.same_as(tokens.load(given) if not isinstance(given, CharTokenizer) else given))
        if not same:
            raise ValueError(f"tokenizer={tokens.label(given)!r} differs from the tokenizer checkpoint {path} "
                             f"was trained with ({saved_tokenizer.describe()}): its token ids would mean "
                             f"other text. Leave tokenizer out: the checkpoint's own is restored")
    options["tokenizer"] = None  # the checkpoint's own, stored as JSON: Run restores it, never trained again
    known = set(TrainConfig.option_names())
    # a resumed run saves into a directory of its own (a new one, unless given): resumed
    # from an older checkpoint it is a branch, whose files must not mix with the first's
    merged = {k: v for k, v in saved.items() if k in known and k != "checkpoint_dir"}
    merged.update(lr=state["base_lr"], grad_clip=state["grad_clip"])
    merged.update(options)
    if data is not None:
        merged["data"] = data
    config = TrainConfig.from_options(**merged)
    loading.check_model(payload, config, saved_tokenizer.vocab_size)  # before anything is built
    if state["step"] >= config.max_steps:
        raise ValueError(f"checkpoint {path} is at step {state['step']}, and max_steps is "
                         f"{config.max_steps}: pass max_steps > {state['step']} (--steps) to train on")
    return config
