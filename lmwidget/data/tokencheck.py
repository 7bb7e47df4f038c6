"""A token directory from outside checked before any thread starts: meta.json, its files, their ids."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from lmwidget.system import jsonfile
from lmwidget.system.atomic import MARKER  # left in a directory whose replacement a crash interrupted
from lmwidget.system.jsonfile import shorten

FORMAT = "lmwidget-tokens"
VERSION = 1
META = "meta.json"
SPLITS = {"train": "train.bin", "val": "val.bin"}
# a 50,257-token byte-level BPE makes a meta.json of 5.2 MB (its tokenizer.json escaped in it); a
# 256k-token vocabulary, the field's largest, about 30 MB
META_LIMIT = 64 << 20
HEX = "0123456789abcdef"
LITTER = (".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints")  # not data: ignored, kept
SCAN = 1 << 20  # tokens read at once when a split's largest id is looked for
DIGEST = "meta_sha256"


class _Missing:
    def __repr__(self):
        return "missing"


MISSING = _Missing()
ACCEPTED = (f"the {META} that lmwidget.prepare writes: an object with \"format\": {FORMAT!r}, \"dtype\" "
            f"'uint16' or 'uint32', \"vocab_size\", \"splits\" train and val (each a \"file\" inside "
            f"the directory, \"tokens\" and \"bytes\" counts), \"sha256\" and the \"tokenizer\"")


def meta_digest(meta: dict) -> str:
    """SHA-256 of meta.json's every field but the digest itself (keys sorted, compact JSON)."""
    fields = {k: v for k, v in meta.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_meta(path) -> dict:
    """A token directory's meta.json, read with a bound and its schema checked.

    Args:
        path: the token directory.

    Returns:
        meta.json's object, every field open_dir uses of the type it needs.

    Raises:
        ValueError: no meta.json, one larger than META_LIMIT (unread), or one that is not JSON,
            nests too deep, is of another format or a newer version, or has a field missing or
            of the wrong type; the message names the file, the value found and what is accepted.
    """
    path = Path(path).expanduser()
    meta_path = path / META
    if not meta_path.is_file():
        raise ValueError(
            f"data={str(path)!r} is a directory but not a token directory: it has no {META}. Tokenize "
            f"it once with lmwidget.prepare({str(path)!r}, 'tokens') (or python -m lmwidget prepare "
            f"{path} tokens), then pass data='tokens'; or pass a text file, a corpus name or text")
    if not meta_path.resolve().is_relative_to(path.resolve()):
        raise ValueError(f"{meta_path} is a link to {shorten(str(meta_path.resolve()), 300)}, outside the "
                         f"directory; accepted: a {META} file inside it, as lmwidget.prepare writes")
    meta = jsonfile.read(meta_path, META_LIMIT, "token directory file", ACCEPTED)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = (f"it holds {shorten(meta, 60)}, not an object" if not isinstance(meta, dict) else
                 f"\"format\" is {shorten(meta.get('format', MISSING), 60)}, not {FORMAT!r}")
        raise ValueError(f"{meta_path} is not the {META} of an lmwidget token directory ({found}); "
                         f"prepare the directory with lmwidget.prepare")
    version = meta.get("version", 0)
    if not _count(version):
        _bad(meta_path, "version", version, "an integer >= 0")
    if version > VERSION:
        raise ValueError(f"{meta_path} has format version {version}; this lmwidget reads "
                         f"version {VERSION} or older: upgrade lmwidget or prepare it again")
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise ValueError(f"{meta_path} has dtype {shorten(meta.get('dtype', MISSING), 40)}; expected 'uint16' or 'uint32'")
    if not _count(meta.get("vocab_size")) or meta["vocab_size"] < 1:
        _bad(meta_path, "vocab_size", meta.get("vocab_size", MISSING), "an integer >= 1")
    splits = meta.get("splits", MISSING)
    if not isinstance(splits, dict) or any(not isinstance(splits.get(s), dict) for s in SPLITS):
        _bad(meta_path, "splits", splits, "an object with \"train\" and \"val\", each an object")
    for split in SPLITS:
        info = splits[split]
        if not isinstance(info.get("file"), str):
            _bad(meta_path, f"splits.{split}.file", info.get("file", MISSING), "a file name inside the directory")
        for key in ("tokens", "bytes") + (("max_id",) if "max_id" in info else ()):
            if not _count(info.get(key)):
                _bad(meta_path, f"splits.{split}.{key}", info.get(key, MISSING), "an integer >= 0")
    for key in ("sha256",) + ((DIGEST,) if DIGEST in meta else ()):
        if not (isinstance(meta.get(key), str) and len(meta[key]) == 64 and set(meta[key]) <= set(HEX)):
            _bad(meta_path, key, meta.get(key, MISSING), "64 hexadecimal digits")
    if not isinstance(meta.get("tokenizer"), dict):
        _bad(meta_path, "tokenizer", meta.get("tokenizer", MISSING), "an object (the tokenizer, saved as JSON)")
    return meta


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad(meta_path: Path, field: str, value, accepted: str):
    found = f"no {field}" if value is MISSING else f"{field} = {shorten(value, 60)}"
    raise ValueError(f"{meta_path} has {found}; expected {accepted}. "
                     f"Prepare the directory again with lmwidget.prepare")


def check_digest(path: Path, meta: dict) -> bool:
    """Whether meta.json carries a digest (older ones do not); refused if it does not match.

    Args:
        path: the token directory.
        meta: its meta.json, as read_meta returned it.

    Returns:
        True when the digest is there and matches (its counts and largest ids are trusted).

    Raises:
        ValueError: meta.json was changed after prepare wrote it.
    """
    if DIGEST not in meta:
        return False
    if meta[DIGEST] != meta_digest(meta):
        raise ValueError(f"{path / META} does not match its {DIGEST} ({meta[DIGEST][:12]}...): it was "
                         f"changed after lmwidget.prepare wrote it, so its counts cannot be trusted; "
                         f"prepare the directory again")
    return True


def inside(directory: Path, field: str, name: str) -> Path:
    """The file that `field` of meta.json names `name`, resolved; refused unless it lies inside
    `directory` once every symbolic link is followed.

    Args:
        directory: the token directory.
        field: the field of meta.json that names it, for the refusal ("splits.train.file").
        name: the name found there.

    Returns:
        The file's resolved path.

    Raises:
        ValueError: an absolute name, or one that leads out of the directory.
    """
    root = directory.resolve()
    where = f"{directory / META} names {field} {shorten(name, 80)}"
    if not name or "\x00" in name or Path(name).is_absolute() or os.path.isabs(name) or Path(name).drive:
        raise ValueError(f"{where}; accepted: the name of a file inside the directory (as 'train.bin')")
    resolved = (root / name).resolve()
    if resolved == root:
        raise ValueError(f"{where}, the directory itself; accepted: the name of a file inside the directory (as 'train.bin')")
    if not resolved.is_relative_to(root):
        raise ValueError(f"{where}, which leads to {shorten(str(resolved), 300)}, outside {root}; accepted: "
                         f"the name of a file inside the directory (as 'train.bin'), not a path or a "
                         f"link out of it")
    return resolved


def largest_id(file: Path, dtype: np.dtype, tokens: int) -> int:
    """The largest token id in `file`, read SCAN tokens at a time: its memory does not grow
    with the file.

    Args:
        file: a split's file.
        dtype: its token type (little-endian uint16 or uint32).
        tokens: its count of tokens.

    Returns:
        The largest id (0 for an empty file).
    """
    top = 0
    with open(file, "rb") as f:
        for _ in range(0, tokens, SCAN):
            chunk = np.fromfile(f, dtype=dtype, count=SCAN)
            if not len(chunk):
                break
            top = max(top, int(chunk.max()))
    return top


def check_ids(file: Path, top: int, tokenizer) -> None:
    """Refuse a split whose largest id `top` a model of `tokenizer`'s vocabulary cannot embed.

    Args:
        file: the split's file.
        top: its largest id, read from the file.
        tokenizer: the directory's tokenizer.

    Raises:
        ValueError: naming the file, the id and the vocabulary's size.
    """
    if top >= tokenizer.vocab_size:
        raise ValueError(f"{file}: it holds token id {top:,}, but its tokenizer, {tokenizer.describe()}, has "
                         f"ids 0 to {tokenizer.vocab_size - 1:,} (vocabulary size {tokenizer.vocab_size:,}): "
                         f"a model would fail on it mid-run. Expected ids below {tokenizer.vocab_size:,}: "
                         f"prepare the directory again with the tokenizer that made these ids")


def check_encoded(tokenizer, *arrays) -> None:
    """Refuse the tokens a tokenizer gave in memory if any is past the size it reports.

    Args:
        tokenizer: the tokenizer that encoded them.
        *arrays: its token arrays.

    Raises:
        ValueError: naming the tokenizer, the id and its vocabulary size.
    """
    top = max((int(a.max()) for a in arrays if len(a)), default=0)
    if top >= tokenizer.vocab_size:
        raise ValueError(f"the tokenizer {tokenizer.describe()} gave token id {top:,} for this text, past "
                         f"the vocabulary size {tokenizer.vocab_size:,} it reports: a model of that size "
                         f"would fail on it mid-run; pass a tokenizer whose size covers every id it gives")


def check_target(out_dir, inputs=()) -> None:
    """Refuse to prepare into `out_dir` what would lose data or fail only at the end: a link, a
    mount point, a directory holding files lmwidget did not write, one inside an input
    directory or holding an input.

    Args:
        out_dir: the token directory prepare would write (or replace).
        inputs: the files and directories prepare reads.

    Raises:
        ValueError: naming the path and the files found, or both directories, and what is accepted.
    """
    out = Path(out_dir).expanduser()
    accepted = "Accepted: a new directory, an empty one or a token directory lmwidget.prepare wrote"
    if out.is_symlink():
        gone = "" if out.exists() else ", which does not exist"
        raise ValueError(f"out_dir={str(out_dir)!r} is a symbolic link to {shorten(os.readlink(out), 200)}{gone}: "
                         f"prepare replaces a token directory whole and never follows a link to do it. "
                         f"{accepted}, not a link" + (f"; pass the directory it leads to, {out.resolve()}"
                                                      if out.is_dir() else ""))
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out_dir)!r} exists and is not a directory. {accepted}")
    if out.is_dir() and os.path.ismount(out):
        raise ValueError(f"out_dir={str(out_dir)!r} is a mount point: prepare puts a new directory in its "
                         f"place by renaming, which a mount point refuses. {accepted}, not a mount point: "
                         f"e.g. {out / 'tokens'}")
    resolved = out.resolve()
    for source in inputs:
        source = Path(source).expanduser().resolve()
        if resolved.is_relative_to(source) or source.is_relative_to(resolved):
            where = ("inside the input directory" if resolved.is_relative_to(source) and source.is_dir()
                     else "the input" if resolved == source else "holding the input")
            shown = f"out_dir={str(out_dir)!r}" + (f" ({resolved})" if str(resolved) != str(out_dir) else "")
            raise ValueError(f"{shown} is {where} {source}: its files would "
                             f"be read as text, or the input replaced. Write the token directory "
                             f"outside the input, e.g. beside it")
    if not out.is_dir():
        return
    names = sorted(set(os.listdir(out)) - set(LITTER) - {MARKER})  # litter: not data, and kept
    ours = {*SPLITS.values(), META} | {f".{n}.partial" for n in (*SPLITS.values(), META)}
    foreign = [n for n in names if n not in ours]
    if {META, *SPLITS.values()} & set(names):
        try:
            read_meta(out)
        except ValueError:
            foreign = names  # no meta.json of ours: its train.bin and val.bin are not ours either
    if foreign:
        listed = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise ValueError(f"out_dir={str(out_dir)!r} holds files lmwidget.prepare did not write ({listed}): "
                         f"they are left as they are. {accepted} (train.bin, val.bin and its {META}); "
                         f"pass another out_dir")


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)
