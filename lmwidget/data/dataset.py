"""Corpora, the character tokenizer, the train/validation split and random batches."""

from __future__ import annotations

import hashlib
import copy
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

CORPORA = ("builtin", "shakespeare")

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_BYTES = 1_115_394
URL_ENV = "LMWIDGET_SHAKESPEARE_URL"  # tests point this at a local server
CACHE_ENV = "LMWIDGET_CACHE_DIR"
CHUNK = 1 << 16  # characters encoded at once: the working memory of an encoding, whatever the text


class CharTokenizer:
    """Maps each distinct character of a text to an integer id, and back."""

    kind = "char"

    def __init__(self, chars):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # sorted, as chars

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in the vocabulary of {self.vocab_size} "
                f"characters this model was trained on"
            ) from None

    def encode_array(self, text: str) -> np.ndarray:
        """encode() as a compact array (uint16, or uint32 past 65,536 characters), a piece at a
        time: its working memory does not grow with the text."""
        from .tokenfiles import dtype_for

        out = np.empty(len(text), dtype_for(self.vocab_size))
        cps = self.codepoints
        for start in range(0, len(text), CHUNK):
            piece = text[start:start + CHUNK]
            cp = np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype="<u4")
            ids = np.searchsorted(cps, cp)
            bad = (ids >= len(cps)) | (cps[np.minimum(ids, len(cps) - 1)] != cp)
            if bad.any():
                self.encode(piece[int(np.argmax(bad))])  # raises, naming the character
            out[start:start + len(piece)] = ids
        return out

    def decode(self, ids) -> str:
        """The text of `ids`; an id outside the vocabulary (a model with more outputs than
        the data has characters) reads as U+FFFD."""
        n = len(self.chars)
        return "".join(self.chars[i] if 0 <= i < n else "\ufffd" for i in map(int, ids))

    @property
    def start_id(self) -> int:
        """The token a sample starts from: a newline where the text has one."""
        return self.stoi.get("\n", 0)

    def describe(self) -> str:
        return f"characters ({self.vocab_size})"

    def same_as(self, other) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars


