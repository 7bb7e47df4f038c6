"""The model a run trains, resolved once at the entry: a built-in name, your module, or a pretrained directory."""

from __future__ import annotations

import torch
import torch.nn as nn

from .builtin import MODELS, build_model
from .contract import check_user_model
from .pretrained import check_vocab, is_directory, load


def build(config, dataset, device) -> nn.Module:
    """The model a run trains, on `device`: gpt or lstm built from the options (seeded), the
    directory's pretrained model, or the user's module; checked against the dataset.

    Args:
        config: the run's options.
        dataset: its dataset (tokenizer, vocab_size, batches).
        device: where the model goes.

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
    model = load(config.model) if is_directory(config.model) else config.model
    check_vocab(model, dataset.tokenizer)
    model = model.to(device)
    check_user_model(model, dataset, config, device)
    return model
