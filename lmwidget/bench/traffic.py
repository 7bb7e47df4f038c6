"""What the dashboard sends: a comm that counts each widget message's bytes, each chart's share of a redraw, and one chart update at any run length."""

from __future__ import annotations

import json
import statistics
import time

import bqplot as bq
import comm
import numpy as np

from lmwidget.core.palette import BLUE
from lmwidget.views.charts import Chart

SCALING_SIZES = (1_000, 10_000, 100_000, 1_000_000)


class CountingComm(comm.base_comm.BaseComm):
    """A comm with no frontend: it counts the bytes of every widget message it would send."""

    log: list = []  # (widget comm id, bytes) of each state update

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        if msg_type == "comm_msg":
            size = len(json.dumps(data, default=str)) + sum(memoryview(b).nbytes for b in buffers or [])
            CountingComm.log.append((self.comm_id, size))


def install_counting_comm() -> None:
    comm.create_comm = CountingComm


def chart_update_bytes(dashboard, log) -> list[int]:
    """Bytes each chart sent in one redraw, given that redraw's (comm id, bytes) messages."""
    owner = {}
    for name, chart in dashboard.charts.items():
        for mark in (*chart.marks.values(), *chart.extra.values(), chart.rules, chart.figure):
            owner[mark.comm.comm_id] = name
    sizes = {}
    for comm_id, size in log:
        if comm_id in owner:
            sizes[owner[comm_id]] = sizes.get(owner[comm_id], 0) + size
    return list(sizes.values())


def scaling(sizes=SCALING_SIZES, new_points: int = 100, repeats: int = 20) -> list[dict]:
    """Bytes and time to prepare one chart update after `n` steps, for each n in `sizes`."""
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        chart = Chart("loss", bq.LinearScale(), {"train": (BLUE, None)}, "bench")
        y = 4.0 + np.cumsum(rng.standard_normal(n + new_points * repeats)) * 0.01
        x = np.arange(1, len(y) + 1, dtype=np.float64)
        chart.extend("train", x[:n], y[:n])
        times, sizes_ = [], []
        for r in range(repeats):
            lo, hi = n + r * new_points, n + (r + 1) * new_points
            del CountingComm.log[:]
            t = time.perf_counter()
            chart.extend("train", x[lo:hi], y[lo:hi])
            chart.draw(["train"])
            times.append(time.perf_counter() - t)
            sizes_.append(sum(size for _, size in CountingComm.log))
        rows.append({"steps": n, "points_sent": len(chart.marks["train"].x),
                     "bytes": max(sizes_), "prepare_ms": 1e3 * statistics.median(times)})
    return rows
