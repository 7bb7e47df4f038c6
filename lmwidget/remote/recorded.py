"""RecordedRun: a job's run as its records tell it, each applied once and in order (the record a notebook replays and follows)."""

from __future__ import annotations

import json
import threading

import numpy as np
import torch

from lmwidget.core.source import Source
from lmwidget.system.jsonfile import count_items

RECORD_LINE = 16 << 20  # bytes of one line of a job's records read at most (a record has kilobytes)
RECORD_ITEMS = 1 << 20  # JSON values in one line parsed at most (memory bounded to some 100 MB)


class RecordedRun(Source):
    """A job's run as its records say: what it is, where it stands, what it last saved.

    Records are applied one at a time, in the order the job numbered them, whether they come
    from the run directory's metrics.jsonl or from the job; one seen already is skipped.
    RemoteRun adds the connection that brings them and carries requests back.
    """

    def __init__(self):
        super().__init__()
        self._device = torch.device("cpu")  # the job's, once its record says
        self._last_save = None
        self._status = {"state": "running", "lr": float("nan"), "grad_clip": 0.0, "paused": False,
                        "anomaly": None, "error": None, "checkpoint": None}
        self._live = {"step": 0, "elapsed": 0.0, "ranks": [], "rejected": {}}
        self._seq = 0   # the next record to apply
        self._info = None
        self._records_lock = threading.Lock()  # records are applied one at a time, in order

    def _read_records(self, path) -> None:
        """Apply the records of a job's metrics.jsonl at `path`, up to a line still being written.

        Raises:
            ValueError: a line too long or with too many JSON values to parse safely.
        """
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
                self._status["grad_clip"] = body["config"].get("grad_clip")
                self.unsupported = dict(body.get("unsupported") or {})  # a framework's limits
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
        """The run's state as the job's newest status says ("running" until one arrives)."""
        return self._status["state"]

    @property
    def step(self) -> int:
        """Optimizer steps the job has completed: the newer of its live count and its recorded rows."""
        return max(int(self._live["step"]), int(self.record.last("step", 0)))

    @property
    def max_steps(self) -> int | None:
        """The optimizer steps the job trains for, from its info record (None: your loop
        did not say)."""
        steps = self._info["max_steps"]
        return None if steps is None else int(steps)

    def options(self) -> dict:
        """The job's options, as it started with them."""
        return dict(self._info["config"])

    def describe(self) -> dict:
        """What the job trains, as it described itself (a job of lmwidget before 0.2: its model and
        data options)."""
        saved = self._info.get("describe")  # written since lmwidget 0.2
        return dict(saved) if saved else {"model": str(self._info["config"].get("model")),
                                          "data": str(self._info["config"].get("data"))}

    @property
    def device(self) -> torch.device:
        """The device of the job's rank 0, from its info record (the CPU until that arrives)."""
        return self._device

    @property
    def last_save(self):
        """The job's newest save outcome, as its status reports it (the form of Run.last_save); None
        before any."""
        return self._last_save

    @property
    def world_size(self) -> int:
        """The number of processes (ranks) the job trains with: 1 without torchrun."""
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
        """The job's base LR as its newest status says (NaN until its info record arrives)."""
        return float(self._status["lr"])

    @property
    def grad_clip(self) -> float | None:
        """The job's max gradient norm as its newest status says (0: clipping off; None:
        lmwidget does not clip in that job, your loop may)."""
        clip = self._status["grad_clip"]
        return None if clip is None else float(clip)

    @property
    def anomaly(self):
        """The job's current anomaly as its newest status reports it (a tuple), or None."""
        return tuple(self._status["anomaly"]) if self._status["anomaly"] else None

    @property
    def error(self):
        """A RuntimeError carrying the message the job failed with; None unless it failed."""
        return None if self._status["error"] is None else RuntimeError(f"the job failed: {self._status['error']}")

    @property
    def elapsed(self) -> float:
        """Seconds on the job's run clock, from its newest live message."""
        return float(self._live["elapsed"])

    @property
    def started(self) -> bool:
        """Always True: a job has started by the time its record is read."""
        return True

    @property
    def layers(self) -> list[str]:
        """The layer groups of the job's per-layer gradient norms, from its info record."""
        return list(self._info["layers"])

    @property
    def gpu_status(self) -> str:
        """Says that the resource samples are the job's rank 0's, taken on its machine."""
        return f"the job's rank 0 ({self._info['device']}), sampled there"

    def sample_resources(self) -> dict:
        """The job samples its own resources; nothing is measured here."""
        return {}


def _histogram(h: dict) -> dict:
    def part(p):
        return None if p is None else {"counts": np.asarray(p["counts"]), "edges": np.asarray(p["edges"]),
                                       "nonfinite": p["nonfinite"]}
    return {**h, "weights": part(h["weights"]), "grads": part(h["grads"])}
