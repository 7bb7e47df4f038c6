"""Pretrained Hugging Face models: loaded from a local directory, trained with their own tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from . import modeldir
from .hf import adapt, is_hf_causal_lm, unwrap
from .builtin import MODELS
from .weightfiles import WEIGHTS, weights_file
ACCEPTED = ("gpt, lstm, an nn.Module whose forward(idx, targets) returns (logits, loss), or the "
            "directory of a Hugging Face causal LM (its config.json and weights, as save_pretrained "
            "writes them)")


def is_directory(model) -> bool:
    """The model option names a directory to load from (a path, not 'gpt' or 'lstm').

    Args:
        model: the model option.

    Returns:
        True for a path or a string other than 'gpt' and 'lstm'.
    """
    return isinstance(model, os.PathLike) or (isinstance(model, str) and model not in MODELS)


def check_directory(model) -> Path:
    """The directory the model option names, refused unless it holds a config.json and
    weights (the error names the missing file), transformers is installed to read them, and
    its config.json names no code and a causal LM type transformers ships (modeldir).

    Args:
        model: the model option: a path.

    Returns:
        The directory, as a Path.

    Raises:
        ValueError: no such directory, a file, no config.json or weights, or a config.json
            modeldir.read_config refuses (a ModelDirError).
        ImportError: transformers is not installed.
    """
    path = Path(model).expanduser()
    if not path.exists():
        raise ValueError(f"unknown model {os.fspath(model)!r}; valid: {ACCEPTED}. No such "
                         f"directory exists")
    if not path.is_dir():
        raise ValueError(f"model={os.fspath(model)!r} is a file, not a directory: pass the "
                         f"directory of a Hugging Face model (its config.json and weights, as "
                         f"save_pretrained writes them)")
    if not (path / "config.json").is_file():
        raise ValueError(f"model directory {os.fspath(model)!r} has no config.json, so it is not "
                         f"a complete Hugging Face model: save one there with "
                         f"model.save_pretrained({os.fspath(model)!r})")
    if not any((path / name).is_file() for name in WEIGHTS):
        raise ValueError(f"model directory {os.fspath(model)!r} has a config.json but no weights: "
                         f"expected {', '.join(WEIGHTS[:-1])} or {WEIGHTS[-1]} (save_pretrained "
                         f"writes one of them)")
    _transformers()
    modeldir.read_config(path)  # never code, nor a model type transformers does not ship
    return path


def load(model) -> nn.Module:
    """The causal LM saved in the directory `model` names, read from local files only (never
    the network, never the directory's code), in float32 (dtype='bfloat16' autocasts its
    forward), under our contract; its weights' shapes checked against its config first.

    Args:
        model: the model option: a path.

    Returns:
        The model, adapted to forward(idx, targets) -> (logits, loss).

    Raises:
        ValueError: check_directory or modeldir.check refuses the directory, or transformers
            fails to load it (the message names its config.json and weights file).
    """
    path = check_directory(model)
    modeldir.check(path)
    try:
        net = _transformers().AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        weights = weights_file(path, modeldir.read_config(path))
        raise ValueError(
            f"could not load a causal language model from model directory {os.fspath(model)!r} "
            f"({path / 'config.json'} with {path / str(weights)}): transformers refused them "
            f"({modeldir.reason(e)}). Nothing was trained. Accepted: {modeldir.SAVED}, of a "
            f"causal LM transformers ships, unchanged since") from None
    return adapt(net.float())


def skeleton(model) -> nn.Module:
    """The causal LM of the directory `model` names, built from its config.json on the meta
    device (names and shapes, no memory); only its weights' headers are read.

    Args:
        model: the model option: a path.

    Returns:
        The model, on the meta device.

    Raises:
        ValueError: check_directory or modeldir.skeleton refuses the directory.
    """
    return modeldir.skeleton(check_directory(model))


def source(model) -> str:
    """Where a pretrained model's weights came from.

    Args:
        model: the model option, or the model.

    Returns:
        The directory given, or the directory or hub name it was loaded from; "" for gpt, lstm,
        and a model built from a config.
    """
    if is_directory(model):
        return os.fspath(model)
    inner = unwrap(model)
    return (is_hf_causal_lm(inner) and getattr(inner.config, "name_or_path", "")) or ""


def own_tokenizer(model) -> str | None:
    """The directory of the pretrained model's own tokenizer.json, where one lies beside it.

    Args:
        model: the model option, or the model.

    Returns:
        The directory, or None.
    """
    where = source(model)
    return where if where and (Path(where).expanduser() / "tokenizer.json").is_file() else None


def with_own_tokenizer(options: dict) -> dict:
    """`options` with a pretrained model's own tokenizer, unless a tokenizer is given.

    Args:
        options: the run's options.

    Returns:
        The options, with tokenizer set to the directory of the model's tokenizer.json if any.
    """
    own = None if "tokenizer" in options else own_tokenizer(options.get("model"))
    return options if own is None else {**options, "tokenizer": own}


def check_tokenizer(model, tokenizer) -> None:
    """Refuse the character tokenizer, or one trained here (words, BPE), for a pretrained
    model: their token ids mean other text than the ids it learnt.

    Args:
        model: the model option, or the model.
        tokenizer: the tokenizer option, or the tokenizer.

    Raises:
        ValueError: a pretrained model with such a tokenizer; the message advises its own
            tokenizer.json (read without running code), never AutoTokenizer on the directory.
    """
    where = source(model)
    kind = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "kind", None)
    if not where or kind not in ("char", "word", "bpe"):
        return
    own = own_tokenizer(model)
    fix = (f"leave tokenizer out to use the one beside it, or pass tokenizer={own!r}" if own else
           f"pass the tokenizer it was trained with as the path of its tokenizer.json "
           f"(tokenizer='.../tokenizer.json': lmwidget reads it with the tokenizers library, "
           f"which runs no code)")
    what = f"{type(unwrap(model)).__name__} from {where!r}" if isinstance(model, nn.Module) else repr(where)
    given = "the character tokenizer" if kind == "char" else f"a {kind} tokenizer trained here"
    raise ValueError(f"model {what} is pretrained on its own tokenizer's ids; with {given} it "
                     f"would read every token as another and train on garbage. {fix[0].upper()}{fix[1:]}")


def check_vocab(model, tokenizer) -> None:
    """Refuse a Hugging Face model whose embedding table has a row for fewer ids than the
    tokenizer makes (more rows are fine: GPT-2 pads its table).

    Args:
        model: the model.
        tokenizer: the run's tokenizer.

    Raises:
        ValueError: the table has fewer rows than the tokenizer's vocab_size.
    """
    inner = unwrap(model)
    rows = getattr(inner.get_input_embeddings(), "num_embeddings", None) if is_hf_causal_lm(inner) else None
    if rows is not None and rows < tokenizer.vocab_size:
        raise ValueError(
            f"model {type(inner).__name__}'s embedding table has {rows:,} rows, fewer than the "
            f"{tokenizer.vocab_size:,} tokens of the tokenizer {tokenizer.describe()}: ids from "
            f"{rows:,} on would have no embedding. Pass the model's own tokenizer as the path "
            f"of its tokenizer.json (tokenizer='.../tokenizer.json'), or grow its table first: "
            f"model.resize_token_embeddings({tokenizer.vocab_size})")


def describe(model, option) -> str:
    """The model as the dashboard's header names it.

    Args:
        model: the model.
        option: the model option.

    Returns:
        gpt or lstm, or its class and, for a pretrained one, where its weights came from.
    """
    if isinstance(option, str) and option in MODELS:
        return option
    name, where = type(unwrap(model)).__name__, source(model if option is None else option)
    return f"{name} from {where}" if where else name


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("a model directory is loaded with Hugging Face transformers: "
                          "pip install 'lmwidget[hf]'") from None
    return transformers