def builtin_text() -> str:
    """English prose that ships with every CPython: the reference-manual topics."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a trimmed Python: fall back to the builtins' docstrings
        import builtins

        docs = (getattr(obj, "__doc__", None) for obj in vars(builtins).values())
        return "\n\n".join(d for d in docs if isinstance(d, str))
    return "\n\n".join(topics[k] for k in sorted(topics))


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmwidget"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shakespeare_text(timeout: float = 30.0) -> str:
    """Tiny Shakespeare, downloaded once into the cache, checksum-verified."""
    path = cache_dir() / "tinyshakespeare.txt"
    if path.is_file():
        data = path.read_bytes()
        if _sha256(data) == SHAKESPEARE_SHA256:
            return data.decode("utf-8")
    url = os.environ.get(URL_ENV) or SHAKESPEARE_URL
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read(SHAKESPEARE_BYTES + 1)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(
            f"could not download tiny Shakespeare from {url} ({reason}). Offline, use "
            f"data='builtin' (ships with Python), or download the file elsewhere and pass "
            f"its path: data='path/to/tinyshakespeare.txt'"
        ) from e
    digest = _sha256(data)
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(
            f"tiny Shakespeare from {url} has sha256 {digest} ({len(data)} bytes); expected "
            f"{SHAKESPEARE_SHA256} ({SHAKESPEARE_BYTES} bytes). Nothing was cached."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tinyshakespeare-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return data.decode("utf-8")


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None


def load_text(data) -> str:
    """The text of `data`: a corpus name, a path to a UTF-8 file, or the text itself.

    A string without whitespace that is neither a corpus name nor an existing file is
    refused: it is a misspelt name or a wrong path, not text worth training on.
    """
    if isinstance(data, os.PathLike):
        text = _read_file(Path(data))
    elif not isinstance(data, str):
        raise TypeError(
            f"data must be a corpus name {CORPORA}, a path to a UTF-8 text file, or a str "
            f"of text; got {type(data).__name__}"
        )
    elif data.strip() == "builtin":
        text = builtin_text()
    elif data.strip() == "shakespeare":
        text = shakespeare_text()
    elif "\n" not in data and os.path.exists(os.path.expanduser(data.strip())):
        text = _read_file(Path(os.path.expanduser(data.strip())))
    elif data and not any(c.isspace() for c in data):
        raise ValueError(
            f"data={data!r} is neither a corpus name nor an existing file. Valid corpus "
            f"names: {', '.join(CORPORA)}; or pass a path to an existing UTF-8 text file, or "
            f"a string of text to train on (text containing spaces or newlines)"
        )
    else:
        text = data
    if not text:
        raise ValueError(f"the corpus {_describe(data)} is empty: there is nothing to train on")
    return text


def _describe(data) -> str:
    if isinstance(data, str) and len(data) > 40:
        return f"(a str of {len(data)} characters)"
    return repr(str(data))


class Dataset:
    """A tokenized corpus split into train and validation tokens, served in random blocks.

    `tokenizer`: "char" (the default: every character of the text), "word" or "bpe" (trained
    on the training split only, `vocab_size` tokens at most), or a tokenizer of the field
    (see tokens.load). The validation split is the tail of the text, cut before any
    tokenizer is trained, so no validation text shapes the vocabulary.
    """

    device = torch.device("cpu")  # where batches go (Dataset.to)

    def __init__(self, text: str, val_fraction: float = 0.1, tokenizer=None, vocab_size: int = 0):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive); got {val_fraction}")
        cut = len(text) - max(1, int(len(text) * val_fraction))  # characters, then tokens
        if tokenizer is None or tokenizer == "char" or isinstance(tokenizer, CharTokenizer):
            self.tokenizer = tokenizer if isinstance(tokenizer, CharTokenizer) else CharTokenizer.from_text(text)
            ids = self.tokenizer.encode_array(text)  # one character, one token: views of one array
            self.train, self.val = ids[:cut], ids[cut:]
        else:
            from . import tokens

            self.tokenizer = tokens.build(tokenizer, text[:cut], vocab_size)
            self.train, self.val = (tokens.encode_array(self.tokenizer, t) for t in (text[:cut], text[cut:]))
            from .tokencheck import check_encoded

            check_encoded(self.tokenizer, self.train, self.val)  # a size misreported: refused now, not mid-run
        # UTF-8 bytes per token of each split: loss / ln 2 / this is bits per byte
        self.bytes_per_token = {split: utf8_len(text, a, b) / max(1, len(i)) for split, a, b, i
                                in (("train", 0, cut, self.train), ("val", cut, len(text), self.val))}
        self._fingerprint = None

    @classmethod
    def from_tokens(cls, train, val, tokenizer, bytes_per_token: dict, fingerprint: str) -> "Dataset":
        """A dataset of tokens already made (a token directory's memory-mapped arrays)."""
        self = cls.__new__(cls)
        self.train, self.val, self.tokenizer = train, val, tokenizer
        self.bytes_per_token, self._fingerprint = dict(bytes_per_token), fingerprint
        return self

    @classmethod
    def load(cls, data="builtin", val_fraction: float = 0.1, tokenizer=None, vocab_size: int = 0) -> "Dataset":
        """The dataset train(data=...) would build: a corpus name, a file path, text, or a
        token directory (lmwidget.prepare), read through np.memmap."""
        from . import tokenfiles

        if tokenfiles.is_dir(data):
            return tokenfiles.open_dir(data, tokenizer, vocab_size)
        return cls(load_text(data), val_fraction, tokenizer, vocab_size)

    @classmethod
    def from_config(cls, config, tokenizer=None) -> "Dataset":
        """The dataset of a TrainConfig (`tokenizer` overrides its tokenizer)."""
        return cls.load(config.data, config.val_fraction,
                        config.tokenizer if tokenizer is None else tokenizer, config.vocab_size)

    def fingerprint(self) -> str:
        """SHA-256 of the training and validation tokens and the vocabulary (computed once)."""
        if getattr(self, "_fingerprint", None) is None:  # a subclass may skip __init__
            tok = self.tokenizer
            vocab = tok.chars if isinstance(tok, CharTokenizer) else [tok.state()["json"]]
            h = hashlib.sha256("\x00".join(vocab).encode("utf-8", "surrogatepass"))
            for ids in (self.train, self.val):
                h.update(b"|%d|" % len(ids))
                for start in range(0, len(ids), CHUNK):  # as int64: the tokens' first format
                    h.update(np.asarray(ids[start:start + CHUNK]).astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def ids(self, split: str) -> torch.Tensor:
        """The split's tokens as an int64 tensor (a copy, 8 bytes a token: `train` and `val`
        are compact arrays, or memory maps), for a DataLoader of your own."""
        return torch.from_numpy(np.asarray(self.train if split == "train" else self.val).astype(np.int64))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def check_block_size(self, block_size: int) -> None:
        shortest = min(len(self.train), len(self.val))
        if block_size + 1 > shortest:
            split = "validation" if len(self.val) <= len(self.train) else "training"
            raise ValueError(
                f"block_size={block_size} is longer than the {split} split allows: it has "
                f"{shortest} tokens, so block_size must be at most {shortest - 1}. Use a "
                f"smaller block_size or a longer corpus"
            )

    def to(self, device) -> "Dataset":
        """This dataset for `device`, as a new object (a run using this one is not disturbed):
        on an accelerator, tokens held in memory move there and batches are gathered there;
        memory-mapped tokens stay on disk and each batch is copied over."""
        self.fingerprint()  # on the CPU copy, once, before the tokens move
        moved = copy.copy(self)
        moved.device = torch.device(device)
        if moved.device.type != "cpu" and not isinstance(self.train, np.memmap):
            moved.train, moved.val = (torch.from_numpy(np.asarray(t, dtype=np.int32)).to(device)
                                      for t in (self.train, self.val))
        return moved

    def batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator,
              shard: tuple[int, int] = (0, 1)):
        """`batch_size` random contiguous blocks: inputs and the next-token targets (int64).

        `shard=(rank, world_size)`: every rank draws the blocks of all ranks from the same
        generator and keeps its own, so the ranks see different data while their generators
        stay equal (one saved state resumes them all)."""
        ids = self.train if split == "train" else self.val
        rank, world = shard
        ix = torch.randint(len(ids) - block_size, (batch_size * world,), generator=generator)
        ix = ix[rank * batch_size:(rank + 1) * batch_size]
        if torch.is_tensor(ids):  # on an accelerator already: gathered there
            blocks = ids.unfold(0, block_size + 1, 1)[ix.to(ids.device, non_blocking=True)].long()
        else:  # a compact array, or a memory map opened afresh: pages read for a batch are let go
            if isinstance(ids, np.memmap):  # with it (a long run would map the whole file)
                ids = np.memmap(ids.filename, dtype=ids.dtype, mode="r")
            blocks = torch.from_numpy(ids[ix.numpy()[:, None] + np.arange(block_size + 1)].astype(np.int64))
            if self.device.type == "cuda":  # memory-mapped tokens for a GPU: copied over, pinned
                blocks = blocks.pin_memory().to(self.device, non_blocking=True)
            elif self.device.type != "cpu":
                blocks = blocks.to(self.device)
        return blocks[:, :-1], blocks[:, 1:]


def utf8_len(text: str, start: int = 0, end: int | None = None) -> int:
    """len(text[start:end].encode("utf-8")), without holding a copy or the whole encoding."""
    end = len(text) if end is None else end
    if text.isascii():
        return end - start
    return sum(len(text[i:min(end, i + CHUNK)].encode("utf-8", "surrogatepass")) for i in range(start, end, CHUNK))
