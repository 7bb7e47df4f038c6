"""Hugging Face tokenizers in lmwidget: the wrapper every word, BPE or field tokenizer is used through, and training word and BPE vocabularies."""

from __future__ import annotations

import itertools
import re

import numpy as np
from tqdm.auto import tqdm

from .tokencheck import dtype_for

DEFAULT_VOCAB = {"word": 10_000, "bpe": 1024}  # word: a cap (most frequent first); bpe: its size
BYTE_ALPHABET = 256  # byte-level BPE starts from every byte
UNK = "[UNK]"
PROGRESS_AFTER = 1.5  # s: training a tokenizer shows a progress bar once it takes this long
CHUNK = 1 << 16       # characters per piece handed to the Rust tokenizer at once
LOOK_BACK = 1 << 12   # characters searched back for a space, to cut a text without newlines
MAX_VOCAB = 1 << 22   # a tokenizer's largest id + 1: past the largest of the field (256k) by far
GAP_SLACK = 1024      # ids a vocabulary may skip past twice its count of tokens (see gap_limit)
MAX_JSON = 64 << 20   # bytes of a tokenizer.json read: the largest of the field have about 35 MB


def tokenizers_module():
    """Hugging Face's tokenizers package, imported when a word or BPE tokenizer is first needed.

    Raises:
        ImportError: it is not installed, saying how to install it.
    """
    try:
        import tokenizers
    except ImportError:
        raise ImportError("word and BPE tokenizers need the Hugging Face tokenizers package: "
                          "pip install 'lmwidget[hf]'") from None
    return tokenizers


def gap_limit(count: int) -> int:
    """The largest vocabulary size (largest id + 1) accepted for a tokenizer of `count` tokens:
    ids may skip (added tokens numbered apart, removed merges), not demand embeddings for
    millions of ids no token has."""
    return 2 * count + GAP_SLACK


def pieces(text: str, size: int = CHUNK, spaces: bool = False):
    """`text` in pieces of about `size` characters, each ending at a newline where there is one
    (a tokenizer never sees a word cut in two).

    Args:
        text: the text.
        size: the most characters of a piece.
        spaces: where a piece has no newline, cut it before its last whitespace (prepare's
            bounded reading of a text of one line); False cuts it at `size` exactly, as 0.2
            did, so that a text in memory gives the same tokens (and fingerprint) as before.

    Yields:
        The pieces, which join into `text`.
    """
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            if spaces:
                end = cut(text, start, end)
            else:
                newline = text.rfind("\n", start, end)
                end = newline + 1 if newline > start else end
        yield text[start:end]
        start = end


