"""Branching: a new run from another's state at a step, with options changed, paused there until resumed."""

from __future__ import annotations

import time

from lmwidget.core.control import ENDED

from .resume import resume_config

SETTLE_S = 30  # s the branch's thread may take to restore the state and stop at its pause


def start_branch(parent, copied: dict, *, display: bool, callbacks, options: dict):
    """Start a run of the parent's class from `copied`, the parent's state in memory, and
    return it paused at that step (its thread has restored everything by then).

    Args:
        parent: the Run branched from (it goes on untouched; the branch is marked on it).
        copied: what a memory save of the parent gave: {"payload", "step", "model"}.
        display: show the branch's dashboard.
        callbacks: the branch's callbacks.
        options: the options that change (lr=...); those that shape the model or the data
            split cannot.

    Returns:
        The branch, paused: its Resume (or `branch.resume()`) starts it.
    """
    payload = copied["payload"]
    payload["path"] = f"run {parent.id} at step {copied['step']}"
    config = resume_config(payload, copied["model"], None, options)
    child = type(parent)(config, model=copied["model"], dataset=parent.dataset, callbacks=callbacks,
                         restore=payload)
    parent.record.record_event(copied["step"], "branch", None, f"run {child.id} branched here" + "".join(
        f", {k}={v!r}" for k, v in options.items()))
    child.control.pause()  # paused at the branch step until resumed
    child.start()
    deadline = time.monotonic() + SETTLE_S
    while child.state != "paused" and child.state not in ENDED and time.monotonic() < deadline:
        time.sleep(0.002)  # its thread restores the state, then stops at the pause
    if display:
        child.show()
    return child
