"""Dataset: a tokenized corpus, its train/validation split and random batches."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch

from . import tokenfiles, tokens
from .chars import CharTokenizer
from .tokencheck import META, SPLITS, check_digest, check_encoded, check_ids, dtype_for, inside, read_meta
from .tokenstate import restored
from .text import CHUNK, load_text, utf8_len


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
            self.tokenizer = tokens.build(tokenizer, text[:cut], vocab_size)
            self.train, self.val = (tokens.encode_array(self.tokenizer, t) for t in (text[:cut], text[cut:]))
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
        if tokenfiles.is_dir(data):
            return open_dir(data, tokenizer, vocab_size)
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
        """The tokenizer's vocabulary size."""
        return self.tokenizer.vocab_size

    def check_block_size(self, block_size: int) -> None:
        """Refuse a context length the splits cannot serve: each split needs block_size + 1
        tokens (a block and its next-token targets).

        Args:
            block_size: the context length in tokens.

        Raises:
            ValueError: the shorter split has fewer than block_size + 1 tokens (the message says
                the largest block_size it allows).
        """
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


def open_dir(path, tokenizer=None, vocab_size: int = 0):
    """The Dataset of a token directory: its tokenizer and memory-mapped splits.

    Args:
        path: the token directory.
        tokenizer: a tokenizer option given with it (refused unless it is the directory's own).
        vocab_size: must be 0 (the directory brings its vocabulary).

    Returns:
        A Dataset of the memory-mapped train.bin and val.bin.

    Raises:
        ValueError: a meta.json that is malformed or changed after it was written, a file it
            names outside the directory, a missing, truncated or mismatched file, a token id
            past the tokenizer's vocabulary, or options that cannot apply; naming the file.
    """
    path = Path(path).expanduser()
    meta = read_meta(path)
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")  # the files' order, on any machine
    own = restored(meta["tokenizer"], f"the tokenizer in {path / META}")
    if own.vocab_size != meta["vocab_size"] or np.dtype(meta["dtype"]) != dtype_for(own.vocab_size):
        raise ValueError(f"{path / META}: its tokenizer has {own.vocab_size:,} tokens but the file "
                         f"says vocab_size={meta['vocab_size']} ({meta['dtype']}); prepare it again")
    check_digest(path, meta)  # a consistency check: the ids themselves are read from the files
    if vocab_size:
        raise ValueError(f"vocab_size={vocab_size} cannot apply to token directory {path}: it was "
                         f"tokenized with {own.describe()}; leave vocab_size at 0")
    if isinstance(tokenizer, str) and tokenizer in tokens.TOKENIZERS[1:]:
        raise ValueError(f"tokenizer={tokenizer!r} cannot apply to token directory {path}: it was "
                         f"tokenized with {own.describe()}, which it brings; leave tokenizer at its "
                         f"default, or prepare the text again with tokenizer={tokenizer!r}")
    if tokenizer is not None and not (isinstance(tokenizer, str) and tokenizer == "char"):
        given = tokenizer if hasattr(tokenizer, "same_as") else tokens.load(tokenizer)
        if not own.same_as(given):
            raise ValueError(f"the tokenizer given ({tokens.label(tokenizer)}) is not the one token "
                             f"directory {path} was prepared with ({own.describe()})")
    arrays, bytes_per_token = {}, {}
    for split in SPLITS:
        info = meta["splits"][split]
        file = inside(path, f"splits.{split}.file", info["file"])
        if not file.is_file():
            raise ValueError(f"token directory {path} has no {info['file']} (its {META} lists "
                             f"{info['tokens']:,} {split} tokens); prepare the directory again")
        expected = info["tokens"] * dtype.itemsize
        if file.stat().st_size != expected:
            raise ValueError(
                f"{file} has {file.stat().st_size:,} bytes but {META} lists {info['tokens']:,} "
                f"{meta['dtype']} tokens ({expected:,} bytes): the directory is incomplete or mixed "
                f"from two preparations; prepare it again")
        top = tokenfiles.split_max(file, dtype, info["tokens"])  # read once, then known from the cache
        check_ids(file, top, own)
        if "max_id" in info and info["max_id"] != top:
            raise ValueError(f"{file} holds ids up to {top:,}, but its {META} records max_id = "
                             f"{info['max_id']:,}: the two do not belong together; prepare the directory again")
        arrays[split] = np.memmap(file, dtype=dtype, mode="r") if expected else np.empty(0, dtype)
        bytes_per_token[split] = info["bytes"] / max(1, info["tokens"])
    return Dataset.from_tokens(arrays["train"], arrays["val"], own, bytes_per_token, meta["sha256"])
