"""What a checkpoint of lmwidget's own loop holds (weights, optimizer, RNG streams, callbacks, history), and its restore."""

from __future__ import annotations

import time

import torch

from lmwidget.checkpoint.saving import FORMAT, VERSION, CheckpointError, check_fits, config_state, tokenizer_state
from lmwidget.models.hf import unwrap
from lmwidget.version import __version__

# the optimizer's implementation flags: a restored optimizer keeps this run's own
IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


def payload(trainer, kind: str) -> dict:
    """Everything needed to continue `trainer`'s run exactly, as tensors and plain values.

    Args:
        trainer: lmwidget's loop (a BuiltinLoop).
        kind: why it is written ("saved", "periodic", "best", "branch").

    Returns:
        The checkpoint, as checkpoint.write takes it.
    """
    return {"format": FORMAT, "version": VERSION, "lmwidget": __version__,
            "torch": str(torch.__version__), "saved_at": time.time(), "kind": kind,
            "step": trainer.step, "config": config_state(trainer.config, trainer.data.tokenizer),
            "model_class": type(unwrap(trainer.model)).__name__, **tokenizer_state(trainer.data.tokenizer),
            "data_sha256": trainer.data.fingerprint(), "trainer": state_dict(trainer),
            "history": trainer.history.state_dict()}


def state_dict(trainer) -> dict:
    """The loop's own state: step, steered LR and clip norm, weights, optimizer, RNG streams,
    the last anomaly, the best validation loss saved, and each callback's state."""
    # running, a save is written by the loop between two steps: the live RNG states are
    # this step's. Paused or ended, other code may have drawn since: the loop's snapshot
    live = trainer.state == "running" and trainer.started is not None and not trainer.control.closed
    if live:  # on the loop's thread, between steps: settle the steps still being checked
        trainer.poll_guard(wait=True)
    return {"step": trainer.step, "base_lr": trainer.base_lr, "grad_clip": trainer.grad_clip,
            "state": trainer.state, "model": unwrap(trainer.model).state_dict(),
            "optimizer": trainer.optimizer.state_dict(), "rng": trainer.streams.state(live),
            "anomaly": list(trainer.anomaly) if trainer.anomaly else None,
            "best_val_loss": trainer.checkpointer.best,
            "callbacks": [[type(cb).__name__, cb.state_dict() if callable(getattr(cb, "state_dict", None))
                           else None] for cb in trainer.callbacks.items]}


def restore(trainer, saved: dict) -> None:
    """Put a checkpoint (checkpoint.read) back into `trainer` before its loop starts,
    refusing weights or an optimizer state that do not fit, naming the file."""
    state, path = saved["trainer"], saved["path"]
    model = unwrap(trainer.model)
    check_fits(model, state["model"], path)  # before anything is copied into it
    optimizer = trainer.optimizer
    flags = [{k: g[k] for k in IMPLEMENTATION if k in g} for g in optimizer.param_groups]
    try:  # first: it checks the groups and leaves the model's weights alone
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"the optimizer state in checkpoint {path} does not fit this "
                              f"model's parameters: {e}") from None
    model.load_state_dict(state["model"])
    for group, kept in zip(optimizer.param_groups, flags):
        group.update(kept, weight_decay=trainer.config.weight_decay)
        if "momentum" in group:
            group["momentum"] = trainer.config.momentum
    trainer.step = int(state["step"])
    trainer.streams.load(state["rng"])
    trainer.steering.anomaly = tuple(state["anomaly"]) if state["anomaly"] else None
    trainer.checkpointer.best = float(state["best_val_loss"])
    trainer.callback_states = state["callbacks"]
    history = trainer.history
    history.load_state_dict(saved["history"])
    for step, text in state.get("samples", ()):  # lmwidget 0.1.0 kept them with the trainer
        history.add_sample(step, text)
    if trainer.spikes is not None:
        trainer.spikes.prime(history.since(0))
    trainer.clock0 = float(saved["history"]["clock"])
    trainer.restored_from = path


def check_data(dataset, data, saved: dict) -> None:
    """Refuse to resume `saved` on other tokens than it was trained on (`data`: the option)."""
    if dataset.fingerprint() != saved["data_sha256"]:
        given = f"(a str of {len(data)} characters)" if isinstance(data, str) and len(data) > 60 else repr(data)
        raise CheckpointError(f"the data {given} is not what checkpoint {saved['path']} was trained on "
                              f"(its tokens differ), so resuming would not continue that run: pass the "
                              f"original data")


def restore_callbacks(callbacks, states: list) -> None:
    """Give the callbacks passed again on resume (same class, same place) their saved state."""
    for cb, (name, state) in zip(callbacks.items, states):
        if state is not None and type(cb).__name__ == name and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(state)
