"""attach(): a job run by `python -m lmwidget train` (or torchrun), seen from a notebook as
a run, with the same dashboard and controls."""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
import warnings
from pathlib import Path

import psutil

from lmwidget.system import shutdown
from lmwidget.remote.transport.channel import ClientEndpoint, read_connection_file
from lmwidget.checkpoint.saving import PendingSave
from lmwidget.core.control import ENDED
from lmwidget.errors import LmwidgetWarning
from .rundir import CONNECTION, RECORDS
from .recorded import RecordedRun

REQUEST_TIMEOUT = 5.0  # s: a job answers within a tick (0.25 s); more means it is gone
REPLAY_TIMEOUT = 30.0  # s: a page of the record (up to about 4 MB) from a distant job
SILENT = 10.0  # s without a message from a job that has not ended: it is gone (killed)
LOCAL = ("127.0.0.1", "localhost", "::1", socket.gethostname())  # a job on this machine


def pid_alive(pid) -> bool:
    """Whether process `pid` of this machine still runs (a zombie counts as gone)."""
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return False


def attach(target, *, display: bool = True, timeout: float = REQUEST_TIMEOUT,
           client: str | None = None) -> "RemoteRun":
    """Watch and steer a job: `python -m lmwidget train` (alone or under torchrun), or your
    own script with `lmwidget.steer(..., run_dir=...)`, `lmwidget.HFCallback` or
    `lmwidget.LightningCallback`.

    The whole history so far is replayed from the run directory's metrics.jsonl (or, when
    that is not readable here, from the job), then followed live. A job that has ended is
    shown from its record; one that died without ending it (killed) is shown from its
    record as failed, with a warning that says so. Detaching (`detach()`), or a kernel
    restart, leaves the job training: attach again to pick it up with its full history.
    Several notebooks may attach to one job at once: each sees everything, each can steer,
    and each event names the client that asked for it.

    Args:
        target: the job's run directory, or the connection file in it (copy that file, 0600,
            to attach from another machine; the job must bind an address that machine
            reaches, `--ip`).
        display: show the dashboard in the running cell.
        timeout: seconds a request to the job may take before it is reported lost.
        client: this side's name in the job's events (default: user@host:pid/attach id).

    Returns:
        The RemoteRun: a source like any other, steered through the job.

    Raises:
        FileNotFoundError: no connection file at `target`.
        ConnectionError: the job does not answer, its process may still be alive (on another
            machine, or on this one), and its record does not say it ended; or it left no
            record to show.
        ValueError: a connection file or record that is refused (each says why).
    """
    run = RemoteRun(target, timeout=timeout, client=client)
    if display:
        run.show()
    return run


class RemoteRun(RecordedRun):
    """A job's run as a notebook sees it: a source like any other, whose record is replayed
    and followed from the job, and whose controls send signed requests that the job carries
    out at its next step boundary."""

    def __init__(self, target, timeout: float = REQUEST_TIMEOUT, client: str | None = None):
        super().__init__()
        self.client = client or f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}/{self.id}"
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
        gone = info.get("ip") in LOCAL and not pid_alive(info.get("pid"))  # killed on this machine
        self.connected = self.connected and not gone
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
            if self.state not in ENDED and gone:
                self._died(info)
            elif self.state not in ENDED:
                raise ConnectionError(
                    f"no signed answer from the job at {self.address} within {timeout} s, and its "
                    f"record says it is still {self.state} at step {self.step}: if it runs, is "
                    f"{self.connection_file} its connection file (its key)? From here a job that "
                    f"died on another machine looks like one that does not answer: its record is "
                    f"{RECORDS} in its run directory there")
            self.detach()  # an ended job: its record is the whole story
            return
        self._thread = shutdown.start(self._receive, f"lmwidget-attach-{self.id}")

    def _died(self, info: dict) -> None:
        """The job's process is gone and its record never said it ended: shown as failed."""
        why = (f"it died without ending its record (its process {info.get('pid')} is gone: "
               f"killed, or out of memory?); the record ends at step {self.step}")
        self._status = {**self._status, "state": "failed", "paused": False, "error": why}
        self.control.resume()
        warnings.warn(f"{self.name} is dead: {why}. Its record is shown; its checkpoints are where "
                      f"it saved them.", LmwidgetWarning, stacklevel=5)

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
            self._read_records(path)
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

    @property
    def name(self) -> str:
        """The job's name in messages and views: "job <its run directory's name>"."""
        return f"job {self.run_dir.name}"

    # -- steering ---------------------------------------------------------------------------
    def _send(self, kind: str, body=None) -> dict:
        if not self.connected:
            why = "it has ended" if self.state in ENDED else "detached: lmwidget.attach() again"
            raise ConnectionError(f"not connected to the job at {self.address} ({why})")
        return self._call(kind, {**(body or {}), "client": self.client})

    def pause(self, note: str = "") -> None:
        if not self._past("pause"):
            self.control.pause()
            self._send("pause", {"note": str(note)})

    def resume(self, note: str = "") -> None:
        """Ask the job to go on from the step boundary where it is paused; nothing once its run
        has ended.

        Raises:
            ConnectionError: not connected to the job (detached).
            TimeoutError: the job did not answer within the request timeout.
            ValueError: the job refused the request.
        """
        if not self._past("pause"):
            self.control.resume()
            self._send("resume", {"note": str(note)})

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
        body = {"path": None if path is None else str(path), "client": self.client}

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

