"""Files and directories written whole or not at all; a full disk named as such; the temporaries of killed writes removed."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import psutil

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
    return _locked(lambda: tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))


def _locked(make) -> tuple[int, str]:
    """`make()`'s (fd, path), locked (flock) until closed, so that it is never taken for a stale
    one; made again if it was removed as stale in the instant before it was locked."""
    while True:
        fd, path = make()
        if fcntl is None or fd < 0:
            return fd, path
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return fd, path
        os.close(fd)


def _remove_unlocked(path: str, remove) -> bool:
    """`remove(path)` unless a write holds it locked; whether it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # renamed into place, or removed, since the listing
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        remove(path)
        return True
    except OSError:
        return False  # locked: a write in progress
    finally:
        os.close(fd)


def remove_stale(directory: Path, ours) -> list[str]:
    """Remove the temporaries in `directory` of a name `ours(name)` accepts that no write holds
    locked (their writers were killed); returns their names."""
    removed = []
    if fcntl is None:
        return removed
    for entry in os.scandir(directory):
        found = TEMPORARY.match(entry.name)
        if found and ours(found.group("name")) and entry.is_file(follow_symlinks=False) \
                and _remove_unlocked(entry.path, os.unlink):
            removed.append(entry.name)
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


MARKER = ".lmwidget-writing"  # inside every directory lmwidget may remove as stale: its writer's pid


def _dir_names(target: Path) -> re.Pattern:
    """The names, exactly, of what `partial_dir` and `replace_dir` make beside `target`."""
    return re.compile(rf"^\.{re.escape(target.name)}\.(?P<kind>partial|old)-[0-9a-f]{{8}}$")


def _mark(directory: Path) -> None:
    (directory / MARKER).write_text(f"{os.getpid()}\n", encoding="utf-8")


def partial_dir(target: Path) -> tuple[Path, int]:
    """A new directory beside `target` to write into, locked until `release`d.

    Args:
        target: the directory it will replace (which may not exist).

    Returns:
        The directory (.<name>.partial-<8 hex digits>, holding only lmwidget's marker file),
        with the mode of `target` (or 0o777 less the umask for a new one), and its lock (an
        open descriptor held under flock, or -1 where there is no fcntl).

    Raises:
        OSError: the directory cannot be made there (the parent is not writable, say).
    """
    def make():
        path = target.with_name(f".{target.name}.partial-{secrets.token_hex(4)}")
        os.mkdir(path)  # 0o777 less the umask, as any new directory
        if target.is_dir():
            os.chmod(path, stat.S_IMODE(target.stat().st_mode))
        _mark(path)
        return (os.open(path, os.O_RDONLY) if fcntl is not None else -1), str(path)

    fd, path = _locked(make)
    return Path(path), fd


def release(lock: int) -> None:
    """Let go of a `partial_dir`'s lock.

    Args:
        lock: the lock `partial_dir` returned (-1: none).
    """
    if lock >= 0:
        with contextlib.suppress(OSError, ValueError):
            os.close(lock)


def replace_dir(new: Path, target: Path) -> None:
    """Put the whole directory `new` in the place of the directory `target`, then remove the
    previous one.

    On Linux the two are exchanged in one step (renameat2 RENAME_EXCHANGE): a crash at any
    moment leaves the old directory or the new one at `target`. Elsewhere the old one is
    renamed aside first; should the second rename fail, it is renamed back, and should the
    process die between the two, the next `remove_stale_dirs` puts it back.

    Args:
        new: a `partial_dir`, written whole.
        target: the directory it replaces (which may not exist).

    Raises:
        OSError: `new` could not be put in place; `target` is then as it was.
    """
    _fsync_dir(new)
    if not target.is_dir() or target.is_symlink():
        os.rename(new, target)
    else:
        _mark(target)  # the previous one, wherever a crash leaves it, is known as lmwidget's
        if _exchange(new, target):
            shutil.rmtree(new, ignore_errors=True)  # the previous directory, now at the partial name
        else:
            aside = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
            os.rename(target, aside)
            try:
                os.rename(new, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rename(aside, target)
                    (target / MARKER).unlink(missing_ok=True)
                raise
            shutil.rmtree(aside, ignore_errors=True)
    with contextlib.suppress(OSError):
        (target / MARKER).unlink(missing_ok=True)
    _fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def remove_stale_dirs(target: Path) -> list[str]:
    """Remove what writes of `target` that were killed left beside it.

    Only directories of exactly the names `partial_dir` and `replace_dir` make, holding the
    marker file lmwidget writes in them, are touched: a `partial_dir` no write holds (locked,
    or where there is no fcntl, of a process still alive), and a previous directory renamed
    aside, put back at `target` if `target` is missing, else removed.

    Args:
        target: the directory being written.

    Returns:
        The names of the directories removed.
    """
    removed, names = [], _dir_names(target)
    for entry in os.scandir(target.parent):
        found = names.match(entry.name)
        marker = os.path.join(entry.path, MARKER)
        if not found or not entry.is_dir(follow_symlinks=False) or os.path.islink(marker) \
                or not os.path.isfile(marker):
            continue
        if found.group("kind") == "old" and not os.path.lexists(target):
            os.rename(entry.path, target)  # a crash between replace_dir's renames: the old one back
            with contextlib.suppress(OSError):
                (target / MARKER).unlink()
        elif found.group("kind") == "old" or (fcntl is None and not _alive(marker)):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
        elif fcntl is not None and _remove_unlocked(entry.path, shutil.rmtree):
            removed.append(entry.name)
    return removed


def _alive(marker: str) -> bool:
    """Whether the process whose pid `marker` holds is running (so may be writing still)."""
    try:
        pid = int(Path(marker).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    return pid == os.getpid() or psutil.pid_exists(pid)
