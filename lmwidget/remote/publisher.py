"""Publisher: what a job tells the notebooks watching it, each record appended to metrics.jsonl and published, replayed on request."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .rundir import RECORDS, RankLog, json_ready, keep_earlier, owner_only, plain, plain_histogram

REPLAY_LIMIT = 2000  # records per replay answer
REPLAY_BYTES = 4 << 20  # and about this many bytes at most


class Publisher:
    """Rank 0's record of a run: each record numbered, appended to `metrics.jsonl` in the run
    directory and published on `endpoint` (a notebook attaching late replays the file), and
    a live message (step, per-rank metrics) each time `publish_new` is called.

    Args:
        run: the run published (a source).
        run_dir: its run directory (made already).
        endpoint: the job's endpoint, which publishes and answers.
        sync: the ranks of a torchrun job, or None for one process.
    """

    def __init__(self, run, run_dir: Path, endpoint, sync=None):
        self.run, self.sync, self.endpoint = run, sync, endpoint
        self.records_path = run_dir / RECORDS
        keep_earlier(self.records_path)
        self._records = open(self.records_path, "x+b", opener=owner_only)
        self._offsets: list[int] = []  # where each record of this file starts, for replays
        self.seq = 0  # the next record's sequence number
        self.rank_log = RankLog(run, run_dir, 0 if sync is None else sync.rank)
        self._rows = self._events = self._samples = self._resources = self._histograms = self._logged = 0
        self._status = None
        self.val = float("nan")  # the latest validation loss, for the progress line
        self._lock = threading.Lock()  # the record file and seq: save replies come from threads

    def record(self, kind: str, body) -> None:
        """Append one record to the file and publish it (with its sequence number)."""
        with self._lock:
            record = json_ready({"seq": self.seq, "type": kind, "body": body})
            line = (json.dumps(record, default=plain, allow_nan=False) + "\n").encode()
            self._records.seek(0, os.SEEK_END)
            self._offsets.append(self._records.tell())
            self._records.write(line)
            self._records.flush()
            self.seq += 1
        self.endpoint.publish("record", record)

    def replay(self, since: int, limit: int = REPLAY_LIMIT) -> list[dict]:
        """The records from sequence number `since` on (at most `limit`), read from the file."""
        with self._lock:
            start = max(int(since), 0)
            if start >= self.seq:
                return []
            self._records.seek(self._offsets[start])
            lines, size = [], 0
            for _ in range(min(limit, self.seq - start)):
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
            self.record("rows", {k: v.tolist() for k, v in cols.items()})
        events = history.events_since(self._events)
        if events:
            self._events += len(events)
            evals = [e for e in events if e[2] == "eval"]
            self.val = float(evals[-1][3]) if evals else self.val
            self.record("events", [[s, t, k, plain(v), d] for s, t, k, v, d in events])
        logged = history.logged_since(self._logged)
        if logged:
            self._logged += len(logged)
            self.record("logged", [[s, name, v] for s, name, v in logged])
        samples = history.samples_since(self._samples)
        if samples:
            self._samples += len(samples)
            self.record("samples", [[s, text] for s, text in samples])
        resources = history.resources_since(self._resources)
        if resources:
            self._resources += len(resources)
            self.record("resources", [[t, s, sample] for t, s, sample in resources])
        histograms = history.histograms_since(self._histograms)
        if histograms:
            self._histograms += len(histograms)
            self.record("histograms", [plain_histogram(h) for h in histograms])
        status = self.status()
        if status != self._status:
            self._status = status
            self.record("status", status)
        latest = run.layer_grad_norms
        self.endpoint.publish("live", json_ready({
            "step": run.step, "elapsed": run.elapsed, "seq": self.seq,
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

    def close(self) -> None:
        """The last events to the rank file; both files closed."""
        self.rank_log.close()
        self._records.close()