def cut(text: str, start: int, end: int) -> int:
    """Where to end a piece text[start:end] that has more text after it.

    Args:
        text: the text.
        start: the piece's first character.
        end: the index just past its last character.

    Returns:
        The index after its last newline; else that of its last whitespace (looked for in its
        last LOOK_BACK characters), so the space starts the next piece; else `end`.
    """
    newline = text.rfind("\n", start, end)
    if newline > start:
        return newline + 1
    for i in range(end - 1, max(start, end - LOOK_BACK), -1):
        if text[i].isspace():
            return i
    return end


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` under lmwidget's tokenizer contract: encode,
    decode, vocab_size, describe and a JSON state."""

    def __init__(self, tokenizer, kind: str = "hf", name: str = "", source: str = "the tokenizer"):
        self.tokenizer, self.kind, self.name, self._size = tokenizer, kind, name, None
        count = tokenizer.get_vocab_size(with_added_tokens=True)
        if self.vocab_size > MAX_VOCAB:
            raise ValueError(f"{source} has a token of id {self.vocab_size - 1:,}: a model would need "
                             f"{self.vocab_size:,} rows of embeddings; lmwidget takes ids below "
                             f"{MAX_VOCAB:,}, as every tokenizer of the field has")
        if self.vocab_size > gap_limit(count):
            raise ValueError(f"{source} has {count:,} tokens but a token of id {self.vocab_size - 1:,}: a "
                             f"model would need {self.vocab_size:,} rows of embeddings, most of them for ids "
                             f"no token has. Accepted: ids below {gap_limit(count):,} for {count:,} tokens "
                             f"(twice the count + {GAP_SLACK:,}), as a tokenizer of the field numbers them")

    @property
    def vocab_size(self) -> int:
        """Its largest id + 1, which a model's embeddings must cover: not its count of tokens,
        which is smaller where ids skip or a word is repeated."""
        n = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if getattr(self, "_size", None) is None or self._size[0] != n:  # once, and after add_tokens
            ids = self.tokenizer.get_vocab(with_added_tokens=True).values()
            self._size = (n, max(n, max(ids, default=-1) + 1))
        return self._size[1]

    def encode(self, text: str) -> list[int]:
        return [int(i) for a in self.encode_pieces(pieces(text)) for i in a]

    def encode_pieces(self, texts, batch: int = 16):
        """A token array (uint16 or uint32) per text of the iterable `texts`, encoded `batch`
        at a time by the Rust tokenizer (on every core)."""
        dtype, texts = dtype_for(self.vocab_size), iter(texts)
        while todo := list(itertools.islice(texts, batch)):
            for enc in self.tokenizer.encode_batch(todo, add_special_tokens=False):
                yield np.array(enc.ids, dtype)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "word":  # words and punctuation, spaced as written
            words = [self.tokenizer.id_to_token(i) or "\ufffd" for i in ids]
            text = re.sub(r" ?\n ?", "\n", " ".join(words))
            return re.sub(r" ([,.;:!?')\]])", r"\1", text)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def start_id(self) -> int:
        """The token a sample starts from: a newline where the vocabulary has one."""
        ids = self.tokenizer.encode("\n", add_special_tokens=False).ids
        return ids[0] if ids else 0

    def describe(self) -> str:
        """A short label for headers: "byte-level BPE (300)", "gpt2 (50,257)", or, for a
        tokenizer known only by its Python class, what it is: "word-level tokenizer (104)"."""
        what = {"word": "words", "bpe": "byte-level BPE"}.get(self.kind, self.name)
        if not what or what == "tokenizer" or re.fullmatch(r"[A-Z]\w*(Tokenizer|TokenizerFast|Backend)", what):
            model = type(self.tokenizer.model).__name__  # BPE, WordPiece, Unigram, WordLevel
            what = {"WordLevel": "word-level"}.get(model, model) + " tokenizer"
            if "ByteLevel" in str(self.tokenizer.pre_tokenizer):
                what = "byte-level " + what
        return f"{what} ({self.vocab_size:,})"

    def state(self) -> dict:
        """Everything needed to rebuild it, as JSON-able values (no pickle)."""
        return {"kind": self.kind, "name": self.name, "json": self.tokenizer.to_str()}

    def same_as(self, other) -> bool:
        return getattr(other, "state", None) is not None and other.state()["json"] == self.state()["json"]


def encode_array(tokenizer, text: str) -> np.ndarray:
    """The tokens of `text` as one compact array (uint16, or uint32 for a vocabulary past
    65,536), encoded a piece at a time: never a Python list of the whole text."""
    if hasattr(tokenizer, "encode_array"):
        return tokenizer.encode_array(text)
    if hasattr(tokenizer, "encode_pieces"):
        parts = list(tokenizer.encode_pieces(pieces(text)))
    else:  # any object with encode(text) -> ids
        parts = [np.asarray(tokenizer.encode(p), dtype_for(tokenizer.vocab_size)) for p in pieces(text)]
    return np.concatenate(parts) if parts else np.empty(0, dtype_for(tokenizer.vocab_size))


def train_word(text, vocab_size: int) -> HFTokenizer:
    """Words and punctuation (and newlines), the `vocab_size` most frequent, [UNK] for the
    rest, learnt from `text` (a str, or an iterable of str pieces)."""
    t = tokenizers_module()
    tok = t.Tokenizer(t.models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = t.pre_tokenizers.Sequence([
        t.pre_tokenizers.Split(t.Regex(r"[^\S\n]+"), "removed"),
        t.pre_tokenizers.Split(t.Regex(r"\w+|[^\w\s]|\n"), "isolated")])
    trainer = t.trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[UNK], show_progress=False)
    _train(tok, trainer, text)
    return HFTokenizer(tok, "word")


def check_bpe_size(vocab_size: int) -> None:
    if vocab_size < BYTE_ALPHABET + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE: its alphabet alone "
                         f"is {BYTE_ALPHABET} bytes; pass vocab_size >= {BYTE_ALPHABET + 1} "
                         f"(default {DEFAULT_VOCAB['bpe']})")


def train_bpe(text, vocab_size: int) -> HFTokenizer:
    """Byte-level BPE of `vocab_size` tokens, as GPT-2's: every text encodes, nothing is
    unknown; learnt from `text` (a str, or an iterable of str pieces)."""
    check_bpe_size(vocab_size)
    t = tokenizers_module()
    tok = t.Tokenizer(t.models.BPE())
    tok.pre_tokenizer = t.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = t.decoders.ByteLevel()
    trainer = t.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                    initial_alphabet=t.pre_tokenizers.ByteLevel.alphabet())
    _train(tok, trainer, text)
    if tok.get_vocab_size() < vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is larger than this corpus allows: its training "
                         f"split yields at most {tok.get_vocab_size()} BPE tokens; pass vocab_size <= "
                         f"{tok.get_vocab_size()} or a longer corpus")
    return HFTokenizer(tok, "bpe")


def _train(tok, trainer, text) -> None:
    """Train on `text` (a str, with a progress bar of characters read once it takes
    PROGRESS_AFTER s; or an iterable of str pieces, which shows its own progress)."""
    if not isinstance(text, str):
        tok.train_from_iterator(text, trainer=trainer)
        return

    with tqdm(total=len(text), unit="char", unit_scale=True, delay=PROGRESS_AFTER,
              desc="training the tokenizer", leave=False) as bar:
        def feed():
            for piece in pieces(text):
                bar.update(len(piece))
                yield piece
        tok.train_from_iterator(feed(), trainer=trainer)
