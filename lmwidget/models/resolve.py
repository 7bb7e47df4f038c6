"""The model a run trains, resolved once at the entry: a built-in name, your module, MODULE:NAME, or a pretrained directory."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from .builtin import MODELS, build_model
from .contract import check_user_model
from .hf import adapt
from .pretrained import ACCEPTED, check_vocab, is_directory, load


@dataclass(frozen=True)
class Choice:
    """The model option resolved: what a TrainConfig keeps of it, and the module given beside.

    Attributes:
        option: "gpt", "lstm" or a model directory (built or loaded once the data is known);
            None when `module` is the model.
        module: your module (a Hugging Face causal LM adapted to the model contract), or None.
    """

    option: str | None
    module: nn.Module | None = None


def choose(model="gpt", seed: int = 0, command_line: bool = False) -> Choice:
    """Resolve what the user gave as the model, once, at the entry (train(), the command line,
    lr_find()).

    Args:
        model: "gpt" or "lstm"; an nn.Module (a Hugging Face causal LM is adapted); the
            directory of a Hugging Face model (save_pretrained's); or "MODULE:NAME", an
            nn.Module or a function returning one, imported from your code. None: "gpt".
        seed: the seed a MODULE:NAME function is called under (every rank builds the same
            initial weights).
        command_line: the option came from the command line (--model): there a string that
            is neither a name nor a directory is taken as MODULE:NAME.

    Returns:
        The Choice: a plain option for the config, and the module if one was given or built.

    Raises:
        ValueError: a MODULE:NAME that cannot be imported or gives no nn.Module; an unknown
            name (refused by the config, which names every accepted kind).
    """
    if model is None:
        return Choice("gpt")
    if isinstance(model, nn.Module):
        return Choice(None, adapt(model))
    if isinstance(model, str) and model not in MODELS and not os.path.isdir(os.path.expanduser(model)) \
            and (":" in model or command_line):
        return Choice(None, import_model(model, seed, "--model" if command_line else "model"))
    if is_directory(model):
        return Choice(os.fspath(model))
    return Choice(model)  # a name: the config accepts it or says what it accepts


def import_model(spec: str, seed: int = 0, name: str = "model") -> nn.Module:
    """MODULE:NAME: an nn.Module, or a function that returns one, called under `seed`.

    Args:
        spec: "MODULE:NAME", for example "mymodels:build".
        seed: the seed the function is called under.
        name: how the option is named in a refusal.

    Returns:
        The module.

    Raises:
        ValueError: the module or name cannot be imported, or gives no nn.Module.
    """
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"{name} {spec!r} is neither gpt, lstm nor MODULE:NAME "
                         f"(for example mymodels:build, a function returning an nn.Module), nor "
                         f"an existing directory of a Hugging Face model")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{name} {spec!r}: {e}") from None
    if not isinstance(obj, nn.Module) and callable(obj):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            obj = obj()
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{name} {spec!r} gave a {type(obj).__name__}, not an nn.Module")
    return adapt(obj)


def build(config, dataset, device, module: nn.Module | None = None) -> nn.Module:
    """The model a run trains, on `device`: gpt or lstm built from the options (seeded), the
    directory's pretrained model, or your module; checked against the dataset.

    Args:
        config: the run's options.
        dataset: its dataset (tokenizer, vocab_size, batches).
        device: where the model goes.
        module: your module (Choice.module), when config.model is None.

    Returns:
        The model, on `device`.

    Raises:
        ValueError: the directory, the vocabulary or the model's contract is refused (load,
            check_vocab, contract.check_user_model).
    """
    if isinstance(config.model, str) and config.model in MODELS:
        with torch.random.fork_rng(devices=[]):  # seeded init, the user's RNG untouched
            torch.manual_seed(config.seed)
            return build_model(config.model, dataset.vocab_size, config.block_size, config.n_layer,
                               config.n_head, config.n_embd, config.dropout)
    if config.model is None and module is None:
        raise ValueError(f"the config's model is None, which stands for a module of yours, and "
                         f"none was given beside it; pass model=<your nn.Module>, or one of: {ACCEPTED}")
    model = load(config.model) if is_directory(config.model) else module
    check_vocab(model, dataset.tokenizer)
    model = model.to(device)
    check_user_model(model, dataset, config, device)
    return model
