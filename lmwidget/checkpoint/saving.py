"""Checkpoints: a run's whole state in one file, written atomically, loaded without running code."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from pathlib import Path

import torch

from lmwidget.system import atomic
from . import loading as ckptcheck
from lmwidget.data import tokens
from .loading import CheckpointError, check_fits  # noqa: F401  (their callers import them from here)
from lmwidget.data.dataset import CharTokenizer

FORMAT = "lmwidget-checkpoint"
VERSION = 1
PERIODIC = "step-{:07d}.pt"   # every `checkpoint_every` steps; the newest `keep_checkpoints` stay
SAVED = "saved-{:07d}.pt"     # run.save() and the Save button, never pruned
BEST = "best.pt"              # the lowest validation loss so far
_STEP_FILE = re.compile(r"^(?:step|saved)-(\d+)(?:\.\d+)?\.pt$")  # .N: beside another run's file


def write(payload: dict, path) -> int:
    """Save `payload` to `path` atomically (atomic.write), with a digest of its contents, so
    damage is detected on load; returns the file's size in bytes. Temporaries of checkpoint
    saves into the same directory that were killed are removed once it is written."""
    path = Path(path)
    payload = dict(payload, digest=digest(payload))
    return atomic.write(path, lambda f: torch.save(payload, f),
                        lambda name: name in (path.name, BEST) or _STEP_FILE.match(name) is not None)


def read(path) -> dict:
    """Load a checkpoint, or a directory's newest one, without unpickling any code.

    Raises CheckpointError, naming the file, when it is damaged, truncated, modified after
    it was written, not an lmwidget checkpoint, or holds anything but tensors and plain
    values (which only an unsafe unpickler would turn into objects, running their code).
    """
    path = resolve(path)
    payload = ckptcheck.load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an lmwidget checkpoint (it has no format={FORMAT!r}): save one with "
            f"run.save(); a plain PyTorch file loads with torch.load(path, weights_only=True)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')!r}; "
                              f"this lmwidget reads version {VERSION}")
    stored = payload.pop("digest", None)
    if stored != digest(payload):
        raise CheckpointError(
            f"checkpoint {path} does not match the digest written with it: it was modified or "
            f"corrupted after it was saved. Nothing was loaded.")
    payload["path"] = str(path)
    return payload


def resolve(path) -> Path:
    """`path` itself, or for a directory its newest checkpoint (by step) of run.save() or
    the periodic saves; best.pt is used only when named."""
    path = Path(path).expanduser()
    if path.is_dir():
        steps = [(int(m.group(1)), p.stat().st_mtime, p) for p in path.iterdir()
                 if (m := _STEP_FILE.match(p.name))]
        if not steps:
            found = sorted(p.name for p in path.glob("*.pt"))
            raise FileNotFoundError(
                f"no checkpoint in directory {path} (looked for step-*.pt and saved-*.pt"
                + (f"; found {', '.join(found)}: name one of them" if found else "") + ")")
        return max(steps)[2]  # the highest step; of equal steps, the newest file
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: no such file or directory")
    return path


def prune(written: list[Path], keep: int) -> list[Path]:
    """Delete all but the newest `keep` of the periodic checkpoints in `written` (the files
    this run wrote: another run's files in the same directory are never touched)."""
    doomed = written[:-keep] if keep else []
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    del written[:len(doomed)]
    return doomed


def digest(obj) -> str:
    """SHA-256 of a payload's contents (structure, values and tensor bytes), independent of
    how the file lays them out."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj, where: str = "checkpoint") -> None:
    if isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for key in sorted(obj, key=repr):
            _feed(h, key, where)
            _feed(h, obj[key], f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):  # a tuple may come back as either
        h.update(b"[%d" % len(obj))
        for i, item in enumerate(obj):
            _feed(h, item, f"{where}[{i}]")
    elif torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"t{t.dtype}{tuple(obj.shape)}".encode())
        if t.numel():
            if t.stride(0) != 1:  # a one-element view may have stride 0
                t = torch.empty(t.numel(), dtype=t.dtype).copy_(t)
            h.update(t.view(torch.uint8).numpy())
    elif obj is None or type(obj) in (bool, int, float, str, bytes):  # exactly: a subclass
        # (torch.__version__ is one) would be pickled as a class, which loading refuses
        h.update(repr((type(obj).__name__, obj)).encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and plain values only; {where} is a "
                        f"{type(obj).__module__}.{type(obj).__name__}: {obj!r:.80}")


def save_to(payload: dict, path, directory, name: str) -> dict:
    """Write `payload` to `path` (a file, or a directory to save `name` into), or to
    `directory`/`name` when `path` is None; returns {"path", "kind", "bytes", "seconds"}."""
    if path is None:
        target = Path(directory) / name
    else:
        trailing = os.fspath(path).endswith(("/", os.sep))
        path = Path(path).expanduser()
        target = path / name if trailing or path.is_dir() else path
    t0 = time.perf_counter()
    size = write(payload, target)
    return {"path": str(target), "kind": payload.get("kind"), "bytes": size,
            "seconds": time.perf_counter() - t0}


class SaveJob:
    """One save asked for: where, and (once written) the outcome, for whoever waits on it."""

    def __init__(self, path=None, memory: bool = False):
        """`memory`: no file; the result's "payload" is a copy of the checkpoint (a branch)."""
        self.memory = memory
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike (a file, or a directory to save "
                            f"into), or None for the run's checkpoint_dir; got {type(path).__name__}")
        self.path = path
        self.result: dict | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def finish(self, result: dict | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._done.set()

    def wait(self, timeout: float | None) -> dict:
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
        self._jobs: list[SaveJob] = []
        self._lock = threading.Lock()
        self.writes = True  # False on a torchrun job's other ranks: rank 0 writes for them all

    def ask(self, job: SaveJob) -> SaveJob:
        with self._lock:
            self._jobs.append(job)
        return job

    def run_jobs(self) -> None:
        """Write every save asked for (called between steps, or after the loop ended)."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            try:
                job.finish(self.copy() if job.memory else self.save("saved", job.path))
            except BaseException as e:
                self._failed("branch" if job.memory else "saved", e)
                job.finish(error=e)
                if not isinstance(e, Exception):
                    raise

    def cancel(self, error: BaseException) -> None:
        """The loop failed: saves still asked for are answered with why (none waits forever)."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            what, again = ("branch", "run.branch()") if job.memory else ("checkpoint", "run.save()")
            job.finish(error=RuntimeError(
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
        for kind in due:
            self._quietly(kind)

    def at_end(self) -> None:
        """The saves still due, and for a run with periodic saves one where it ended."""
        self.write_due()
        step = self.trainer.step
        if self.trainer.config.checkpoint_every and step and self._periodic_at != step:
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
        import copy
        import io

        buffer = io.BytesIO()
        torch.save(self.trainer.checkpoint("branch"), buffer)
        buffer.seek(0)
        payload = torch.load(buffer, map_location="cpu", weights_only=True)
        model = self.trainer.model
        own = model if isinstance(self.trainer.config.model, torch.nn.Module) else None
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
            self._periodic_at = trainer.step
            if target not in self._periodic:
                self._periodic.append(target)
            prune(self._periodic, trainer.config.keep_checkpoints)
        self.saved.append(result)
        self.last = ("ok", result)
        trainer.history.record_event(trainer.step, "checkpoint", None,
                                     f"{kind}: {target} ({size / 1e6:.2f} MB in {seconds * 1e3:.0f} ms)")
        return result


# options a resumed run must keep: they shape the model's weights, the optimizer's state and
# the train/validation split the checkpoint holds
FIXED = ("n_layer", "n_head", "n_embd", "block_size", "optimizer", "val_fraction")


def config_state(config) -> dict:
    """The options as plain values for a checkpoint (the user's own model by class name only)."""
    import dataclasses

    out = {f.name: _plain_number(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(out["model"], torch.nn.Module):
        out["model"] = None
    if isinstance(out["data"], os.PathLike):
        out["data"] = os.fspath(out["data"])
    out["tokenizer"] = tokens.label(out["tokenizer"])  # the tokenizer itself is kept as JSON
    return out


def tokenizer_state(tokenizer) -> dict:
    """What a checkpoint keeps of its tokenizer: the characters (as 0.1 did), else its JSON."""
    return tokens.saved(tokenizer)


def tokenizer_of(payload: dict):
    """The tokenizer a checkpoint was trained with: characters (every version), or the JSON
    of a word, BPE or other tokenizer (0.2 on); a malformed one is refused naming the file."""
    where = f"checkpoint {payload['path']}" if payload.get("path") else "the checkpoint"
    return tokens.restored(payload, f"the tokenizer in {where}")


def _plain_number(value):
    """numpy and other number types as the Python int or float a checkpoint can hold."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def resume_config(payload: dict, model=None, data=None, options: dict | None = None):
    """The TrainConfig that continues a checkpoint: its options, its current LR and clip norm,
    with `options` overriding any but the FIXED ones."""
    from lmwidget.training.config import TrainConfig

    options = dict(options or {})
    if payload.get("source", "run") != "run":
        raise CheckpointError(f"checkpoint {payload['path']} was written by lmwidget.steer() (your own "
                              f"loop): resume it with lmwidget.steer(model, optimizer, ..., resume=path)")
    ckptcheck.check_keys(payload)
    path, saved, state = payload["path"], dict(payload["config"]), payload["trainer"]
    for name in FIXED:
        if name in options and options[name] != saved.get(name):
            raise ValueError(f"{name}={options[name]!r} differs from checkpoint {path}'s "
                             f"{name}={saved.get(name)!r}: a resumed or branched run keeps its model, "
                             f"optimizer and data split. Leave {name} out, or start a new run")
    if saved["model"] is None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"checkpoint {path} was trained with your own model "
                             f"{payload['model_class']}: pass model=<a {payload['model_class']} built "
                             f"the same way> to resume it")
    elif model is not None and model != saved["model"]:
        raise ValueError(f"model={model!r} differs from checkpoint {path}'s model "
                         f"{saved['model']!r}: leave model out to resume it")
    saved_tokenizer = tokenizer_of(payload)
    if "tokenizer" in options:
        given = options["tokenizer"]
        same = (given == saved.get("tokenizer", "char") if isinstance(given, str)
                else saved_tokenizer.same_as(tokens.load(given) if not isinstance(given, CharTokenizer) else given))
        if not same:
            raise ValueError(f"tokenizer={tokens.label(given)!r} differs from the tokenizer checkpoint {path} "
                             f"was trained with ({saved_tokenizer.describe()}): its token ids would mean "
                             f"other text. Leave tokenizer out: the checkpoint's own is restored")
    options["tokenizer"] = saved_tokenizer  # stored as JSON in the checkpoint: never trained again
    known = set(TrainConfig.option_names())
    # a resumed run saves into a directory of its own (a new one, unless given): resumed
    # from an older checkpoint it is a branch, whose files must not mix with the first's
    merged = {k: v for k, v in saved.items() if k in known and k != "checkpoint_dir"}
    merged.update(lr=state["base_lr"], grad_clip=state["grad_clip"])
    merged.update(options)
    if isinstance(model, torch.nn.Module):
        merged["model"] = model
    if data is not None:
        merged["data"] = data
    config = TrainConfig.from_options(**merged)
    ckptcheck.check_model(payload, config, saved_tokenizer.vocab_size)  # before anything is built
    if state["step"] >= config.max_steps:
        raise ValueError(f"checkpoint {path} is at step {state['step']}, and max_steps is "
                         f"{config.max_steps}: pass max_steps > {state['step']} (--steps) to train on")
    return config
