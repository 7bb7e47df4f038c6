"""Pretrained Hugging Face models: loaded from a local directory, trained with their own tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from .hf import adapt, is_hf_causal_lm, unwrap
from .models import MODELS

# what save_pretrained writes: the weights in one file, or an index of their shards
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
           "pytorch_model.bin.index.json")
ACCEPTED = ("gpt, lstm, an nn.Module whose forward(idx, targets) returns (logits, loss), or the "
            "directory of a Hugging Face causal LM (its config.json and weights, as save_pretrained "
            "writes them)")


def is_directory(model) -> bool:
    """The model option names a directory to load from (a path, not 'gpt' or 'lstm')."""
    return isinstance(model, os.PathLike) or (isinstance(model, str) and model not in MODELS)


def check_directory(model) -> Path:
    """The directory the model option names, refused unless it holds a config.json and
    weights (the error names the missing file), and transformers is installed to read them."""
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
    return path


def load(model) -> nn.Module:
    """The causal LM saved in the directory `model` names, read from local files only (never
    the network), in float32 (dtype='bfloat16' autocasts its forward), under our contract."""
    path = check_directory(model)
    try:
        net = _transformers().AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise ValueError(f"could not load a causal language model from model directory "
                         f"{os.fspath(model)!r}: {e}") from e
    return adapt(net.float())


def skeleton(model) -> nn.Module:
    """The causal LM of the directory `model` names, built from its config.json alone on the
    current device (under torch.device("meta"): names and shapes, no memory); its weights are
    never read."""
    path = check_directory(model)
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        return transformers.AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise ValueError(f"could not build a causal language model from the config.json of model "
                         f"directory {os.fspath(model)!r}: {e}") from e


def source(model) -> str:
    """Where a pretrained model's weights came from: the directory given, or the directory or
    hub name it was loaded from; "" for gpt, lstm, and a model built from a config."""
    if is_directory(model):
        return os.fspath(model)
    inner = unwrap(model)
    return (is_hf_causal_lm(inner) and getattr(inner.config, "name_or_path", "")) or ""


def own_tokenizer(model) -> str | None:
    """The directory of the pretrained model's own tokenizer.json, where one lies beside it."""
    where = source(model)
    return where if where and (Path(where).expanduser() / "tokenizer.json").is_file() else None


def with_own_tokenizer(options: dict) -> dict:
    """`options` with a pretrained model's own tokenizer, unless a tokenizer is given."""
    own = None if "tokenizer" in options else own_tokenizer(options.get("model"))
    return options if own is None else {**options, "tokenizer": own}


def check_tokenizer(model, tokenizer) -> None:
    """Refuse the character tokenizer, or one trained here (words, BPE), for a pretrained
    model: their token ids mean other text than the ids it learnt."""
    where = source(model)
    kind = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "kind", None)
    if not where or kind not in ("char", "word", "bpe"):
        return
    own = own_tokenizer(model)
    fix = (f"leave tokenizer out to use the one beside it, or pass tokenizer={own!r}" if own else
           f"pass the tokenizer it was trained with: tokenizer=AutoTokenizer.from_pretrained("
           f"{where!r}) or the path of its tokenizer.json")
    what = f"{type(unwrap(model)).__name__} from {where!r}" if isinstance(model, nn.Module) else repr(where)
    given = "the character tokenizer" if kind == "char" else f"a {kind} tokenizer trained here"
    raise ValueError(f"model {what} is pretrained on its own tokenizer's ids; with {given} it "
                     f"would read every token as another and train on garbage. {fix[0].upper()}{fix[1:]}")


def check_vocab(model, tokenizer) -> None:
    """Refuse a Hugging Face model whose embedding table has a row for fewer ids than the
    tokenizer makes (more rows are fine: GPT-2 pads its table)."""
    inner = unwrap(model)
    rows = getattr(inner.get_input_embeddings(), "num_embeddings", None) if is_hf_causal_lm(inner) else None
    if rows is not None and rows < tokenizer.vocab_size:
        raise ValueError(
            f"model {type(inner).__name__}'s embedding table has {rows:,} rows, fewer than the "
            f"{tokenizer.vocab_size:,} tokens of the tokenizer {tokenizer.describe()}: ids from "
            f"{rows:,} on would have no embedding. Pass the model's own tokenizer "
            f"(tokenizer=AutoTokenizer.from_pretrained(...)), or grow its table first: "
            f"model.resize_token_embeddings({tokenizer.vocab_size})")


def build(config, dataset, device) -> nn.Module:
    """The model a run trains, on `device`: gpt or lstm built from the options (seeded), the
    directory's pretrained model, or the user's module; checked against the dataset."""
    import torch

    from .models import build_model, check_user_model

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


def describe(model, option) -> str:
    """The model as the dashboard's header names it: gpt or lstm, or its class and, for a
    pretrained one, where its weights came from."""
    if isinstance(option, str) and option in MODELS:
        return option
    name, where = type(unwrap(model)).__name__, source(option)
    return f"{name} from {where}" if where else name


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("a model directory is loaded with Hugging Face transformers: "
                          "pip install 'lmwidget[hf]'") from None
    return transformers
