"""Saving a run: the saves asked for, periodic, best and final, each written between two steps."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import threading
import time
from pathlib import Path

import torch

from .files import BEST, PERIODIC, SAVED, prune, write
# what callers import from here too: the file format, and the options a checkpoint keeps
from .files import FORMAT, VERSION, digest, read, resolve, save_to  # noqa: F401
from .loading import CheckpointError, check_fits  # noqa: F401
from .options import FIXED, config_state, tokenizer_of, tokenizer_state  # noqa: F401


class PendingSave:
    """One save asked for: where, and (once written) the outcome, for whoever waits on it.

    Args:
        path: a file, or a directory to save into; None for the run's checkpoint_dir.
        memory: no file: the result's "payload" is a copy of the checkpoint (a branch).

    Raises:
        TypeError: `path` is neither None, a str nor an os.PathLike.
    """

    def __init__(self, path=None, memory: bool = False):
        self.memory = memory
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike (a file, or a directory to save "
                            f"into), or None for the run's checkpoint_dir; got {type(path).__name__}")
        self.path = path
        self.result: dict | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def finish(self, result: dict | None = None, error: BaseException | None = None) -> None:
        """Answer whoever waits: with the save's `result`, or the `error` that prevented it."""
        self.result, self.error = result, error
        self._done.set()

    def wait(self, timeout: float | None) -> dict:
        """Block until the save is written.

        Args:
            timeout: seconds to wait at most; None waits as long as it takes.

        Returns:
            The save's result ({"step", "kind", "path", "bytes", "seconds"} for a file).

        Raises:
            TimeoutError: not written within `timeout` (it still will be).
            BaseException: the error that prevented the save, as raised where it was written.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"not done within {timeout} s (the training step may be slow); a "
                               f"save is still written at the next step boundary")
        if self.error is not None:
            raise self.error
        return self.result




class Checkpointer:
    """The run's saves: asked for (run.save, the Save button), periodic, best, and final.

    Every save happens on the training thread between two steps, or on the caller's thread
    once the loop has ended, so the state written is always one consistent step. A failed
    periodic or best save does not stop training: it is recorded as the last outcome (the
    dashboard shows it) and as a checkpoint event.
    """

    def __init__(self, trainer, directory: Path):
        self.trainer = trainer
        self.directory = Path(directory)
        self.saved: list[dict] = []   # every checkpoint written: step, kind, path, bytes, seconds
        self.last: tuple | None = None  # ("ok", result) or ("error", message): the newest outcome
        self.best = float("inf")      # the lowest validation loss saved to best.pt
        self._periodic_at = None      # the step of the newest periodic save
        self._periodic: list[Path] = []  # the periodic files this run wrote, oldest first
        self._written: set[Path] = set()  # every file this run wrote (it may replace those)
        self._due: list[str] = []     # saves due at the next step boundary
        self._asked: list[PendingSave] = []
        self._lock = threading.Lock()
        self.writes = True  # False on a torchrun job's other ranks: rank 0 writes for them all
        # the state a save writes, made ready once for the saves inside it; under FSDP the
        # trainer's gathered(), a collective every rank enters at the same step boundary
        self.gathered = contextlib.nullcontext

    def ask(self, pending: PendingSave) -> PendingSave:
        """Queue a save to be written at the next step boundary (any thread)."""
        with self._lock:
            self._asked.append(pending)
        return pending

    def run_jobs(self) -> None:
        """Write every save asked for (called between steps, or after the loop ended)."""
        with self._lock:
            asked, self._asked = self._asked, []
        try:
            with self.gathered():  # on every rank, even one with nothing asked: rank 0 decided
                self._write_asked(asked)
        except Exception as e:  # the state could not be had (under FSDP, once the ranks part)
            for pending in asked:  # each write answers its own errors: these were not tried
                if not pending._done.is_set():
                    pending.finish(error=e)
            raise

    def _write_asked(self, asked: list) -> None:
        for pending in asked:
            try:
                pending.finish(self.copy() if pending.memory else self.save("saved", pending.path))
            except BaseException as e:
                self._failed("branch" if pending.memory else "saved", e)
                pending.finish(error=e)
                if not isinstance(e, Exception):
                    raise

    def cancel(self, error: BaseException) -> None:
        """The loop failed: saves still asked for are answered with why (none waits forever)."""
        with self._lock:
            asked, self._asked = self._asked, []
        for pending in asked:
            what, again = ("branch", "run.branch()") if pending.memory else ("checkpoint", "run.save()")
            pending.finish(error=RuntimeError(
                f"the run failed at step {self.trainer.step} before this {what} was taken "
                f"({error!r}); {again} again to take it from the run as it is now"))

    def after_step(self, step: int, val_loss) -> None:
        """Note the saves this step calls for; they are written at the next step boundary,
        once the requests made during the step (a callback's new LR) are applied."""
        cfg = self.trainer.config
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self._due.append("periodic")
        if cfg.save_best and val_loss is not None:
            value = float(val_loss)  # waits for the evaluation: only at eval steps, only when asked
            if value < self.best:
                self.best = value
                self._due.append("best")

    def write_due(self) -> None:
        if not self._due:  # every step boundary asks: nothing to allocate in the usual case
            return
        due, self._due = self._due, []
        with self.gathered():
            for kind in due:
                self._quietly(kind)

    def at_end(self) -> None:
        """The saves still due, and for a run with periodic saves one where it ended."""
        self.write_due()
        step = self.trainer.step
        if self.trainer.config.checkpoint_every and step and self._periodic_at != step:
            with self.gathered():
                self._quietly("periodic")

    def _quietly(self, kind: str) -> None:
        try:
            self.save(kind)
        except Exception as e:
            self._failed(kind, e)

    def _failed(self, kind: str, error: Exception) -> None:
        message = f"{kind} save at step {self.trainer.step} failed: {error}"
        self.last = ("error", message)
        self.trainer.history.record_event(self.trainer.step, "checkpoint", None, message)

    def copy(self) -> dict:
        """The checkpoint as a copy in memory (through the same safe round trip as a file),
        and for a user's own module a copy of it to load the weights into."""
        buffer = io.BytesIO()
        torch.save(self.trainer.checkpoint("branch"), buffer)
        buffer.seek(0)
        payload = torch.load(buffer, map_location="cpu", weights_only=True)
        model = self.trainer.model
        own = model if self.trainer.config.model is None else None  # a module of yours
        return {"payload": payload, "step": payload["step"],
                "model": copy.deepcopy(own) if own is not None else None}

    def path_for(self, kind: str, path=None) -> Path:
        step = self.trainer.step
        if path is None:
            directory, name = self.directory, None
        else:
            trailing = os.fspath(path).endswith(("/", os.sep))
            path = Path(path).expanduser()
            is_dir = trailing or path.is_dir()
            directory, name = (path, None) if is_dir else (path.parent, path.name)
        if name is not None:
            return directory / name
        target = directory / {"periodic": PERIODIC, "best": BEST}.get(kind, SAVED).format(step)
        n = 0
        while target.exists() and target not in self._written:  # another run's: keep it
            n += 1
            target = directory / f"{target.name.split('.')[0]}.{n}.pt"
        return target

    def save(self, kind: str, path=None) -> dict:
        """Write a checkpoint now; returns {"step", "kind", "path", "bytes", "seconds"}."""
        trainer = self.trainer
        if kind == "periodic":  # on every rank: each decides alike when the run ends
            self._periodic_at = trainer.step
        if not self.writes:
            return {"step": trainer.step, "kind": kind, "path": None, "bytes": 0, "seconds": 0.0}
        target = self.path_for(kind, path)
        t0 = time.perf_counter()
        size = write(trainer.checkpoint(kind), target)
        seconds = time.perf_counter() - t0
        result = {"step": trainer.step, "kind": kind, "path": str(target), "bytes": size,
                  "seconds": seconds}
        self._written.add(target)
        if kind == "periodic":
            if target not in self._periodic:
                self._periodic.append(target)
            prune(self._periodic, trainer.config.keep_checkpoints)
        self.saved.append(result)
        self.last = ("ok", result)
        trainer.history.record_event(trainer.step, "checkpoint", None,
                                     f"{kind}: {target} ({size / 1e6:.2f} MB in {seconds * 1e3:.0f} ms)")
        return result
