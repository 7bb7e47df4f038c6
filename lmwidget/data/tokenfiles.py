"""Token directories: a corpus tokenized once into train.bin, val.bin and meta.json, read back
through np.memmap so that training never loads the tokens."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from lmwidget.system import atomic, jsonfile
from .tokencheck import (DIGEST, FORMAT, LITTER, META, SPLITS, VERSION, check_digest, check_ids,  # noqa: F401
                         check_target, dtype_for, inside, largest_id, meta_digest, read_meta)
from .text import cache_dir


def is_dir(data) -> bool:
    """`data` names a directory (a token directory, or one to prepare first)."""
    if not isinstance(data, (str, os.PathLike)) or (isinstance(data, str) and ("\n" in data or not data.strip())):
        return False
    try:
        return Path(data).expanduser().is_dir()
    except OSError:
        return False


class TokenWriter:
    """Appends each split's token arrays to its file in a new directory beside `out_dir`;
    `close()` writes meta.json and only then puts the whole directory in the place of
    `out_dir`: a writing interrupted at any moment leaves the previous token directory whole
    (or none), never a mix, and the next writer removes what it left.

    Made without a `vocab_size` (as prepare does before it trains a tokenizer), it checks
    `out_dir` and makes its new directory at once, and `begin(vocab_size)` opens the files."""

    def __init__(self, out_dir, vocab_size: int = 0, inputs=()):
        self.dir = Path(out_dir).expanduser()
        check_target(self.dir, inputs)  # never a directory of files lmwidget did not write
        try:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            self._target = self.dir.resolve()
            atomic.remove_stale_dirs(self._target)  # what a killed writer left; the previous one put back
            self.dir.mkdir(exist_ok=True)  # until close(), empty or the previous one
            self.partial, self._lock = atomic.partial_dir(self._target)
        except OSError as e:
            raise ValueError(f"cannot write out_dir={str(out_dir)!r}: {e.strerror or e} ({e.filename or self.dir.parent}). "
                             f"prepare writes a new directory beside it, then renames it into place; "
                             f"accepted: a directory whose parent you can write to") from None
        self.files = {}
        if vocab_size:
            self.begin(vocab_size)

    def begin(self, vocab_size: int) -> None:
        """Open the split files for tokens of a vocabulary of `vocab_size` (uint16 or uint32).

        Args:
            vocab_size: the tokenizer's vocabulary size.
        """
        self.dtype = dtype_for(vocab_size)
        self.vocab_size = vocab_size
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)
        self.max_id = dict.fromkeys(SPLITS, 0)
        self.sha = {split: hashlib.sha256() for split in SPLITS}
        self.files = {split: open(self.partial / name, "wb") for split, name in SPLITS.items()}

    def write(self, split: str, ids: np.ndarray, n_bytes: int = 0) -> None:
        """Append tokens to a split's file.

        Args:
            split: "train" or "val".
            ids: the token ids.
            n_bytes: the UTF-8 bytes of text they encode.
        """
        data = np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<"))
        if len(data):
            self.max_id[split] = max(self.max_id[split], int(data.max()))
        self.files[split].write(data.tobytes())
        self.sha[split].update(data.tobytes())
        self.tokens[split] += len(ids)
        self.bytes[split] += n_bytes

    def close(self, tokenizer_state: dict, **meta) -> dict:
        """Finish the files, write meta.json (with its digest), and put the directory in place.

        Args:
            tokenizer_state: the tokenizer as tokens.saved keeps it.
            **meta: more fields of meta.json (source, val_fraction).

        Returns:
            meta.json's object.

        Raises:
            OSError: the directory could not be put in place; `out_dir` is then as it was.
        """
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        digest = hashlib.sha256(json.dumps(tokenizer_state, sort_keys=True).encode())
        for split in SPLITS:
            digest.update(f"|{split}|{self.sha[split].hexdigest()}".encode())
        out = {"format": FORMAT, "version": VERSION, "dtype": self.dtype.name, "vocab_size": self.vocab_size,
               "splits": {s: {"file": SPLITS[s], "tokens": self.tokens[s], "bytes": self.bytes[s],
                              "max_id": self.max_id[s]} for s in SPLITS},
               "sha256": digest.hexdigest(), **meta, "tokenizer": tokenizer_state}
        out[DIGEST] = meta_digest(out)
        with open(self.partial / META, "w", encoding="utf-8") as f:
            f.write(json.dumps(out, indent=1))
            f.flush()
            os.fsync(f.fileno())
        keep_litter(self._target, self.partial)
        try:
            atomic.replace_dir(self.partial, self._target)
        except BaseException:
            self.abort()
            raise
        atomic.release(self._lock)
        for split, name in SPLITS.items():  # what it wrote is known: the next open does not read it
            remember(self._target / name, self.max_id[split])
        return out

    def abort(self) -> None:
        """Close the files and remove the new directory: `out_dir` stays as it was."""
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.partial, ignore_errors=True)
        atomic.release(self._lock)


def keep_litter(old: Path, new: Path) -> None:
    """Copy the files an operating system or a notebook leaves in a directory (.DS_Store, ...)
    from the token directory `old` into `new`, which replaces it: they are never deleted."""
    for name in LITTER:
        source = old / name
        if source.is_symlink() or not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, new / name, symlinks=True)
        else:
            shutil.copy2(source, new / name)


# -- each split's largest id, read once ------------------------------------------------------

def _key(file: Path) -> tuple[Path, dict]:
    """The cache entry of `file`'s largest id, and what identifies this very version of it:
    st_ctime_ns changes with any change and cannot be set by a user, so a file from outside
    never matches an entry it did not earn."""
    info = os.stat(file)
    ident = {"path": str(Path(file).resolve()), "dev": info.st_dev, "ino": info.st_ino, "size": info.st_size,
             "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}
    name = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "token-ids" / f"{name}.json", ident


def remember(file: Path, top: int) -> None:
    """Keep `file`'s largest id `top`, verified, in lmwidget's cache (a read-only cache: not kept).

    Args:
        file: a split's file, as it is now.
        top: its largest id.
    """
    try:
        path, ident = _key(file)
        atomic.write(path, lambda f: f.write(json.dumps({**ident, "max_id": top}).encode()),
                     lambda name: name.endswith(".json"))
    except OSError:
        pass


def split_max(file: Path, dtype: np.dtype, tokens: int) -> int:
    """The largest id in `file`: from the cache if this very version of it was read (or
    written) before, else read SCAN tokens at a time and remembered.

    Args:
        file: a split's file.
        dtype: its token type.
        tokens: its count of tokens.

    Returns:
        Its largest id (0 for an empty file).
    """
    path, ident = _key(file)
    try:
        entry = jsonfile.read(path, 4 << 10, "cache entry", "a largest id")
        if isinstance(entry, dict) and {k: entry.get(k) for k in ident} == ident and \
                isinstance(entry.get("max_id"), int) and entry["max_id"] >= 0:
            return entry["max_id"]
    except ValueError:
        pass  # none yet, or unreadable: read the file
    top = largest_id(file, dtype, tokens)
    remember(file, top)
    return top


