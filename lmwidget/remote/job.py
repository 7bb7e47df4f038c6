"""Job: serves a run to notebooks (signed metrics out, signed control in), appends its record
to the run directory, and prints a console progress line."""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import threading
import time
import warnings
from pathlib import Path

from lmwidget.remote.transport.channel import JobEndpoint, new_key, write_connection_file
from lmwidget.checkpoint.saving import config_state
from lmwidget.training.config import check_grad_clip, check_lr
from lmwidget.core.control import ENDED
from lmwidget.core.source import LmwidgetWarning

RECORDS = "metrics.jsonl"      # every record the job published, one JSON object a line
CONNECTION = "connection.json"  # ports and keys, 0600: what attach() needs
TICK = 0.25          # s between two publications (and the longest a request waits)
REPLAY_LIMIT = 2000  # records per replay answer
REPLAY_BYTES = 4 << 20  # and about this many bytes at most
# the requests a job takes: any other, even correctly signed, is dropped unanswered and counted
REQUESTS = ("attach", "replay", "status", "pause", "resume", "stop", "lr", "grad_clip", "sample",
            "histogram", "evaluate", "save")


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


def _private(path, flags: int) -> int:
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
        self._file = open(self.path, "a", encoding="utf-8", opener=_private)

    def flush(self) -> None:
        events = self.run.record.events_since(self._n)
        self._n += len(events)
        for step, t, kind, value, detail in events:
            self._file.write(_dumps({"step": step, "time": t, "kind": kind, "value": _plain(value),
                                     "detail": detail}) + "\n")
        if events:
            self._file.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()


