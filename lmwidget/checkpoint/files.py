"""Checkpoint files: a run's whole state in one file, written atomically, read without running code."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from pathlib import Path

import torch

from lmwidget.system import atomic
from . import loading as ckptcheck
from .loading import CheckpointError

FORMAT = "lmwidget-checkpoint"
VERSION = 1
PERIODIC = "step-{:07d}.pt"   # every `checkpoint_every` steps; the newest `keep_checkpoints` stay
SAVED = "saved-{:07d}.pt"     # run.save() and the Save button, never pruned
BEST = "best.pt"              # the lowest validation loss so far
_STEP_FILE = re.compile(r"^(?:step|saved)-(\d+)(?:\.\d+)?\.pt$")  # .N: beside another run's file


def write(payload: dict, path) -> int:
    """Save `payload` to `path` atomically (atomic.write), with a digest of its contents, so
    damage is detected on load; returns the file's size in bytes. Temporaries of checkpoint
    saves into the same directory that were killed are removed once it is written."""
    path = Path(path)
    payload = dict(payload, digest=digest(payload))
    return atomic.write(path, lambda f: torch.save(payload, f),
                        lambda name: name in (path.name, BEST) or _STEP_FILE.match(name) is not None)


def read(path) -> dict:
    """Load a checkpoint, or a directory's newest one, without unpickling any code.

    Raises CheckpointError, naming the file, when it is damaged, truncated, modified after
    it was written, not an lmwidget checkpoint, or holds anything but tensors and plain
    values (which only an unsafe unpickler would turn into objects, running their code).
    """
    path = resolve(path)
    payload = ckptcheck.load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an lmwidget checkpoint (it has no format={FORMAT!r}): save one with "
            f"run.save(); a plain PyTorch file loads with torch.load(path, weights_only=True)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')!r}; "
                              f"this lmwidget reads version {VERSION}")
    stored = payload.pop("digest", None)
    if stored != digest(payload):
        raise CheckpointError(
            f"checkpoint {path} does not match the digest written with it: it was modified or "
            f"corrupted after it was saved. Nothing was loaded.")
    payload["path"] = str(path)
    return payload


def resolve(path) -> Path:
    """`path` itself, or for a directory its newest checkpoint (by step) of run.save() or
    the periodic saves; best.pt is used only when named."""
    path = Path(path).expanduser()
    if path.is_dir():
        steps = [(int(m.group(1)), p.stat().st_mtime, p) for p in path.iterdir()
                 if (m := _STEP_FILE.match(p.name))]
        if not steps:
            found = sorted(p.name for p in path.glob("*.pt"))
            raise FileNotFoundError(
                f"no checkpoint in directory {path} (looked for step-*.pt and saved-*.pt"
                + (f"; found {', '.join(found)}: name one of them" if found else "") + ")")
        return max(steps)[2]  # the highest step; of equal steps, the newest file
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: no such file or directory")
    return path


def prune(written: list[Path], keep: int) -> list[Path]:
    """Delete all but the newest `keep` of the periodic checkpoints in `written` (the files
    this run wrote: another run's files in the same directory are never touched)."""
    doomed = written[:-keep] if keep else []
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    del written[:len(doomed)]
    return doomed


def digest(obj) -> str:
    """SHA-256 of a payload's contents (structure, values and tensor bytes), independent of
    how the file lays them out."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj, where: str = "checkpoint") -> None:
    if isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for key in sorted(obj, key=repr):
            _feed(h, key, where)
            _feed(h, obj[key], f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):  # a tuple may come back as either
        h.update(b"[%d" % len(obj))
        for i, item in enumerate(obj):
            _feed(h, item, f"{where}[{i}]")
    elif torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"t{t.dtype}{tuple(obj.shape)}".encode())
        if t.numel():
            if t.stride(0) != 1:  # a one-element view may have stride 0
                t = torch.empty(t.numel(), dtype=t.dtype).copy_(t)
            h.update(t.view(torch.uint8).numpy())
    elif obj is None or type(obj) in (bool, int, float, str, bytes):  # exactly: a subclass
        # (torch.__version__ is one) would be pickled as a class, which loading refuses
        h.update(repr((type(obj).__name__, obj)).encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and plain values only; {where} is a "
                        f"{type(obj).__module__}.{type(obj).__name__}: {obj!r:.80}")


def save_to(payload: dict, path, directory, name: str) -> dict:
    """Write `payload` to `path` (a file, or a directory to save `name` into), or to
    `directory`/`name` when `path` is None; returns {"path", "kind", "bytes", "seconds"}."""
    if path is None:
        target = Path(directory) / name
    else:
        trailing = os.fspath(path).endswith(("/", os.sep))
        path = Path(path).expanduser()
        target = path / name if trailing or path.is_dir() else path
    t0 = time.perf_counter()
    size = write(payload, target)
    return {"path": str(target), "kind": payload.get("kind"), "bytes": size,
            "seconds": time.perf_counter() - t0}
