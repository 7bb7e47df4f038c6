"""TensorBoard event files written while a run trains: its scalars, events, samples, histograms and resources, read from its record about once a second."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from lmwidget.core.schema import BY_NAME
from lmwidget.system import shutdown

INTERVAL = 1.0  # s between two writes; a change of the run's state (a pause, the end) writes at once
INSTALL = "pip install tensorboard, or pip install 'lmwidget[export]'"


def summary_writer_class():
    """TensorBoard's writer class, torch.utils.tensorboard.SummaryWriter.

    Raises:
        ImportError: the tensorboard package is not installed (the message says how to install it).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(f"writing TensorBoard event files needs the tensorboard package, which is "
                          f"not installed here ({e}): {INSTALL}") from e
    return SummaryWriter


def check_logdir(logdir) -> Path:
    """`logdir` as a Path, checked: a str or a Path that is not an existing file.

    Raises:
        ValueError: it is not a path, or is an existing file.
    """
    if not isinstance(logdir, (str, os.PathLike)) or not str(logdir):
        raise ValueError(f"a TensorBoard logdir must be a directory's path (a str or Path); got {logdir!r}")
    path = Path(logdir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"the TensorBoard logdir {str(path)!r} is a file; event files go into a directory")
    return path


def _summary(values: list):
    """A Summary of (tag, value) scalars: one event for all of a step's, not one per value (an
    event costs ~80 µs to write, a value in it ~10 µs)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values])


class TensorBoardWriter:
    """Writes a source's record into TensorBoard event files in `logdir`, from a thread of its own.

    Each write (`write_new`) reads only what the record gained since the last one, from the
    record's host copies (the loop's pending device values are read in one transfer, here,
    never in the training step), so it costs the same at step 1,000 and at step 1,000,000:
    every metric with a TensorBoard tag in the schema (`loss/train`, `loss/val`, `lr`,
    `grad_norm`, `throughput/tokens_per_sec`, `bpb/train`, ...) and the user's own metrics
    (`user/<name>`) as scalars, non-finite values left out; events and samples as text; the
    histograms asked for (`weights/<layer>`, `grads/<layer>`); resource samples as
    `resources/<name>` scalars; the run's options once, as text. Each write is flushed, so
    TensorBoard shows it at its next reload.

    `start()` writes about once a second (at once when the run's state changes) until the
    source has ended, then writes what is left and closes the files; `close()` does that now.
    Without `start()`, `close()` writes everything once (an export after the fact).

    Args:
        source: the run (a Run, a Loop, a framework's run, a RemoteRun attached to a job).
        logdir: the directory of the event files (created if needed); give each run its own
            (`runs/tb/<name>`) for TensorBoard to draw them as separate runs.

    Raises:
        ImportError: the tensorboard package is not installed.
        ValueError: `logdir` is not a path, or is an existing file.
    """

    def __init__(self, source, logdir):
        self.logdir = check_logdir(logdir)
        self.source = source
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what ended the writing thread early, if anything
        self.closed = False
        self._writer = summary_writer_class()(log_dir=str(self.logdir))
        self._wake = threading.Event()
        self._closing = False
        self._lock = threading.Lock()  # one write at a time
        # how far each part of the record was written: each write reads only what is new
        self._rows = self._logged = self._events = self._samples = self._histograms = self._resources = 0
        self._t0 = None  # the wall-clock time of the run's clock's zero
        self._steps, self._times = np.zeros(0, np.int64), np.zeros(0)  # the newest rows' steps and times
        self._configured = False

    def start(self) -> "TensorBoardWriter":
        """Write in a daemon thread until the source ends (or `close()`); returns self.

        Raises:
            RuntimeError: it was started or closed already.
        """
        if self.thread is not None or self.closed:
            raise RuntimeError(f"this TensorBoard writer of {self.source.name} was started or closed already")
        self.source.watch(self._wake)
        self.thread = shutdown.start(self._loop, f"lmwidget-tensorboard-{self.source.id}", wake=self._wake.set)
        return self

    def _loop(self) -> None:
        try:
            while True:
                last = self.source.ended or self._closing or shutdown.exiting()  # read before the write
                self.write_new()
                if last:
                    return
                self._wake.wait(INTERVAL)
                self._wake.clear()
        except Exception as e:  # a full disk, a directory removed: kept for the caller, never printed
            self.error = e
        finally:
            self.source.unwatch(self._wake)
            with self._lock:
                self._writer.close()
                self.closed = True

    def close(self, timeout: float | None = 10.0) -> None:
        """Write what the record gained, then close the files (the thread, if started, ends).

        Args:
            timeout: seconds to wait for the thread's last write.
        """
        if self.thread is not None:
            self._closing = True
            self._wake.set()
            self.thread.join(timeout)
            return
        try:
            self.write_new()
        finally:
            with self._lock:
                self._writer.close()
                self.closed = True

    # -- one write ---------------------------------------------------------------------------
    def write_new(self) -> int:
        """Write what the record gained since the last write, and flush.

        Returns:
            How many steps' rows were written (0 once closed).
        """
        with self._lock:
            if self.closed:
                return 0
            source, record, writer = self.source, self.source.record, self._writer
            record.drain()  # the loop's pending device values, one transfer, on this thread
            if self._t0 is None:
                self._t0 = source.start_time
            if not self._configured:
                self._configured = True
                writer.add_text("config", code(json.dumps(source.options(), indent=1, default=str)), 0)
            n = self._write_rows(record.since(self._rows), record.metrics())
            self._write_logged(record.logged_since(self._logged), record.metrics())
            self._write_events(record.events_since(self._events))
            for step, text in self._take("_samples", record.samples_since(self._samples)):
                writer.add_text("samples", code(text), step, walltime=self._wall_at(step))
            self._write_histograms(self._take("_histograms", record.histograms_since(self._histograms)))
            self._write_resources(self._take("_resources", record.resources_since(self._resources)))
            writer.flush()
            return n

    def _take(self, cursor: str, new: list) -> list:
        setattr(self, cursor, getattr(self, cursor) + len(new))
        return new

    def _wall(self, t):
        """The wall-clock time of the run's clock reading `t` (None: now)."""
        return None if self._t0 is None or not np.isfinite(t) else self._t0 + float(t)

    def _wall_at(self, step: int):
        """The wall-clock time of `step`'s row among the newest rows (None: now)."""
        at = int(np.searchsorted(self._steps, step, side="right")) - 1
        return self._wall(self._times[max(at, 0)]) if len(self._steps) else None

    def _write_rows(self, cols: dict, metrics: list) -> int:
        """One event per step with every tagged column's finite value (derived ones included)."""
        n = len(cols["step"])
        if not n:
            return 0
        self._rows += n
        self._steps, self._times = cols["step"], cols["time"]
        tagged = [m for m in metrics if m.tag is not None and not m.resource and not m.user]
        tags = [m.tag for m in tagged]
        with np.errstate(invalid="ignore"):
            table = np.stack([np.asarray(cols[m.name] if m.derive is None else m.derive(cols), np.float64)
                              for m in tagged], axis=1)
        finite = np.isfinite(table).tolist()
        file_writer = self._writer.file_writer
        for step, t, values, ok in zip(cols["step"].tolist(), cols["time"].tolist(), table.tolist(), finite):
            file_writer.add_summary(_summary([(tag, v) for tag, v, f in zip(tags, values, ok) if f]),
                                    step, self._wall(t))
        return n

    def _write_logged(self, logged: list, metrics: list) -> None:
        """The user's own metrics (run.log): `user/<name>`."""
        self._logged += len(logged)
        tags = {m.name: m.tag for m in metrics if m.user}
        for step, name, value in logged:
            if np.isfinite(value) and tags.get(name):
                self._writer.add_scalar(tags[name], value, step, walltime=self._wall_at(step))

    def _write_events(self, events: list) -> None:
        """Events as text, one entry per step: "**kind** value detail" lines."""
        self._events += len(events)
        by_step: dict = {}
        for step, t, kind, value, detail in events:
            by_step.setdefault(int(step), []).append((t, kind, value, detail))
        for step in sorted(by_step):
            lines = [event_line(kind, value, detail) for _, kind, value, detail in by_step[step]]
            self._writer.add_text("events", "  \n".join(lines), step,
                                  walltime=self._wall(max(t for t, *_ in by_step[step])))

    def _write_histograms(self, histograms: list) -> None:
        """The weights' and gradients' histograms asked for: `weights/<layer>`, `grads/<layer>`."""
        for h in histograms:
            for part in ("weights", "grads"):
                counts = None if h.get(part) is None else np.asarray(h[part]["counts"], np.float64)
                if counts is None or not len(counts):
                    continue
                edges = np.asarray(h[part]["edges"], np.float64)
                centers = (edges[:-1] + edges[1:]) / 2
                self._writer.add_histogram_raw(
                    f"{part}/{h['group']}", min=edges[0], max=edges[-1], num=counts.sum(),
                    sum=float(counts @ centers), sum_squares=float(counts @ centers ** 2),
                    bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(),
                    global_step=int(h["step"]), walltime=self._wall_at(int(h["step"])))

    def _write_resources(self, samples: list) -> None:
        """Resource samples (CPU, memory, GPU): `resources/<name>`, at the step each was taken."""
        for t, step, sample in samples:
            values = [(BY_NAME[k].tag if k in BY_NAME else f"resources/{k}", float(v))
                      for k, v in sample.items() if v is not None and np.isfinite(v)]
            if values:
                self._writer.file_writer.add_summary(_summary(values), int(step), self._wall(t))


def event_line(kind: str, value, detail: str) -> str:
    """An event as a line of TensorBoard's text (markdown): "**kind** value detail"."""
    shown = "" if value is None or value != value else value
    return f"**{kind}** {shown} {detail}".strip()


def code(text: str) -> str:
    """Text shown as it is (a markdown code block), not as markdown."""
    return "    " + text.replace("\n", "\n    ")


def write_tensorboard(source, logdir) -> TensorBoardWriter:
    """Write `source`'s record as TensorBoard event files in `logdir` while it trains.

    About once a second, from a thread of its own, whatever the run recorded since is
    written and flushed (see TensorBoardWriter): `tensorboard --logdir` shows the run live.
    The writer ends by itself once the run has ended, after writing the rest.

    Args:
        source: any run: `train()`'s Run, `steer()`'s Loop, a Hugging Face or Lightning run,
            a RemoteRun (`attach()`) of a job. What it recorded before is written too.
        logdir: the directory of the event files (created if needed).

    Returns:
        The started TensorBoardWriter (`close()` ends it early).

    Raises:
        ImportError: the tensorboard package is not installed.
        ValueError: `logdir` is not a path, or is an existing file.
    """
    return TensorBoardWriter(source, logdir).start()
