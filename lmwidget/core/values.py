"""The values a run is steered with, checked as given: lr and grad_clip."""

from __future__ import annotations

import math
import numbers


def is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def as_float(value) -> float:
    """`value` as the float that will be used (NaN when it is no number, or does not fit:
    10**400 overflows; Fraction(1, 10**400) becomes 0.0 and is judged as 0.0)."""
    if not is_number(value):
        return math.nan
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        return math.nan


def shown(value, as_float: float) -> str:
    """The value given, shortened, and what it became as a float where that is the reason."""
    text = repr(value)
    text = text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"
    if is_number(value) and math.isnan(as_float) and not isinstance(value, float):
        return f"{text} (too large for a float)"
    if is_number(value) and as_float == 0 and value != 0:
        return f"{text} (0.0 as a float)"
    return text


def check_lr(lr) -> float:
    value = as_float(lr)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"lr must be a finite number > 0 (for example 3e-3); got {shown(lr, value)}")
    return value


def check_grad_clip(grad_clip) -> float:
    value = as_float(grad_clip)
    if not math.isfinite(value) or value < 0 or (value == 0 and grad_clip != 0):  # not "off" by rounding
        raise ValueError(f"grad_clip must be a finite number >= 0 (0 turns clipping off); "
                         f"got {shown(grad_clip, value)}")
    return value
