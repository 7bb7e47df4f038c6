"""Smoothing of a drawn curve: TensorBoard's debiased exponential moving average."""

from __future__ import annotations

import math

import numpy as np

DEFAULT = 0.6  # TensorBoard's default weight


def check_weight(weight) -> float:
    weight = float(weight)
    if not 0.0 <= weight <= 0.99:
        raise ValueError(f"smoothing must be between 0 and 0.99; got {weight!r}")
    return weight


def ema(y, weight: float) -> np.ndarray:
    """The debiased exponential moving average of `y` (weight 0: `y` itself). Non-finite
    values are kept where they are and skipped by the average, so a gap stays a gap. Applied
    to the points a chart draws (at most a few thousand), once per redraw."""
    y = np.asarray(y, dtype=np.float64)
    if weight <= 0 or len(y) == 0:
        return y.copy()
    out = np.empty_like(y)
    last, n = 0.0, 0
    for i, v in enumerate(y.tolist()):
        if not math.isfinite(v):
            out[i] = v
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        out[i] = last / (1 - weight ** n)
    return out
