"""Job: serves a run to notebooks (its record published, signed control requests carried out)
and prints a console progress line."""

from __future__ import annotations

import math
import os
import socket
import threading
import time

from lmwidget.remote.transport.channel import JobEndpoint, new_key, write_connection_file
from lmwidget.checkpoint.saving import config_state
from lmwidget.training.config import check_grad_clip, check_lr
from lmwidget.core.control import ENDED
from .publisher import Publisher
from .rundir import CONNECTION, make_run_dir, plain, warn_if_open

CLIENT_CHARS = 120   # of a client's name, kept in its events
TICK = 0.25          # s between two publications (and the longest a request waits)
# the requests a job takes: any other, even correctly signed, is dropped unanswered and counted
REQUESTS = ("attach", "replay", "status", "pause", "resume", "stop", "lr", "grad_clip", "sample",
            "histogram", "evaluate", "save")


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
        self.publisher = Publisher(run, self.run_dir, self.endpoint, sync)
        self._progress, self._progress_interval, self._printed = progress, progress_interval, 0.0
        self.info = {"run_dir": str(self.run_dir), "pid": os.getpid(), "max_steps": run.max_steps,
                     "config": options_of(run), "layers": run.layers,
                     "device": str(run.device), "describe": run.describe(),
                     "unsupported": dict(run.unsupported),
                     "world_size": 1 if sync is None else sync.world_size,
                     "backend": None if sync is None else sync.backend}
        self.publisher.record("info", self.info)
        info = self.endpoint.connection_info(self.key)
        if info["ip"] in ("0.0.0.0", "*", "::"):  # bound everywhere: name this machine
            info["ip"] = socket.gethostname()
        self._connection = {**info, "run_dir": str(self.run_dir), "pid": os.getpid()}
        self.connection_file = write_connection_file(self.run_dir / CONNECTION, self._connection)

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
        run, note = self.run, asked_by(body)
        if kind == "attach":
            return {"ok": True, "info": self.info, "seq": self.publisher.seq}
        if kind == "replay":
            return {"ok": True, "records": self.publisher.replay(int(body.get("since", 0)))}
        if kind == "status":
            return {"ok": True, **self.publisher.status(), "step": run.step,
                    "rejected": dict(self.endpoint.rejected)}
        if kind == "pause":
            run.pause(note)
        elif kind == "resume":
            run.resume(note)
        elif kind == "stop":
            run.stop(note)
        elif kind == "lr":
            run.set_lr(check_lr(body["value"]), note)
        elif kind == "grad_clip":
            run.set_grad_clip(check_grad_clip(body["value"]), note)
        elif kind == "sample":
            run.request_sample(note)
        elif kind == "histogram":
            run.request_histogram(body["layer"])
        elif kind == "evaluate":
            run.evaluate(note)
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
                self.publisher.publish_new()
                self.print_progress()
                next_tick = time.monotonic() + TICK
            if ended:
                break
        self.print_progress(final=True)
        linger = time.monotonic() + 3 * TICK  # late requests still get their answer
        while time.monotonic() < linger:
            for peer, message in self.endpoint.requests(TICK):
                self.handle(peer, message)
        self.publisher.publish_new()

    def print_progress(self, final: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if not final and now - self._printed < self._progress_interval:
            return
        self._printed = now
        self._progress.write(progress_line(self.run, self.publisher.val) + "\n")
        self._progress.flush()

    def close(self) -> None:
        """The job is over: its connection file says so (attach reads the record at once)."""
        write_connection_file(self.connection_file, {**self._connection, "ended": True})
        self.publisher.close()
        self.endpoint.close()


def options_of(run) -> dict:
    """What the job's run was started with, as plain values: lmwidget's own run its config,
    another (your loop, a framework's) its options."""
    config = getattr(run, "config", None)
    if config is not None:
        return config_state(config, run.tokenizer)
    return {k: plain(v) for k, v in run.options().items()}


def asked_by(body: dict) -> str:
    """A request's note, with the client that sent it ("from me@host:pid"), for its event."""
    note = str(body.get("note") or "")
    client = body.get("client")
    if not isinstance(client, str) or not client.strip():
        return note
    client = "".join(c for c in client[:CLIENT_CHARS] if c.isprintable())
    return f"{note} (from {client})" if note else f"from {client}"


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


