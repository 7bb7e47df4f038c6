"""A run's options and tokenizer as a checkpoint keeps them."""

from __future__ import annotations

import os

import torch

from lmwidget.data import tokens

# options a resumed run must keep: they shape the model's weights, the optimizer's state and
# the train/validation split the checkpoint holds
FIXED = ("n_layer", "n_head", "n_embd", "block_size", "optimizer", "val_fraction")


def config_state(config) -> dict:
    """The options as plain values for a checkpoint (the user's own model by class name only)."""
    import dataclasses

    out = {f.name: _plain_number(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(out["model"], torch.nn.Module):
        out["model"] = None
    if isinstance(out["data"], os.PathLike):
        out["data"] = os.fspath(out["data"])
    out["tokenizer"] = tokens.label(out["tokenizer"])  # the tokenizer itself is kept as JSON
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
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


