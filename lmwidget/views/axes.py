"""Axes a person reads at a glance: round ticks (1, 2, 5 x 10^k), domains that start at 0
for steps, time and quantities that cannot be negative, and a constant drawn inside."""

from __future__ import annotations

import math

import numpy as np

MAX_TICKS = 6  # more than this on a 260 px chart and the labels crowd
LOG_PAD = 0.06  # a log axis' margin above and below its data, as a fraction of the decades shown


def nice_step(span: float, n: int = 5) -> float:
    """The round step (1, 2 or 5 x 10^k) that cuts `span` into about `n` parts or fewer."""
    if not span > 0 or not math.isfinite(span):
        return 1.0
    raw = span / n
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * magnitude >= raw * (1 - 1e-9):
            return m * magnitude
    return 10 * magnitude


def linear_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> np.ndarray:
    """Round values from lo to hi, at most about n + 1 of them."""
    step = nice_step(hi - lo, n)
    if integer:
        step = max(1.0, step)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    ticks = np.arange(first, last + 1) * step
    return np.round(ticks, 12)


def log_ticks(lo: float, hi: float) -> np.ndarray:
    """Round values on a log axis from lo to hi (both > 0): the densest of 1..9 x 10^k,
    1-2-5 x 10^k and whole decades that gives 2 to MAX_TICKS ticks (decades thinned out on a
    wide range); within less than a factor of ~2, round linear values."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    sparsest = None
    for mantissas in (range(1, 10), (1, 2, 5), (1,)):
        ticks = np.array([m * 10.0 ** k for k in range(k0, k1 + 1) for m in mantissas])
        ticks = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
        if 2 <= len(ticks) <= MAX_TICKS:
            return ticks
        if len(ticks) > MAX_TICKS:
            sparsest = ticks
    if sparsest is not None:  # many decades: every other one, and so on
        while len(sparsest) > MAX_TICKS:
            sparsest = sparsest[::2]
        return sparsest
    return linear_ticks(lo, hi, 3)


def y_domain(lo: float, hi: float, log: bool = False, zero: bool = False, span: float = 0.0,
             limit: float | None = None) -> tuple[float, float, np.ndarray]:
    """(min, max, ticks) of a value axis showing data from lo to hi. `zero`: the quantity
    cannot be negative, so the axis starts at 0. A constant sits in the middle. `span`: a
    log axis reaches at most this factor below the data's top (a cosine schedule's end near
    0 would squash the rest); 0: down to the data. `limit`: the axis' top when the data stay
    below it (a percentage: 0 to 100, not 150)."""
    if log:
        if not (hi > 0):
            lo, hi = 0.1, 10.0
        lo = lo if lo > 0 else hi
        if span > 1:
            lo = max(lo, hi / span)
        if hi / lo < 1.0001:  # a constant: half a decade either side
            lo, hi = lo / 10 ** 0.5, hi * 10 ** 0.5
        else:  # a margin of the decades shown: a line at either end stays off the frame
            pad = 10 ** max(LOG_PAD * math.log10(hi / lo), math.log10(1.05))
            lo, hi = lo / pad, hi * pad
        return lo, hi, log_ticks(lo, hi)
    top = hi
    if zero:
        lo = min(0.0, lo)
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1e-30):  # a constant
        pad = abs(hi) * 0.5 if hi != 0 else 1.0
        lo, hi = (0.0 if zero and lo >= 0 else lo - pad), hi + pad
    step = nice_step(hi - lo, 4)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    if zero:
        lo = max(lo, 0.0) if lo >= 0 else lo
    if limit is not None and lo < limit < hi and top <= limit:
        hi = limit
    return lo, hi, linear_ticks(lo, hi, 4)


X_PAD = 0.04  # the step axis runs this fraction past the data: the last tick and dot stay inside


def x_domain(last: float, integer: bool = True) -> tuple[float, float, np.ndarray]:
    """(0, max, ticks) of a step or time axis whose data reach `last`: the axis ends a little
    past the data (X_PAD), so that neither the last tick's label nor a dot at the last step
    sits on the axis' end; the ticks stop at the data."""
    hi = max(float(last), 1.0)
    return 0.0, hi * (1 + X_PAD), linear_ticks(0.0, hi, 5, integer=integer)


def tick_label(value: float) -> str:
    """A tick as a person writes it: 0, 0.6, 2.5, 100, 40,000, 1e-04 (never 4e+04)."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1e-3:
        return f"{value:.4g}"
    short = f"{value:.0e}"
    return short if float(short) == float(f"{value:.1e}") else f"{value:.1e}"


def finite_range(*arrays) -> tuple[float, float] | None:
    """The smallest and largest finite value among the arrays, or None."""
    lo, hi = math.inf, -math.inf
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        a = a[np.isfinite(a)]
        if len(a):
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    return (lo, hi) if lo <= hi else None
