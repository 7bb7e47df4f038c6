"""attach(): a job run by `python -m lmwidget train` (or torchrun), seen from a notebook as
a run, with the same dashboard and controls."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from lmwidget.system import shutdown
from lmwidget.remote.transport.channel import ClientEndpoint, read_connection_file
from lmwidget.checkpoint.saving import PendingSave
from lmwidget.core.control import ENDED
from .job import CONNECTION, RECORDS
from lmwidget.system.jsonfile import count_items
from lmwidget.core.source import Source

RECORD_LINE = 16 << 20  # bytes of one line of a job's records read at most (a record has kilobytes)
RECORD_ITEMS = 1 << 20  # JSON values in one line parsed at most (memory bounded to some 100 MB)

REQUEST_TIMEOUT = 5.0  # s: a job answers within a tick (0.25 s); more means it is gone
REPLAY_TIMEOUT = 30.0  # s: a page of the record (up to about 4 MB) from a distant job
SILENT = 10.0  # s without a message from a job that has not ended: it is gone (killed)


def attach(target, *, display: bool = True, timeout: float = REQUEST_TIMEOUT) -> "RemoteRun":
    """Watch and steer a job started with `python -m lmwidget train` (or under torchrun).

    `target`: its run directory, or the connection file in it (copy that file, 0600, to
    attach from another machine; the job must bind an address that machine reaches,
    `--ip`). The whole history so far is replayed from the run directory's metrics.jsonl
    (or, when that is not readable here, from the job), then followed live. A job that has
    ended is shown from its record. Detaching (`detach()`), or a kernel restart, leaves the
    job training: attach again to pick it up with its full history.
    """
    run = RemoteRun(target, timeout=timeout)
    if display:
        run.show()
    return run


class RemoteRun(Source):
    """A job's run as a notebook sees it: a source like any other, whose record is replayed
    and followed from the job, and whose controls send signed requests that the job carries
    out at its next step boundary."""

    def __init__(self, target, timeout: float = REQUEST_TIMEOUT):
        super().__init__()
        path = Path(target).expanduser()
        self.connection_file = path / CONNECTION if path.is_dir() else path
        if not self.connection_file.exists():
            raise FileNotFoundError(
                f"no connection file at {self.connection_file}: pass the run directory a "
                f"`python -m lmwidget train` job printed, or its {CONNECTION}")
        info = self._connection_info = read_connection_file(self.connection_file)
        self.address = f"tcp://{info['ip']}:{info['control_port']}"
        self.run_dir = Path(info.get("run_dir", self.connection_file.parent))
        if not (self.run_dir / RECORDS).is_file() and (self.connection_file.parent / RECORDS).is_file():
            self.run_dir = self.connection_file.parent  # the directory was moved or copied here
        self._device = torch.device("cpu")  # the job's, once its record says
        self._last_save = None
        self._status = {"state": "running", "lr": float("nan"), "grad_clip": 0.0, "paused": False,
                        "anomaly": None, "error": None, "checkpoint": None}
        self._live = {"step": 0, "elapsed": 0.0, "ranks": [], "rejected": {}}
        self._seq = 0   # the next record to apply
        self._info = None
        self._records_lock = threading.Lock()  # records are applied one at a time, in order
        self._closed = threading.Event()
        self._save_client = None  # saves wait for their file: on a socket of their own
        self._heard = time.monotonic()  # when the job was last heard from
        self.receive_error = None  # what broke the receiver, if anything did
        self._client = ClientEndpoint(info)  # subscribed first: nothing published from now is missed
        try:
            self._connect(info, timeout)
        except BaseException:
            self.detach()  # no sockets left open by a failed attach
            raise

    def _connect(self, info: dict, timeout: float) -> None:
        self.connected = not info.get("ended", False)  # an ended job's file says so
        if self.connected:
            try:
                self._call("attach", timeout=timeout)
            except TimeoutError:
                self.connected = False
        self._replay()
        if self._info is None:
            raise ConnectionError(f"no signed answer from the job at {self.address} and no record "
                                  f"in {self.run_dir / RECORDS}: is it running, and is "
                                  f"{self.connection_file} its connection file (its key)?")
        if not self.connected:
            if self.state not in ENDED:
                raise ConnectionError(
                    f"no signed answer from the job at {self.address} within {timeout} s, and its "
                    f"record says it is still {self.state} at step {self.step}: if it runs, is "
                    f"{self.connection_file} its connection file (its key)? If it was killed, "
                    f"read its record with lmwidget.attach(...) after it ends, or its checkpoints")
            self.detach()  # an ended job: its record is the whole story
            return
        self._thread = shutdown.start(self._receive, f"lmwidget-attach-{self.id}")

    # -- receiving ----------------------------------------------------------------------------
    def _call(self, kind: str, body=None, timeout: float = REQUEST_TIMEOUT) -> dict:
        reply = self._client.request(kind, body, timeout)["body"]
        if not reply.get("ok"):
            raise ValueError(f"the job refused {kind!r}: {reply.get('error')}")
        return reply

    def _replay(self) -> None:
        """Apply the record so far: from the run directory's file when this machine reads it,
        else from the job (what the file holds, in pages)."""
        path = self.run_dir / RECORDS
        if path.is_file():
            with open(path, "rb") as f:
                while line := f.readline(RECORD_LINE + 1):  # never a whole file of no newline
                    found = (f"a line of more than {RECORD_LINE:,} bytes" if len(line) > RECORD_LINE else
                             f"a line of more than {RECORD_ITEMS:,} JSON values" if count_items(line) > RECORD_ITEMS
                             else None)
                    if found:
                        raise ValueError(f"{path} has {found}: it was not parsed; expected the records a job "
                                         f"writes, one JSON object a line, each under {RECORD_LINE >> 20} MiB")
                    try:
                        record = json.loads(line)
                    except ValueError:
                        break  # a line being written: the stream brings it
                    self._apply(record)
        if self.connected:
            self._catch_up()

    def _catch_up(self) -> None:
        """Records the job has that this side has not seen (a gap in the stream)."""
        while True:
            records = self._call("replay", {"since": self._seq}, timeout=REPLAY_TIMEOUT)["records"]
            for record in records:
                self._apply(record)
            if not records:
                return

    def _receive(self) -> None:
        while not self._closed.is_set() and not shutdown.exiting():
            try:
                messages = self._client.metrics(timeout=0.2)
                if messages:
                    self._heard = time.monotonic()
                for message in messages:
                    self._take(message)
            except Exception as e:  # kept for the user (receive_error); the stream goes on
                self.receive_error = e
                time.sleep(0.2)

    def _take(self, message: dict) -> None:
        """One message of the stream: a record (fetching any missed before it), or the live
        state (whose sequence number also reveals a record lost on the way)."""
        body = message["body"]
        newest = body["seq"] if message["kind"] == "record" else body.get("seq", 0)
        if newest > self._seq:
            self._catch_up()  # a timeout here is kept in receive_error; the next message retries
        if message["kind"] == "record":
            self._apply(body)
        elif message["kind"] == "live":
            self._on_live(body)

    def _on_live(self, body: dict) -> None:
        self._live = body
        norms, latest = body.get("layer_grad_norms"), self.record.layer_grad_norms
        if norms is not None and (latest is None or latest[0] != norms[0]):
            self.record.layer_grad_norms = (norms[0], torch.tensor(norms[1]))

    def _apply(self, record: dict) -> None:
        """One record, in order; one seen already is skipped."""
        with self._records_lock:
            if record["seq"] != self._seq:
                return
            self._seq += 1
            kind, body, h = record["type"], record["body"], self.record
            if kind == "info":
                self._info = body
                self._device = torch.device(body["device"])
                self._status["lr"] = body["config"]["lr"]
                self._status["grad_clip"] = body["config"]["grad_clip"]
            elif kind == "rows":
                h.extend(body)
            elif kind == "events":
                for step, t, what, value, detail in body:
                    h.record_event(step, what, value, detail, time=t)
            elif kind == "samples":
                for s, text in body:
                    h.add_sample(s, text)
            elif kind == "logged":
                h.extend_logged(body)
            elif kind == "resources":
                for t, s, sample in body:  # a value not measured came as null
                    h.record_resources(t, s, {k: np.nan if v is None else v for k, v in sample.items()})
            elif kind == "histograms":
                for x in body:
                    h.add_histogram(_histogram(x))
            elif kind == "status":
                self._on_status(body)

    def _on_status(self, status: dict) -> None:
        before, self._status = self._status, status
        if status["checkpoint"] != before.get("checkpoint"):
            self._last_save = None if status["checkpoint"] is None else tuple(status["checkpoint"])
        if status["paused"] != self.control.paused:  # mirrored, so the button reads right at once
            (self.control.pause if status["paused"] else self.control.resume)()
        if status["state"] != before["state"]:
            self.control.announce()  # the dashboard redraws the state at once

    # -- what the run is doing ----------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._status["state"]

    @property
    def step(self) -> int:
        return max(int(self._live["step"]), int(self.record.last("step", 0)))

    @property
    def max_steps(self) -> int:
        return int(self._info["max_steps"])

    def options(self) -> dict:
        """The job's options, as it started with them."""
        return dict(self._info["config"])

    def describe(self) -> dict:
        saved = self._info.get("describe")  # written since lmwidget 0.2
        return dict(saved) if saved else {"model": str(self._info["config"].get("model")),
                                          "data": str(self._info["config"].get("data"))}

    @property
    def name(self) -> str:
        return f"job {self.run_dir.name}"

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def last_save(self):
        return self._last_save

    @property
    def world_size(self) -> int:
        return int(self._info["world_size"])

    @property
    def ranks(self) -> list[dict]:
        """Each rank's loss, grad norm and tokens/s at the latest step (empty for one process)."""
        return list(self._live.get("ranks", []))

    @property
    def rejected(self) -> dict:
        """Control messages the job dropped unanswered (bad signature, unsigned or malformed, too
        large, unknown kind, stale, replayed, too many requests) and CURVE client keys it
        refused, by why."""
        return dict(self._live.get("rejected", {}))

    @property
    def lr(self) -> float:
        return float(self._status["lr"])

    @property
    def grad_clip(self) -> float:
        return float(self._status["grad_clip"])

    @property
    def anomaly(self):
        return tuple(self._status["anomaly"]) if self._status["anomaly"] else None

    @property
    def error(self):
        return None if self._status["error"] is None else RuntimeError(f"the job failed: {self._status['error']}")

    @property
    def elapsed(self) -> float:
        return float(self._live["elapsed"])

    @property
    def started(self) -> bool:
        return True

    @property
    def layers(self) -> list[str]:
        return list(self._info["layers"])

    @property
    def gpu_status(self) -> str:
        return f"the job's rank 0 ({self._info['device']}), sampled there"

    def sample_resources(self) -> dict:
        """The job samples its own resources; nothing is measured here."""
        return {}

    # -- steering ---------------------------------------------------------------------------
    def _send(self, kind: str, body=None) -> dict:
        if not self.connected:
            why = "it has ended" if self.state in ENDED else "detached: lmwidget.attach() again"
            raise ConnectionError(f"not connected to the job at {self.address} ({why})")
        return self._call(kind, body)

    def pause(self) -> None:
        if not self._past("pause"):
            self.control.pause()
            self._send("pause")

    def resume(self) -> None:
        if not self._past("pause"):
            self.control.resume()
            self._send("resume")

    def stop(self, note: str = "") -> None:
        if not self._past("stop"):
            self._send("stop", {"note": str(note)})

    def _request(self, kind: str, value=None, note: str = "") -> None:
        """set_lr, set_grad_clip, request_sample, request_histogram, evaluate: sent to the job."""
        body = {"value": value, "note": str(note)}
        if kind == "histogram":
            body = {"layer": value}
        self._send(kind, body)

    def request_save(self, path=None) -> PendingSave:
        """Ask the job for a checkpoint (written by its rank 0, on its machine)."""
        save = PendingSave(path)
        body = {"path": None if path is None else str(path)}

        def ask():
            try:
                with self._lock:
                    if self._save_client is None:
                        self._save_client = ClientEndpoint(self._connection_info, subscribe=False)
                    client = self._save_client
                reply = client.request("save", body, timeout=600)["body"]
                if reply.get("ok"):
                    save.finish(reply)
                else:
                    save.finish(error=RuntimeError(f"the job could not save: {reply.get('error')}"))
            except Exception as e:
                save.finish(error=e)

        self._send("status")  # connected, or why not
        threading.Thread(target=ask, daemon=True, name="lmwidget-attach-save").start()
        return save

    def status(self) -> dict:
        """Ask the job now: state, step, LR, and the control messages it rejected."""
        return self._send("status")

    @property
    def alive(self) -> bool:
        """True while the job is heard from (it sends a message four times a second)."""
        return self.connected and time.monotonic() - self._heard < SILENT

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job's run has ended (True), or `timeout` s pass (False). Raises
        ConnectionError if the job goes silent (killed) or this side detached."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state not in ENDED:
            if not self.alive:
                raise ConnectionError(
                    f"the job at {self.address} is not heard from ({'detached' if self._closed.is_set() else f'silent for over {SILENT:.0f} s: killed?'}); "
                    f"its run was {self.state} at step {self.step}")
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _release(self) -> None:
        self.detach()  # the model is the job's: what this side holds is its connection

    def detach(self) -> None:
        """Stop following the job; it goes on training. attach() again picks it up."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.connected = False
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(REPLAY_TIMEOUT + 1)  # it checks for this every 0.2 s, or after a catch-up
        self._client.close()  # waits for a request in flight (up to its timeout)
        if self._save_client is not None:
            self._save_client.close()

    def __repr__(self) -> str:
        return (f"<lmwidget.RemoteRun {self.id}: job {self.address} ({self.world_size} rank(s)), "
                f"{self.state}, step {self.step}/{self.max_steps}, lr={self.lr:.3g}>")


def _histogram(h: dict) -> dict:
    def part(p):
        return None if p is None else {"counts": np.asarray(p["counts"]), "edges": np.asarray(p["edges"]),
                                       "nonfinite": p["nonfinite"]}
    return {**h, "weights": part(h["weights"]), "grads": part(h["grads"])}
