"""What a checkpoint of your own loop holds (model, optimizer, scheduler, step, history), and its restore."""

from __future__ import annotations

import time

import torch

from lmwidget.checkpoint.saving import FORMAT, VERSION, CheckpointError, check_fits
from lmwidget.version import __version__

SOURCE = "loop"  # a checkpoint's "source": what wrote it, and so what resumes it


def payload(loop, kind: str) -> dict:
    """Everything needed to continue `loop` at its step, as tensors and plain values."""
    return {"format": FORMAT, "version": VERSION, "lmwidget": __version__, "source": SOURCE,
            "torch": str(torch.__version__), "saved_at": time.time(), "kind": kind, "step": loop.step,
            "model_class": type(loop.model).__name__, "model": loop.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "lr_scheduler": None if loop.lr_scheduler is None else loop.lr_scheduler.state_dict(),
            "grad_clip": loop.grad_clip, "history": loop.record.state_dict()}


def restore(loop, saved: dict) -> None:
    """Put `saved` (checkpoint.read) back into `loop` before its first step, refusing what
    does not fit with the file's name and what differs."""
    path = saved["path"]
    if saved.get("source") != SOURCE:
        raise CheckpointError(f"checkpoint {path} was written by lmwidget's own loop, not by "
                              f"lmwidget.steer(): resume it with lmwidget.train(resume=...)")
    missing = [k for k in ("model", "optimizer", "lr_scheduler", "step", "history") if k not in saved]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written by "
                              f"lmwidget.steer()'s save")
    check_fits(loop.model, saved["model"], path)
    if (saved["lr_scheduler"] is None) != (loop.lr_scheduler is None):
        has = "has" if saved["lr_scheduler"] is not None else "has no"
        raise CheckpointError(f"checkpoint {path} {has} LR scheduler state, and this loop "
                              f"{'has none' if loop.lr_scheduler is None else 'has one'}: pass the "
                              f"same kind of scheduler (or none) as when it was saved")
    try:
        loop.optimizer.load_state_dict(saved["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"the optimizer state in checkpoint {path} does not fit this "
                              f"optimizer's parameters: {e}") from None
    loop.model.load_state_dict(saved["model"])
    if loop.lr_scheduler is not None:
        loop.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    loop.step = int(saved["step"])
    loop.record.load_state_dict(saved["history"])
    loop.tokens_seen = int(loop.record.last("tokens", 0))
    loop.steering.clock0 = float(saved["history"]["clock"])
    loop.record.record_event(loop.step, "restore", None, f"resumed from {path}")
