"""Files written whole or not at all; a full disk named as such; the temporaries of killed writes removed."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no temporary can be known to be stale
    fcntl = None

FULL = (errno.ENOSPC, errno.EDQUOT)  # a disk, or a quota, that is full
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # mkstemp's: .<target>.<8 random>.tmp


def write(path: Path, save, ours) -> int:
    """Write `path` with `save(file)`; returns its size in bytes.

    The file is written to a temporary in the same directory, flushed and fsynced, then renamed
    over `path`: a crash at any moment leaves either the old file or the new one, never a mix.
    The temporary is locked (flock) until renamed, so it is never taken for a stale one. Once
    `path` is written, the unlocked temporaries beside it of a name `ours(name)` accepts, left by
    writes that were killed, are removed. A full disk raises OSError(ENOSPC) naming `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _locked_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            save(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # while still locked
    except BaseException as e:
        written = os.stat(tmp).st_size if os.path.exists(tmp) else 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        code = _errno(e) if isinstance(e, Exception) else None
        if code is None:
            raise
        raise OSError(code, _failed(path, code, written)) from None
    _fsync_dir(path.parent)  # the rename itself survives a power cut
    remove_stale(path.parent, ours)
    return path.stat().st_size


def _locked_temporary(path: Path) -> tuple[int, str]:
    while True:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:  # not removed as stale in the instant before it was locked
            return fd, tmp
        os.close(fd)


def remove_stale(directory: Path, ours) -> list[str]:
    """Remove the temporaries in `directory` of a name `ours(name)` accepts that no write holds
    locked (their writers were killed); returns their names."""
    removed = []
    if fcntl is None:
        return removed
    for entry in os.scandir(directory):
        found = TEMPORARY.match(entry.name)
        if not found or not ours(found.group("name")) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # renamed into place, or removed, since the listing
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            pass  # locked: a write in progress
        finally:
            os.close(fd)
    return removed


def _errno(error: BaseException) -> int | None:
    """The operating system's error behind `error`: torch.save reports a failed write as a
    RuntimeError ("unexpected pos ...") raised while handling the OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno:
            return error.errno
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _failed(path: Path, code: int, written: int) -> str:
    reason = os.strerror(code)
    text = (f"{reason[0].lower()}{reason[1:]}: {path} was not written ({written:,} bytes of it were "
            f"written first, then removed). Any earlier {path.name} is unchanged")
    if code not in FULL:
        return text
    try:
        free = f"{shutil.disk_usage(path.parent).free:,} bytes are free there now"
    except OSError:
        free = "how much is free there is unknown"
    return f"{text}; {free}: free some space, or write it elsewhere, and try again"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
