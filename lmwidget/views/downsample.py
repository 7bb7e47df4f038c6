"""Min/max downsampling: a growing series summarised in a bounded number of chart points."""

from __future__ import annotations

import numpy as np


class MinMaxSeries:
    """An incremental min/max summary of a growing (x, y) series in <= max_points points.

    Points fall into buckets of `width` consecutive samples; each bucket keeps its lowest
    and highest point, in x order, so spikes survive downsampling. When the buckets fill
    their budget, neighbours merge and the width doubles, so the bucket grid never depends
    on how the data arrived. Appending costs O(new points) amortised; `points()` costs
    O(max_points) however long the series. The newest point is always shown.
    """

    def __init__(self, max_points: int = 2000):
        if max_points < 8:
            raise ValueError(f"max_points must be at least 8; got {max_points}")
        # buckets (2 points each) plus the unfinished tail (its min, max and newest point)
        self._cap = (max_points - 3) // 2 // 2 * 2  # even, so a full set merges pairwise
        self.width = 1
        self._bx = np.empty((0, 2))  # per bucket: x of its two extremes, in order
        self._by = np.empty((0, 2))
        self._tx = np.empty(0)       # the tail: raw points not yet filling a bucket
        self._ty = np.empty(0)
        self._last = None            # the newest (x, y)

    def extend(self, x, y) -> None:
        tx = np.concatenate((self._tx, np.asarray(x, dtype=np.float64)))
        ty = np.concatenate((self._ty, np.asarray(y, dtype=np.float64)))
        pos = 0
        while len(tx) - pos >= self.width:
            k = min((len(tx) - pos) // self.width, self._cap - len(self._bx))
            n = k * self.width
            bx, by = _extremes(tx[pos:pos + n].reshape(k, self.width),
                               ty[pos:pos + n].reshape(k, self.width))
            self._bx = np.concatenate((self._bx, bx))
            self._by = np.concatenate((self._by, by))
            pos += n
            if len(self._bx) == self._cap:
                m = self._cap // 2
                self._bx, self._by = _extremes(self._bx.reshape(m, 4), self._by.reshape(m, 4))
                self.width *= 2
        self._tx, self._ty = tx[pos:], ty[pos:]
        if len(tx):
            self._last = (tx[-1], ty[-1])

    def points(self):
        """New contiguous float32 arrays (x, y), a point once where a bucket's extremes coincide;
        non-finite values (and values beyond float32) become NaN."""
        bx, by = self._bx, self._by
        if len(self._tx):
            tx, ty = _extremes(self._tx[None, :], self._ty[None, :])
            bx, by = np.concatenate((bx, tx)), np.concatenate((by, ty))
        keep = np.ones(bx.shape, dtype=bool)
        keep[:, 1] = bx[:, 1] != bx[:, 0]
        x, y = bx[keep], by[keep]
        if self._last is not None and self._last[0] != x[-1]:  # the newest, even if unremarkable
            x, y = np.append(x, self._last[0]), np.append(y, self._last[1])
        with np.errstate(over="ignore"):
            y = y.astype(np.float32)
        y[~np.isfinite(y)] = np.nan  # a gap in the line: an infinite value would break the axis
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def _extremes(x, y):
    """Per row: the points of lowest and highest y (NaN-safe), ordered by x."""
    rows = np.arange(len(y))
    nan = np.isnan(y)
    lo = np.where(nan, np.inf, y).argmin(axis=1)
    hi = np.where(nan, -np.inf, y).argmax(axis=1)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    return (np.stack((x[rows, first], x[rows, second]), axis=1),
            np.stack((y[rows, first], y[rows, second]), axis=1))
