"""The tokenizer option: "char", "word", "bpe" or a tokenizer of the field, checked, built and loaded."""

from __future__ import annotations

import os
from pathlib import Path

from .chars import CharTokenizer
from .subword import (BYTE_ALPHABET, CHUNK, DEFAULT_VOCAB, GAP_SLACK, LOOK_BACK, MAX_JSON, MAX_VOCAB, PROGRESS_AFTER, UNK,  # noqa: F401
                      HFTokenizer, check_bpe_size, cut, encode_array, gap_limit, pieces, tokenizers_module,
                      train_bpe, train_word)
from .tokenstate import cached, from_state, restored, saved  # noqa: F401 (kept here too, their first home)

TOKENIZERS = ("char", "word", "bpe")


def check(spec, vocab_size) -> None:
    """Refuse a tokenizer option that cannot work, before anything is read or trained."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 0:
        raise ValueError(f"vocab_size must be an integer >= 0 (0: the tokenizer's default); got {vocab_size!r}")
    if spec == "char" or isinstance(spec, CharTokenizer):
        if vocab_size:
            raise ValueError(f"vocab_size={vocab_size} applies to tokenizer='word' or 'bpe'; the "
                             f"character tokenizer has one token per distinct character")
        return
    if spec == "bpe" and vocab_size:
        check_bpe_size(vocab_size)
    if spec == "word" and vocab_size == 1:
        raise ValueError("vocab_size=1 leaves a word tokenizer only its unknown token; pass 2 or more")
    if spec in ("word", "bpe"):
        return
    if isinstance(spec, str) and not os.path.exists(os.path.expanduser(spec)) and "/" not in spec \
            and not spec.endswith(".json"):
        raise ValueError(f"unknown tokenizer {spec!r}; valid: {', '.join(map(repr, TOKENIZERS))}, a "
                         f"tokenizers.Tokenizer, a transformers fast tokenizer, or a path to a "
                         f"tokenizer.json or its directory")
    load(spec)  # a path that does not exist, or an object of the wrong kind, is refused here


def label(spec) -> str:
    """The tokenizer option as a plain value for a record: its name, its path, or its kind."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, os.PathLike):
        return os.fspath(spec)
    return getattr(spec, "kind", None) or type(spec).__name__


def build(spec, text: str, vocab_size: int = 0):
    """The tokenizer `spec` names, trained on `text` (the training split) where it is trained:
    "word" or "bpe" (cached by the text and settings), a tokenizers.Tokenizer, a transformers
    tokenizer, or a tokenizer.json / tokenizer directory."""
    if isinstance(spec, str) and spec in ("word", "bpe"):
        size = vocab_size or DEFAULT_VOCAB[spec]
        return cached(spec, text, size)
    return load(spec)


def load(spec) -> HFTokenizer:
    """A tokenizer object or a path under lmwidget's tokenizer contract."""
    if isinstance(spec, HFTokenizer):
        return spec
    t = tokenizers_module()
    if isinstance(spec, t.Tokenizer):
        return HFTokenizer(spec, "hf", "tokenizer")
    backend = getattr(spec, "backend_tokenizer", None)
    if isinstance(backend, t.Tokenizer):  # a transformers fast tokenizer
        return HFTokenizer(backend, "hf", type(spec).__name__)
    if hasattr(spec, "convert_tokens_to_ids"):
        raise ValueError(f"{type(spec).__name__} is a slow (Python) tokenizer; pass its fast version "
                         f"(AutoTokenizer.from_pretrained(..., use_fast=True)) or its tokenizer.json")
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
            if not path.is_file():
                raise ValueError(f"tokenizer directory {spec} has no tokenizer.json (a fast tokenizer "
                                 f"saved with save_pretrained has one)")
        elif not path.is_file():
            raise ValueError(f"tokenizer={str(spec)!r} is neither {', '.join(map(repr, TOKENIZERS))} "
                             f"nor an existing tokenizer.json file or tokenizer directory")
        if path.stat().st_size > MAX_JSON:
            raise ValueError(f"{path} has {path.stat().st_size:,} bytes, more than the {MAX_JSON >> 20} MiB a "
                             f"tokenizer.json needs (256k tokens take about 35 MB): it was not read")
        try:
            tok = t.Tokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a tokenizer.json the tokenizers library reads: {e}") from None
        return HFTokenizer(tok, "hf", path.parent.name or path.name, str(path))
    raise TypeError(f"tokenizer must be one of {', '.join(map(repr, TOKENIZERS))}, a tokenizers.Tokenizer, "
                    f"a transformers fast tokenizer, or a path to a tokenizer.json or its directory; "
                    f"got {type(spec).__name__}")


