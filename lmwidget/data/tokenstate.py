"""Tokenizers kept as JSON (never pickle) in checkpoints, token directories and the cache, restored checked."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from lmwidget.system import jsonfile
from lmwidget.system.jsonfile import shorten

from .chars import CharTokenizer
from .subword import MAX_JSON, HFTokenizer, pieces, tokenizers_module, train_bpe, train_word
from .text import cache_dir


def saved(tokenizer) -> dict:
    """What a checkpoint or a token directory keeps of a tokenizer (no pickle).

    Args:
        tokenizer: a CharTokenizer or an HFTokenizer.

    Returns:
        {"vocab": its characters} (as 0.1 kept them), else {"vocab": [], "tokenizer": its
        state, the text of its tokenizer.json with its kind and name}.
    """
    if getattr(tokenizer, "kind", None) == "char":
        return {"vocab": list(tokenizer.chars)}
    return {"vocab": [], "tokenizer": tokenizer.state()}


def restored(state: dict, source: str = "the tokenizer a checkpoint stored"):
    """The tokenizer `saved` kept.

    Args:
        state: what `saved` returned, as read back from a file.
        source: where it was read from, for a refusal ("the tokenizer in meta.json of ...").

    Returns:
        The tokenizer: a CharTokenizer, or an HFTokenizer.

    Raises:
        ValueError: `state` is not what `saved` writes, naming `source` and what was found.
    """
    if not isinstance(state, dict):
        raise ValueError(f"{source} is {shorten(state)}; expected an object with \"vocab\" (a list "
                         f"of characters) or \"tokenizer\" (a saved tokenizer)")
    if state.get("tokenizer"):
        return from_state(state["tokenizer"], source)
    vocab = state.get("vocab")
    if not (isinstance(vocab, list) and vocab and all(isinstance(c, str) and len(c) == 1 for c in vocab)
            and len(set(vocab)) == len(vocab)):
        raise ValueError(f"{source} has the character vocabulary {shorten(vocab)}; expected a "
                         f"non-empty list of distinct single characters")
    return CharTokenizer(vocab)


def from_state(state: dict, source: str = "the tokenizer a checkpoint stored") -> "HFTokenizer":
    """The tokenizer a checkpoint or a token directory stored (HFTokenizer.state).

    Args:
        state: {"json": the text of a tokenizer.json, "kind": ..., "name": ...}.
        source: where it was read from, for a refusal.

    Returns:
        The HFTokenizer.

    Raises:
        ValueError: `state` is malformed, or its JSON is no tokenizer the tokenizers library
            reads, naming `source`.
    """
    if not (isinstance(state, dict) and isinstance(state.get("json"), str)
            and all(isinstance(state.get(k, ""), str) for k in ("kind", "name"))):
        raise ValueError(f"{source} is {shorten(state)}; expected an object with \"json\" (the text of "
                         f"a tokenizer.json), \"kind\" and \"name\" (strings)")
    t = tokenizers_module()
    try:
        tok = t.Tokenizer.from_str(state["json"])
    except Exception as e:  # the tokenizers library raises a bare Exception
        raise ValueError(f"{source} is no tokenizer the tokenizers library reads ({shorten(str(e))[1:-1]}; "
                         f"its JSON starts {shorten(state['json'], 60)}); expected the text of a "
                         f"tokenizer.json") from None
    return HFTokenizer(tok, state.get("kind", "hf"), state.get("name", ""), source)


def cached(kind: str, text: str, vocab_size: int) -> "HFTokenizer":
    """A trained tokenizer from the cache, keyed by the corpus' hash and the settings; trained
    and written there (atomically) the first time."""
    h = hashlib.sha256(json.dumps([kind, vocab_size, 1]).encode())
    for piece in pieces(text, 1 << 22):
        h.update(piece.encode("utf-8", "surrogatepass"))
    path = cache_dir() / "tokenizers" / f"{kind}-{vocab_size}-{h.hexdigest()[:24]}.json"
    if path.is_file():
        try:  # read within a bound, as any file: an unreadable or oversized entry is trained again
            return from_state(jsonfile.read(path, 2 * MAX_JSON, "cached tokenizer", "a tokenizer's state"), str(path))
        except ValueError:
            pass
    tok = train_word(text, vocab_size) if kind == "word" else train_bpe(text, vocab_size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokenizer-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(tok.state(), f)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the tokenizer is still used, only not kept
        pass
    return tok
