"""ScriptJob: a run trained on your script's own thread, served to notebooks from a thread beside it until it ends."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from pathlib import Path

import torch.distributed as dist

from lmwidget.core.callbacks import Callback
from lmwidget.remote.job import Job
from lmwidget.remote.rundir import RankLog
from lmwidget.writers.tensorboard import write_tensorboard

FLUSH = 0.25     # s between two writes of a rank's events (ranks other than 0)
LAST_WORD = 10.0  # s the end waits for the server to publish it


def default_run_dir(sync=None) -> Path:
    """`lmwidget-runs/run-<time>-<pid>`, rank 0's on every rank."""
    path = os.path.join("lmwidget-runs", f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    if sync is not None:
        box = [path]
        dist.broadcast_object_list(box, src=0, group=sync.cpu_group)
        path = box[0]
    return Path(path).expanduser().resolve()


class ScriptJob:
    """Serves `source`, trained by your script on its own thread, to notebooks: on rank 0 a
    thread answers their signed requests and publishes the record (the same record
    `python -m lmwidget train` writes, so `lmwidget.attach(run_dir)` shows it); on the other
    ranks a thread writes the rank's events. The script's end is the run's end: a return
    (`finish`), an exception that nothing caught, or the interpreter's exit.

    Args:
        source: the run (a Loop, an HFRun, a LightningRun) trained on the script's thread.
        run_dir: the run directory (None: `lmwidget-runs/run-<time>-<pid>`).
        sync: the ranks of a distributed job (every rank makes its ScriptJob), or None.
        ip: the address rank 0 binds (127.0.0.1: this machine only).
        announce: where rank 0 prints where to attach (None: nowhere).
        tensorboard: a directory where rank 0 writes TensorBoard event files while it trains.

    Raises:
        ValueError, OSError: a run directory that cannot be used.
        ImportError: `tensorboard` given without the tensorboard package.
    """

    def __init__(self, source, run_dir=None, *, sync=None, ip: str = "127.0.0.1", announce=sys.stdout,
                 tensorboard=None):
        self.source, self.sync = source, sync
        main = sync is None or sync.is_main
        self.writer = write_tensorboard(source, tensorboard) if main and tensorboard is not None else None
        self.run_dir = Path(run_dir).expanduser().resolve() if run_dir is not None else default_run_dir(sync)
        self.main = sync is None or sync.is_main
        self.job = Job(source, self.run_dir, sync=sync, ip=ip) if self.main else None
        self._log = None if self.main else RankLog(source, self.run_dir, sync.rank)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve if self.main else self._flush, daemon=True,
                                        name="lmwidget-job" if self.main else "lmwidget-rank-log")
        self._thread.start()
        self._previous_hook = sys.excepthook
        sys.excepthook = self._uncaught
        atexit.register(self.finish)
        if self.main and announce is not None:
            world = 1 if sync is None else sync.world_size
            announce.write(f"lmwidget job: {source.describe()['model']} on {source.device} x{world}; "
                           f"run dir {self.run_dir}\n  attach from a notebook: "
                           f"lmwidget.attach({str(self.run_dir)!r})\n")
            announce.flush()

    @property
    def connection_file(self) -> Path | None:
        """Rank 0's connection file (None on the other ranks)."""
        return None if self.job is None else self.job.connection_file

    def _serve(self) -> None:
        try:
            self.job.serve()
        except BaseException as e:  # the serving side broke: the run is stopped, not left unwatched
            self.source.stop(f"the job's server failed: {type(e).__name__}: {e}")
        finally:
            self.job.close()
            self._done.set()

    def _flush(self) -> None:
        try:
            while not (self.source.ended and not self.source.alive):
                self._log.flush()
                time.sleep(FLUSH)
        finally:
            self._log.close()
            self._done.set()

    def finish(self, error: BaseException | None = None) -> None:
        """The script's training is over (`error`: it raised): the run ends, and the job
        publishes its end before this returns. Called again, it does nothing."""
        atexit.unregister(self.finish)
        if sys.excepthook == self._uncaught:
            sys.excepthook = self._previous_hook
        if not self.source.ended:
            if isinstance(error, KeyboardInterrupt):
                self.source.stop("KeyboardInterrupt")
                error = None
            self.source.end(error)
        if self._thread is not threading.current_thread():
            self._done.wait(LAST_WORD)
        if self.writer is not None:
            self.writer.close()  # the rest of the record, in files closed before the process goes

    def _uncaught(self, kind, error, tb) -> None:
        """The script failed: the run ends failed (the notebooks see why), then Python reports it."""
        self.finish(error)
        self._previous_hook(kind, error, tb)


class EndsJob(Callback):
    """A callback of your loop: its end (`run.end()`, or `with run:`) waits until its job has
    published that end, so a script that goes on, or exits, leaves a complete record."""

    def __init__(self):
        self.job: ScriptJob | None = None

    def on_train_end(self, run) -> None:
        if self.job is not None:
            self.job.finish()
