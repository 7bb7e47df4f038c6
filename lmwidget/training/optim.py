"""What a TrainConfig names, as torch objects: its optimizer, its LR schedule, its device."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def make_optimizer(config: TrainConfig, params, fused: bool = True) -> torch.optim.Optimizer:
    """The configured optimizer; fused (one kernel per step, and it can skip a step on the
    device) where every parameter allows it, unless `fused=False`."""
    params = list(params)
    kwargs = dict(lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        kwargs["momentum"] = config.momentum
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[config.optimizer]
    if fused:
        try:
            return cls(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass  # a dtype or device the fused kernels do not take: the guard reads values instead
    return cls(params, **kwargs)


def lr_factor(config: TrainConfig, step: int) -> float:
    """The schedule's multiplier of the base LR at `step` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.schedule == "cosine":
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_lr_ratio ** progress  # exponential


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
