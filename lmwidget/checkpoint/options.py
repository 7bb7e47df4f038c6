"""A run's options and tokenizer as a checkpoint keeps them."""

from __future__ import annotations

import dataclasses
import numbers
import os

import torch

from lmwidget.data import tokens

# options a resumed run must keep: they shape the model's weights, the optimizer's state and
# the train/validation split the checkpoint holds
FIXED = ("n_layer", "n_head", "n_embd", "block_size", "optimizer", "val_fraction")


def config_state(config, tokenizer=None) -> dict:
    """The options as plain values for a checkpoint (a module of yours is None, its class is
    kept beside them as model_class).

    Args:
        config: the run's TrainConfig.
        tokenizer: the run's tokenizer, named here when the config's option is None (an
            object given beside it, or a resumed run's own).

    Returns:
        {option: plain value}.
    """
    out = {f.name: _plain_number(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(out["model"], torch.nn.Module):
        out["model"] = None
    if isinstance(out["data"], os.PathLike):
        out["data"] = os.fspath(out["data"])
    # the tokenizer itself is kept as JSON; its name here: the option, or the object's beside it
    out["tokenizer"] = tokens.label(tokenizer if out["tokenizer"] is None else out["tokenizer"])
    return out


def tokenizer_state(tokenizer) -> dict:
    """What a checkpoint keeps of its tokenizer: the characters (as 0.1 did), else its JSON."""
    return tokens.saved(tokenizer)


def tokenizer_of(payload: dict):
    """The tokenizer a checkpoint was trained with: characters (every version), or the JSON
    of a word, BPE or other tokenizer (0.2 on); a malformed one is refused naming the file."""
    where = f"checkpoint {payload['path']}" if payload.get("path") else "the checkpoint"
    return tokens.restored(payload, f"the tokenizer in {where}")


def _plain_number(value):
    """numpy and other number types as the Python int or float a checkpoint can hold."""
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


