"""A job's run directory: made for its owner alone, its files (the record, each rank's events) JSON lines of plain values."""

from __future__ import annotations

import json
import math
import os
import stat
import warnings
from pathlib import Path

from lmwidget.errors import LmwidgetWarning

RECORDS = "metrics.jsonl"      # every record the job published, one JSON object a line
CONNECTION = "connection.json"  # ports and keys, 0600: what attach() needs


def make_run_dir(path) -> Path:
    """The run directory, made for its owner only (0700) when it is new: its record holds the
    config, samples and paths, its connection file the keys."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def warn_if_open(run_dir: Path) -> None:
    """An existing directory keeps its mode (lmwidget does not change what it did not make):
    say so where others may list it."""
    mode = stat.S_IMODE(run_dir.stat().st_mode)
    if mode & 0o077:
        warnings.warn(f"run directory {run_dir} is open to others (mode {mode:04o}): the files the job "
                      f"writes in it are its owner's only (0600), but others can list their names; "
                      f"`chmod 700 {run_dir}` closes it, or give --run-dir a new directory",
                      LmwidgetWarning, stacklevel=3)


def owner_only(path, flags: int) -> int:
    """open()'s opener for a file its owner alone reads (0600)."""
    return os.open(path, flags, 0o600)


def rank_file(run_dir: Path, rank: int) -> Path:
    """The events one rank saw, as JSON lines (what every rank did, and at which step)."""
    return Path(run_dir) / f"rank-{rank}.jsonl"


class RankLog:
    """Appends a rank's events (pause, resume, lr, stop, ...) to its rank file as they happen."""

    def __init__(self, run, run_dir: Path, rank: int):
        self.run = run
        self._n = len(run.record.events_since(0))  # a resumed run's earlier events: not again
        self.path = rank_file(make_run_dir(run_dir), rank)
        self._file = open(self.path, "a", encoding="utf-8", opener=owner_only)

    def flush(self) -> None:
        events = self.run.record.events_since(self._n)
        self._n += len(events)
        for step, t, kind, value, detail in events:
            self._file.write(dumps({"step": step, "time": t, "kind": kind, "value": plain(value),
                                     "detail": detail}) + "\n")
        if events:
            self._file.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()


def keep_earlier(path: Path) -> None:
    """A run directory used again (a job resumed into it): the earlier job's record is kept
    as metrics-1.jsonl (-2, ...); the new record starts afresh, with the resumed history."""
    if not path.exists():
        return
    n = 1
    while (earlier := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    path.rename(earlier)


def json_ready(obj):
    """`obj` with every non-finite float as None: standard JSON (jq, JavaScript read it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def dumps(obj) -> str:
    return json.dumps(json_ready(obj), default=plain, allow_nan=False)


def plain(value):
    """A JSON-ready value: numbers, strings, None (a tensor or numpy scalar as a float)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return value if math.isfinite(value) else None


def plain_histogram(h: dict) -> dict:
    def part(p):
        return None if p is None else {"counts": p["counts"].tolist(), "edges": p["edges"].tolist(),
                                       "nonfinite": p["nonfinite"]}
    return {"step": h["step"], "group": h["group"], "source": h["source"],
            "weights": part(h["weights"]), "grads": part(h["grads"])}
