"""JSON files from outside read within bounds (bytes, values, nesting), refused naming the file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

KiB, MiB = 1 << 10, 1 << 20
# JSON values a file may open or separate (its b"{", b"[" and b","): each costs a parse some 60 to
# 100 bytes, so 64 MB of "[{},{},..." would take 1.7 GB. The meta.json of a 256k-token byte-level
# BPE (the field's largest vocabulary) has 1.4 M; at this limit "[{},{},..." takes 160 MB.
ITEMS = 4 << 20
CHUNK = 1 << 20  # bytes read, and counted, at a time


def shorten(value, limit: int = 80) -> str:
    """repr(value), cut to about `limit` characters: a refusal quotes what it found, not all of it.

    Args:
        value: any value (one nested too deep for repr is described instead).
        limit: the most characters returned.

    Returns:
        The repr, or its first `limit` - 5 characters, " ..." and its last.
    """
    try:
        text = repr(value)
    except RecursionError:
        text = f"a {type(value).__name__} nested too deep to show"
    return text if len(text) <= limit else f"{text[:limit - 5]} ...{text[-1]}"


def size_text(n: int) -> str:
    """`n` bytes as a person reads them: "64 MiB", "64 KiB", "12 bytes"."""
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit:
            return f"{n / unit:.4g} {name}"
    return f"{n} bytes"


def count_items(data: bytes) -> int:
    """The JSON values `data` opens or separates, strings included.

    Args:
        data: JSON text, or a piece of it.

    Returns:
        Its count of b"{", b"[" and b",": a bound on the values a parse of it would make.
    """
    return data.count(b"{") + data.count(b"[") + data.count(b",")


def read(path, limit: int, what: str, accepted: str, *, items: int = ITEMS):
    """The JSON value in the file `path`, read only if it is at most `limit` bytes.

    Args:
        path: the file.
        limit: the most bytes accepted; a larger file is refused unread (its size is taken
            first, and at most `limit` + 1 bytes are ever read, should it grow meanwhile).
        what: what the file is, for the refusal ("meta.json of token directory ...").
        accepted: what a valid file holds, for the refusal.
        items: the most JSON values opened or separated (b"{", b"[" and b"," counted, strings
            included) accepted: a file of more is refused as it is read, before it is parsed, so
            that parsing it never takes more than a bounded memory.

    Returns:
        The parsed value (any JSON type: the caller checks its schema).

    Raises:
        ValueError: the file is missing, unreadable, not a regular file, too large, of too many
            values, not UTF-8, not JSON, or nested too deep; the message names the file.
    """
    path = Path(path)
    try:
        # never blocks on a named pipe: its type is checked before a byte is read
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{what} {path} is not a regular file; expected {accepted}")
            if info.st_size > limit:
                raise ValueError(f"{what} {path} has {info.st_size:,} bytes, more than the {size_text(limit)} "
                                 f"such a file can need: it was not read; expected {accepted}")
            data, size, count = bytearray(), 0, 0
            while size <= limit and (chunk := f.read(min(CHUNK, limit + 1 - size))):
                count += count_items(chunk)
                if count > items:
                    raise ValueError(f"{what} {path} opens or separates more than {items:,} JSON values "
                                     f"(counting its {{, [ and , in its first {size + len(chunk):,} bytes): "
                                     f"more than such a file can need, and it was not parsed; expected {accepted}")
                data += chunk
                size += len(chunk)
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if size > limit:
        raise ValueError(f"{what} {path} grew past {size_text(limit)} while it was read; expected {accepted}")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 ({e.reason} at byte {e.start:,}); "
                         f"expected {accepted}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} nests its values too deep to read; expected {accepted}") from None
    except ValueError as e:  # json.JSONDecodeError, and an integer of too many digits
        raise ValueError(f"{what} {path} is not readable JSON ({shorten(str(e), 120)[1:-1]}); "
                         f"expected {accepted}") from None

