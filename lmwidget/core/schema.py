"""The metric schema: every column of a run's history and every chart, declared once.

History, the dashboard, compare, the static summary, the exports, the job's stream and
checkpoints all iterate these declarations; nobody lists columns by hand. A new metric is
one `Metric` here and the line of the loop that computes it. Metrics a user logs
(`run.log(name=value)`) are declared on the fly by `user_metric`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .palette import AMBER, BLUE, BROWN, GREEN, INDIGO, OLIVE, ORANGE, PINK, PURPLE, SLATE, TEAL

NAN = float("nan")


@dataclass(frozen=True)
class Chart:
    """One chart of the dashboard (and of compare and the static summary)."""

    key: str
    title: str
    unit: str = ""           # the value axis' label
    log: bool = False        # a log axis
    tick_format: str = ".3~g"
    zero: bool = False       # the quantity cannot be negative: its axis starts at 0
    smooth: bool = False     # noisy from step to step: drawn smoothed over the faint raw curve
    optional: bool = False   # not every source measures it: shown once it has a value
    span: float = 0.0        # a log axis reaches at most this factor below its top (0: all the data)


@dataclass(frozen=True)
class Metric:
    """One column of a run's history."""

    name: str
    unit: str = ""
    on_device: bool = False  # pushed by the loop as a device tensor, read in one transfer
    chart: str | None = None  # the Chart (key) it is drawn on; None: kept, not drawn
    label: str = ""          # its series' name on that chart
    title: str = ""          # its own chart's title where it is drawn alone (compare)
    color: str = BLUE
    tag: str | None = None   # its TensorBoard tag; None: not exported there
    default: float = NAN     # its value in records written before it existed
    dtype: type = np.float64
    sparse: bool = False     # only at some steps (an evaluation): drawn as dots
    derive: Callable | None = None  # computed from the stored columns, never stored
    resource: bool = False   # sampled about once a second; each step shows the latest sample
    compare: bool = False    # overlaid by compare()
    summary: bool = False    # drawn by the static summary and the HTML export
    user: bool = False       # logged by the user with run.log()

    @property
    def stored(self) -> bool:
        """A column the loop pushes (not derived, not a resource sample, not the user's)."""
        return self.derive is None and not self.resource and not self.user


def _exp(name: str):
    def derive(columns: dict) -> np.ndarray:
        with np.errstate(over="ignore"):  # a diverged loss has an infinite perplexity
            return np.exp(columns[name])
    return derive


CHARTS = {c.key: c for c in (
    Chart("loss", "loss", "nats/token", smooth=True),
    Chart("perplexity", "perplexity", log=True, smooth=True),
    Chart("bpb", "bits per byte", "bits/byte", smooth=True, optional=True),  # needs the data's bytes per token
    Chart("grad_norm", "grad norm (before clipping)", log=True, tick_format=".2~g"),
    Chart("lr", "learning rate", log=True, tick_format=".1~e", span=1e3),  # a cosine's end near 0 is cut off
    Chart("throughput", "tokens / s", "tokens/s", tick_format=".3~s", zero=True, smooth=True, optional=True),
)}

COLUMNS = (
    Metric("step", dtype=np.int64, default=0),
    Metric("tokens", "tokens", dtype=np.int64, default=0),
    Metric("time", "s"),
    Metric("loss", "nats/token", on_device=True, chart="loss", label="train", tag="loss/train",
           compare=True, summary=True),
    Metric("perplexity", chart="perplexity", label="train", tag="perplexity/train", derive=_exp("loss")),
    Metric("grad_norm", on_device=True, chart="grad_norm", label="grad_norm", color=GREEN,
           tag="grad_norm", compare=True, summary=True),
    Metric("lr", chart="lr", label="lr", color=PURPLE, tag="lr", compare=True, summary=True),
    Metric("tokens_per_sec", "tokens/s", chart="throughput", label="tokens_per_sec", color=SLATE,
           tag="throughput/tokens_per_sec", summary=True),
    Metric("step_time", "s", tag="throughput/step_time"),
    Metric("val_loss", "nats/token", on_device=True, chart="loss", label="val", title="validation loss",
           color=ORANGE,
           tag="loss/val", sparse=True, compare=True, summary=True),
    Metric("val_perplexity", chart="perplexity", label="val", color=ORANGE, tag="perplexity/val",
           sparse=True, derive=_exp("val_loss")),
    Metric("bpb", "bits/byte", on_device=True, chart="bpb", label="train", title="bits per byte",
           tag="bpb/train", summary=True),
    Metric("val_bpb", "bits/byte", on_device=True, chart="bpb", label="val", title="validation bits per byte",
           color=ORANGE, tag="bpb/val", sparse=True, summary=True),
    Metric("cpu_percent", "%", resource=True, tag="resources/cpu_percent"),
    Metric("rss_mb", "MB", resource=True, tag="resources/rss_mb"),
    Metric("gpu_util", "%", resource=True, tag="resources/gpu_util"),
    Metric("gpu_mem_mb", "MB", resource=True, tag="resources/gpu_mem_mb"),
    Metric("gpu_temp_c", "°C", resource=True, tag="resources/gpu_temp_c"),
    Metric("gpu_power_w", "W", resource=True, tag="resources/gpu_power_w"),
)
BY_NAME = {m.name: m for m in COLUMNS}
PER_BYTE = {"loss": "bpb", "val_loss": "val_bpb"}  # what compare() overlays across tokenizers
STORED = tuple(m for m in COLUMNS if m.stored)
RESOURCES = tuple(m for m in COLUMNS if m.resource)


USER_COLORS = (TEAL, PINK, BROWN, OLIVE, INDIGO, AMBER)


def user_metric(name: str, index: int = 0) -> Metric:
    """The declaration of the `index`-th metric a user logs: a chart of its own, a TensorBoard tag."""
    check_user_name(name)
    return Metric(name, chart=f"user:{name}", label=name, tag=f"user/{name}", user=True,
                  color=USER_COLORS[index % len(USER_COLORS)])


def user_chart(metric: Metric) -> Chart:
    return Chart(metric.chart, metric.name)


def check_user_name(name) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a metric's name must be a Python identifier (for example val_acc); got {name!r}")
    if name in BY_NAME and not BY_NAME[name].stored:
        raise ValueError(f"{name!r} is computed by lmwidget (derived or sampled); log another name")
    return name


def filled(name: str, values, n: int) -> np.ndarray:
    """A stored column as its declared dtype: `values`, or its default for `n` older rows."""
    metric = BY_NAME[name]
    if values is None:
        return np.full(n, metric.default, dtype=metric.dtype)
    return np.asarray(values, dtype=metric.dtype)