class Job:
    """Rank 0's side of a job: a thread-free loop (`serve`) on the main thread that answers
    control requests, publishes what is new about four times a second, and appends it to
    `metrics.jsonl` in the run directory (a notebook attaching late replays it)."""

    def __init__(self, run, run_dir, *, sync=None, ip: str = "127.0.0.1", metrics_port: int = 0,
                 control_port: int = 0, progress=None, progress_interval: float = 2.0):
        self.run, self.sync = run, sync
        self.run_dir = make_run_dir(run_dir)
        warn_if_open(self.run_dir)
        self.key = new_key()
        self.endpoint = JobEndpoint(self.key, REQUESTS, ip, metrics_port, control_port)
        self.records_path = self.run_dir / RECORDS
        _keep_earlier(self.records_path)
        self._records = open(self.records_path, "x+b", opener=_private)
        self._offsets: list[int] = []  # where each record of this file starts, for replays
        self._seq = 0
        self.rank_log = RankLog(run, self.run_dir, 0 if sync is None else sync.rank)
        self._rows = self._events = self._samples = self._resources = self._histograms = self._logged = 0
        self._status = None
        self._val = float("nan")  # the latest validation loss, for the progress line
        self._progress, self._progress_interval, self._printed = progress, progress_interval, 0.0
        self._lock = threading.Lock()  # the record file and seq: save replies come from threads
        self.info = {"run_dir": str(self.run_dir), "pid": os.getpid(), "max_steps": run.max_steps,
                     "config": config_state(run.config), "layers": run.layers,
                     "device": str(run.device), "describe": run.describe(),
                     "world_size": 1 if sync is None else sync.world_size,
                     "backend": None if sync is None else sync.backend}
        self._record("info", self.info)
        info = self.endpoint.connection_info(self.key)
        if info["ip"] in ("0.0.0.0", "*", "::"):  # bound everywhere: name this machine
            info["ip"] = socket.gethostname()
        self._connection = {**info, "run_dir": str(self.run_dir), "pid": os.getpid()}
        self.connection_file = write_connection_file(self.run_dir / CONNECTION, self._connection)

    # -- records -------------------------------------------------------------------------
    def _record(self, kind: str, body) -> None:
        """Append one record to the file and publish it (with its sequence number)."""
        with self._lock:
            record = _json_ready({"seq": self._seq, "type": kind, "body": body})
            line = (json.dumps(record, default=_plain, allow_nan=False) + "\n").encode()
            self._records.seek(0, os.SEEK_END)
            self._offsets.append(self._records.tell())
            self._records.write(line)
            self._records.flush()
            self._seq += 1
        self.endpoint.publish("record", record)

    def replay(self, since: int, limit: int = REPLAY_LIMIT) -> list[dict]:
        """The records from sequence number `since` on (at most `limit`), read from the file."""
        with self._lock:
            start = max(int(since), 0)
            if start >= self._seq:
                return []
            self._records.seek(self._offsets[start])
            lines, size = [], 0
            for _ in range(min(limit, self._seq - start)):
                lines.append(self._records.readline())
                size += len(lines[-1])
                if size > REPLAY_BYTES:  # a page that travels in well under a second
                    break
        return [json.loads(line) for line in lines]

    def publish_new(self) -> None:
        """What happened since the last call: rows, events, samples, resources, histograms,
        and the status when it changed; plus a live message (step, per-rank metrics)."""
        run, history = self.run, self.run.record
        history.drain()
        cols = history.since(self._rows)
        if len(cols["step"]):
            self._rows += len(cols["step"])
            self._record("rows", {k: v.tolist() for k, v in cols.items()})
        events = history.events_since(self._events)
        if events:
            self._events += len(events)
            evals = [e for e in events if e[2] == "eval"]
            self._val = float(evals[-1][3]) if evals else self._val
            self._record("events", [[s, t, k, _plain(v), d] for s, t, k, v, d in events])
        logged = history.logged_since(self._logged)
        if logged:
            self._logged += len(logged)
            self._record("logged", [[s, name, v] for s, name, v in logged])
        samples = history.samples_since(self._samples)
        if samples:
            self._samples += len(samples)
            self._record("samples", [[s, text] for s, text in samples])
        resources = history.resources_since(self._resources)
        if resources:
            self._resources += len(resources)
            self._record("resources", [[t, s, sample] for t, s, sample in resources])
        histograms = history.histograms_since(self._histograms)
        if histograms:
            self._histograms += len(histograms)
            self._record("histograms", [_plain_histogram(h) for h in histograms])
        status = self.status()
        if status != self._status:
            self._status = status
            self._record("status", status)
        latest = run.layer_grad_norms
        self.endpoint.publish("live", _json_ready({
            "step": run.step, "elapsed": run.elapsed, "seq": self._seq,
            "ranks": self.sync.per_rank() if self.sync is not None else [],
            "layer_grad_norms": None if latest is None else [int(latest.name), latest.tolist()],
            "rejected": dict(self.endpoint.rejected)}))
        self.rank_log.flush()

    def status(self) -> dict:
        run = self.run
        last = run.last_save
        return {"state": run.state, "lr": run.lr, "grad_clip": run.grad_clip,
                "paused": run.paused, "anomaly": list(run.anomaly) if run.anomaly else None,
                "error": None if run.error is None else f"{type(run.error).__name__}: {run.error}",
                "checkpoint": None if last is None else list(last)}

    # -- control ----------------------------------------------------------------------------
    def handle(self, peer: bytes, message: dict) -> None:
        """Carry out one verified request and answer it; a bad value is answered with why."""
        kind, body = message["kind"], message.get("body") or {}
        try:
            if not isinstance(body, dict):
                raise TypeError(f"a request's body must be an object; got {type(body).__name__}")
            reply = self._carry_out(peer, message, kind, body)
        except Exception as e:  # a signed but bad request never takes the job down
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)}
        if reply is not None:
            self.endpoint.reply(peer, message, reply)

    def _carry_out(self, peer, message, kind: str, body: dict):
        """One of REQUESTS (the endpoint drops every other kind, unanswered)."""
        run = self.run
        if kind == "attach":
            return {"ok": True, "info": self.info, "seq": self._seq}
        if kind == "replay":
            return {"ok": True, "records": self.replay(int(body.get("since", 0)))}
        if kind == "status":
            return {"ok": True, **self.status(), "step": run.step,
                    "rejected": dict(self.endpoint.rejected)}
        if kind == "pause":
            run.pause()
        elif kind == "resume":
            run.resume()
        elif kind == "stop":
            run.stop(str(body.get("note", "")))
        elif kind == "lr":
            run.set_lr(check_lr(body["value"]), str(body.get("note", "")))
        elif kind == "grad_clip":
            run.set_grad_clip(check_grad_clip(body["value"]))
        elif kind == "sample":
            run.request_sample()
        elif kind == "histogram":
            run.request_histogram(body["layer"])
        elif kind == "evaluate":
            run.evaluate()
        elif kind == "save":
            save = run.request_save(body.get("path"))
            threading.Thread(target=self._answer_save, args=(peer, message, save),
                             daemon=True, name="lmwidget-job-save").start()
            return None  # answered once written
        return {"ok": True, "state": run.state, "step": run.step}

    def _answer_save(self, peer, message, save) -> None:
        try:
            result = save.wait(600)
            reply = {"ok": True, "path": result["path"], "step": result["step"], "bytes": result["bytes"]}
        except Exception as e:
            reply = {"ok": False, "error": str(e)}
        self.endpoint.reply(peer, message, reply)

    # -- the loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        """Until the run has ended: answer requests, publish, print progress. Then publish
        the end, and answer requests a little longer so a watching notebook sees it."""
        next_tick = time.monotonic()
        while True:
            ended = self.run.state in ENDED and not self.run.alive
            for peer, message in self.endpoint.requests(max(0.0, next_tick - time.monotonic())):
                self.handle(peer, message)
            if ended or time.monotonic() >= next_tick:
                self.publish_new()
                self.print_progress()
                next_tick = time.monotonic() + TICK
            if ended:
                break
        self.print_progress(final=True)
        linger = time.monotonic() + 3 * TICK  # late requests still get their answer
        while time.monotonic() < linger:
            for peer, message in self.endpoint.requests(TICK):
                self.handle(peer, message)
        self.publish_new()

    def print_progress(self, final: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if not final and now - self._printed < self._progress_interval:
            return
        self._printed = now
        self._progress.write(progress_line(self.run, self._val) + "\n")
        self._progress.flush()

    def close(self) -> None:
        """The job is over: its connection file says so (attach reads the record at once)."""
        write_connection_file(self.connection_file, {**self._connection, "ended": True})
        self.rank_log.close()
        self._records.close()
        self.endpoint.close()


def _keep_earlier(path: Path) -> None:
    """A run directory used again (a job resumed into it): the earlier job's record is kept
    as metrics-1.jsonl (-2, ...); the new record starts afresh, with the resumed history."""
    if not path.exists():
        return
    n = 1
    while (earlier := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    path.rename(earlier)


def progress_line(run, val: float = float("nan")) -> str:
    """`step  120/1000 | loss 2.3140 | val 2.4012 | grad_norm 0.830 | lr 3.00e-03 | 25.3k tok/s | running | 12 s`"""
    h = run.record
    n = len(str(run.max_steps))
    loss, norm, rate = (float(h.last(k)) for k in ("loss", "grad_norm", "tokens_per_sec"))
    parts = [f"step {run.step:>{n}}/{run.max_steps}", f"loss {loss:.4f}" if len(h) else "loss -",
             f"val {val:.4f}" if math.isfinite(val) else "val -",
             f"grad_norm {norm:.3g}" if len(h) else "grad_norm -", f"lr {run.lr:.2e}",
             f"{rate / 1e3:.1f}k tok/s" if len(h) else "- tok/s", run.state, f"{run.elapsed:.0f} s"]
    if run.error is not None:
        parts.append(f"error: {type(run.error).__name__}: {run.error}")
    return " | ".join(parts)


def _json_ready(obj):
    """`obj` with every non-finite float as None: standard JSON (jq, JavaScript read it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return obj


def _dumps(obj) -> str:
    return json.dumps(_json_ready(obj), default=_plain, allow_nan=False)


def _plain(value):
    """A JSON-ready value: numbers, strings, None (a tensor or numpy scalar as a float)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return value if math.isfinite(value) else None


def _plain_histogram(h: dict) -> dict:
    def part(p):
        return None if p is None else {"counts": p["counts"].tolist(), "edges": p["edges"].tolist(),
                                       "nonfinite": p["nonfinite"]}
    return {"step": h["step"], "group": h["group"], "source": h["source"],
            "weights": part(h["weights"]), "grads": part(h["grads"])}
