"""Token directories: a corpus tokenized once into train.bin, val.bin and meta.json, read back
through np.memmap so that training never loads the tokens."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

FORMAT = "lmwidget-tokens"
VERSION = 1
META = "meta.json"
SPLITS = {"train": "train.bin", "val": "val.bin"}


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def is_dir(data) -> bool:
    """`data` names a directory (a token directory, or one to prepare first)."""
    if not isinstance(data, (str, os.PathLike)) or (isinstance(data, str) and ("\n" in data or not data.strip())):
        return False
    try:
        return Path(data).expanduser().is_dir()
    except OSError:
        return False


class TokenWriter:
    """Appends each split's token arrays to its file; `close()` writes meta.json last, so a
    directory whose writing was interrupted is refused, never half read."""

    def __init__(self, out_dir, vocab_size: int):
        self.dir = Path(out_dir).expanduser()
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"out_dir={str(out_dir)!r} exists and is not a directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / META).unlink(missing_ok=True)  # until close(), not a token directory
        self.dtype = dtype_for(vocab_size)
        self.vocab_size = vocab_size
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)
        self.sha = {split: hashlib.sha256() for split in SPLITS}
        self.files = {split: open(self.dir / f".{name}.partial", "wb") for split, name in SPLITS.items()}

    def write(self, split: str, ids: np.ndarray, n_bytes: int = 0) -> None:
        """Append tokens to `split`; `n_bytes`: the UTF-8 bytes of text they encode."""
        data = np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<")).tobytes()
        self.files[split].write(data)
        self.sha[split].update(data)
        self.tokens[split] += len(ids)
        self.bytes[split] += n_bytes

    def close(self, tokenizer_state: dict, **meta) -> dict:
        """Finish the files and write meta.json; returns it."""
        for split, f in self.files.items():
            f.close()
            os.replace(f.name, self.dir / SPLITS[split])
        digest = hashlib.sha256(json.dumps(tokenizer_state, sort_keys=True).encode())
        for split in SPLITS:
            digest.update(f"|{split}|{self.sha[split].hexdigest()}".encode())
        out = {"format": FORMAT, "version": VERSION, "dtype": self.dtype.name, "vocab_size": self.vocab_size,
               "splits": {s: {"file": SPLITS[s], "tokens": self.tokens[s], "bytes": self.bytes[s]} for s in SPLITS},
               "sha256": digest.hexdigest(), **meta, "tokenizer": tokenizer_state}
        tmp = self.dir / f".{META}.partial"
        tmp.write_text(json.dumps(out, indent=1), encoding="utf-8")
        os.replace(tmp, self.dir / META)
        return out

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
            Path(f.name).unlink(missing_ok=True)


def read_meta(path) -> dict:
    """A token directory's meta.json, checked; a clear error for anything else."""
    path = Path(path).expanduser()
    meta_path = path / META
    if not meta_path.is_file():
        raise ValueError(
            f"data={str(path)!r} is a directory but not a token directory: it has no {META}. Tokenize "
            f"it once with lmwidget.prepare({str(path)!r}, 'tokens') (or python -m lmwidget.prepare "
            f"{path} tokens), then pass data='tokens'; or pass a text file, a corpus name or text")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{meta_path} is not readable JSON ({e}); prepare the directory again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not the {META} of an lmwidget token directory (no "
                         f"\"format\": {FORMAT!r}); prepare the directory with lmwidget.prepare")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{meta_path} has format version {meta['version']}; this lmwidget reads "
                         f"version {VERSION} or older: upgrade lmwidget or prepare it again")
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise ValueError(f"{meta_path} has dtype {meta.get('dtype')!r}; expected 'uint16' or 'uint32'")
    return meta


def open_dir(path, tokenizer=None, vocab_size: int = 0):
    """The Dataset of a token directory: its tokenizer and memory-mapped splits. Missing,
    truncated or mismatched files are refused, naming the file."""
    from . import tokens
    from .data import Dataset

    path = Path(path).expanduser()
    meta = read_meta(path)
    dtype = np.dtype(meta["dtype"])
    arrays, bytes_per_token = {}, {}
    for split, name in SPLITS.items():
        info = meta["splits"][split]
        file = path / info["file"]
        if not file.is_file():
            raise ValueError(f"token directory {path} has no {info['file']} (its {META} lists "
                             f"{info['tokens']:,} {split} tokens); prepare the directory again")
        expected = info["tokens"] * dtype.itemsize
        if file.stat().st_size != expected:
            raise ValueError(
                f"{file} has {file.stat().st_size:,} bytes but {META} lists {info['tokens']:,} "
                f"{meta['dtype']} tokens ({expected:,} bytes): the directory is incomplete or mixed "
                f"from two preparations; prepare it again")
        arrays[split] = (np.memmap(file, dtype=dtype.newbyteorder("<"), mode="r") if expected
                         else np.empty(0, dtype))
        bytes_per_token[split] = info["bytes"] / max(1, info["tokens"])
    own = tokens.restored(meta["tokenizer"])
    if own.vocab_size != meta["vocab_size"] or dtype != dtype_for(own.vocab_size):
        raise ValueError(f"{path / META}: its tokenizer has {own.vocab_size:,} tokens but the file "
                         f"says vocab_size={meta['vocab_size']} ({meta['dtype']}); prepare it again")
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
    return Dataset.from_tokens(arrays["train"], arrays["val"], own, bytes_per_token, meta["sha256"])
