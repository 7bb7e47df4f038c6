"""Runs side by side: loss (or bits per byte), validation loss, grad norm and LR overlaid, live, with a table."""

from __future__ import annotations

import html

import ipywidgets as w
import numpy as np

from .charts import Chart, SharedX, show_in_notebook
from lmwidget.core.control import ENDED
from lmwidget.core.palette import BLUE, BROWN, GREEN, ORANGE, PINK, PURPLE, RED, TEAL
from lmwidget.core.schema import BY_NAME, CHARTS, COLUMNS, PER_BYTE
from lmwidget.core.source import Source
from .updater import Updater

PALETTE = (BLUE, ORANGE, GREEN, PURPLE, RED, TEAL, BROWN, PINK)
LEGEND_CHARS = 28  # longer legend labels overflow bqplot's legend box (it sizes the box, not the text)
SKIP = {"checkpoint_dir", "data", "model", "device", "threads", "compile"}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def labels_for(runs) -> list[str]:
    """What tells the runs apart, e.g. "run 3: lr=0.003": the options (and steered LRs) that
    differ between them, the LR first, at most three."""
    rows = []
    for run in runs:
        summary = dict(run.options())
        summary["lr"] = run.lr  # as steered
        if summary.get("vocab_size") == 0:  # 0: the tokenizer's own size; say which
            size = getattr(getattr(run, "tokenizer", None), "vocab_size", None)
            summary["vocab_size"] = size if size else "auto"
        rows.append(summary)
    every = dict.fromkeys(k for row in rows for k in row)  # runs of different loops name different options
    keys = [k for k in every if k not in SKIP and len({repr(r.get(k)) for r in rows}) > 1]
    keys.sort(key=lambda k: k != "lr")  # the LR first: what runs are most often compared by
    return [f"run {run.id}" + (": " + ", ".join(f"{k}={_fmt(row.get(k))}" for k in keys[:3]) if keys else "")
            for run, row in zip(runs, rows)]


def legend_labels(labels, runs, max_chars: int = LEGEND_CHARS) -> list[str]:
    """`labels` cut to what a chart's legend shows whole (at most `max_chars`, whole options
    kept, "…" where cut), each still its own; else "run <id>"."""
    out = []
    for label in labels:
        if len(label) > max_chars:
            cut = label[:max_chars - 1]
            label = (cut.rsplit(", ", 1)[0] if ", " in cut else cut).rstrip(":, ") + "…"
        out.append(label)
    return out if len(set(out)) == len(out) else [f"run {run.id}" for run in runs]


def tokenizers_differ(runs) -> bool:
    """Runs whose tokenizers differ: their losses per token measure different things."""
    return len({run.describe().get("tokenizer") for run in runs}) > 1


def has_per_byte(run) -> bool:
    """Whether the run has recorded bits per byte (its data knows its bytes per token)."""
    values = run.history[PER_BYTE["loss"]].to_numpy(dtype=np.float64)
    return bool(np.isfinite(values).any())


def stats(run, per_byte: bool = False) -> dict:
    """Final and best values of a run, for the table (in bits per byte with `per_byte`)."""
    name, val_name = (PER_BYTE["loss"], PER_BYTE["val_loss"]) if per_byte else ("loss", "val_loss")
    frame = run.history
    loss = frame[name].to_numpy()
    tail = loss[-50:][np.isfinite(loss[-50:])]
    val = frame[["step", val_name]].dropna()
    best = val.loc[val[val_name].idxmin()] if len(val) else None
    speed = frame["tokens_per_sec"].to_numpy(dtype=np.float64)
    speed = speed[np.isfinite(speed)]
    return {"state": run.state, "step": run.step, "loss": float(tail.mean()) if len(tail) else np.nan,
            "val_loss": float(val[val_name].iloc[-1]) if len(val) else np.nan,
            "best_val_loss": float(best[val_name]) if best is not None else np.nan,
            "best_step": int(best["step"]) if best is not None else None,
            "tokens_per_sec": float(np.median(speed)) if len(speed) else np.nan}


def _cell(value: float, fmt: str) -> str:
    return "–" if not np.isfinite(value) else format(value, fmt)


class Compare(w.VBox):
    """Built on the caller's thread; one updater thread writes every trait while any run trains.

    The first chart (loss, or bits per byte) is there from the start; the others (validation
    loss, grad norm, LR) join once a run has a value for them, so that no chart stays empty.
    One legend above the charts names the runs' colours (a legend inside a chart sits on its
    curves); the table has a column only where a run has a value for it."""

    def __init__(self, runs, labels=None, per_byte: bool | None = None):
        if not runs:
            raise ValueError("compare() needs at least one run")
        bad = [r for r in runs if not isinstance(r, Source)]
        if bad:
            raise TypeError(f"compare() takes lmwidget runs (a Run, Loop, RemoteRun, ...); got "
                            f"{type(bad[0]).__name__}")
        self.runs = list(runs)
        self.labels = list(labels) if labels is not None else labels_for(self.runs)
        if len(self.labels) != len(self.runs):
            raise ValueError(f"{len(self.labels)} labels for {len(self.runs)} runs")
        self.legend = legend_labels(self.labels, self.runs)  # the charts' series (the table: in full)
        self.colors = [PALETTE[i % len(PALETTE)] for i in range(len(self.runs))]
        colors = dict(zip(self.legend, self.colors))
        x = SharedX()  # every chart's step axis, from 0
        # bits per byte where the tokenizers differ, when every run has them (a run of your
        # own loop or a framework's may not know its data's bytes per token)
        differ = tokenizers_differ(self.runs)
        self.per_byte = (differ and all(has_per_byte(r) for r in self.runs)) if per_byte is None else bool(per_byte)
        self.note = ""
        if differ and not self.per_byte:
            lacking = [r.name for r in self.runs if not has_per_byte(r)]
            self.note = ("The runs' tokenizers differ, so their losses per token measure different things; "
                         + (f"bits per byte would compare them, but {', '.join(lacking)} recorded none "
                            f"(its data does not know its bytes per token)." if lacking
                            else "compare(..., per_byte=True) compares them in bits per byte."))
        self.metrics = [BY_NAME[PER_BYTE[m.name]] if self.per_byte and m.name in PER_BYTE else m
                        for m in COLUMNS if m.compare]
        self.charts = {}
        for m in self.metrics:
            spec = CHARTS[m.chart]
            series = {label: (colors[label], "circle" if m.sparse else None) for label in self.legend}
            css = f"lmwidget-compare-{m.name.replace('_', '-')}"
            self.charts[m.name] = Chart(m.title or spec.title, x, series, css, log=spec.log,
                                        tick_format=spec.tick_format, y_label=spec.unit, zero=spec.zero,
                                        span=spec.span, legend=False)
        self.key = w.HTML(" ".join(
            f'<span style="white-space:nowrap;margin-right:12px" title="{html.escape(full)}">'
            f'<span style="color:{color}">&#9632;</span> {html.escape(label)}</span>'
            for label, full, color in zip(self.legend, self.labels, self.colors)))
        self.key.add_class("lmwidget-compare-legend")
        self.table = w.HTML()
        self.table.add_class("lmwidget-compare-table")
        self.grid = w.GridBox(self._figures(), layout=w.Layout(
            grid_template_columns="repeat(auto-fill, minmax(340px, 1fr))"))
        super().__init__([self.key, self.grid, self.table])
        self.add_class("lmwidget-compare")
        self._rows = [0] * len(self.runs)
        self._table_key = None
        # one started later is followed too: it redraws until every run has ended
        self.updater = Updater("lmwidget-compare", lambda ended: self.refresh(),
                               lambda: all(r.state in ENDED for r in self.runs), self.table)
        self.kick()

    def _figures(self) -> list:
        """The first chart from the start; the others once they have a value."""
        first, *rest = self.charts.values()
        return [first.figure] + [c.figure for c in rest if c.has_data]

    def kick(self) -> None:
        """Make sure the updater runs, and wake it now."""
        self.updater.kick()

    def refresh(self) -> None:
        """Draw what the runs recorded since the last refresh, and the table when a run moved."""
        fed = {}
        for i, (run, label) in enumerate(zip(self.runs, self.legend)):
            run.record.drain()
            new = run.record.since(self._rows[i])
            self._rows[i] += len(new["step"])
            for m in self.metrics:
                x, y = new["step"], new[m.name]
                if m.sparse:
                    keep = ~np.isnan(y)
                    x, y = x[keep], y[keep]
                if self.charts[m.name].extend(label, x, y):
                    fed.setdefault(m.name, []).append(label)
        for column, labels in fed.items():
            self.charts[column].draw(labels)
        if (figures := tuple(self._figures())) != tuple(self.grid.children):  # a chart's first value
            self.grid.children = figures
        key = tuple((r.state, r.step) for r in self.runs)
        if key != self._table_key:
            self._table_key = key
            self.table.value = self.table_html()

    def _ipython_display_(self) -> None:
        show_in_notebook(self)  # once per cell: compare() on its own line draws one view

    def table_html(self) -> str:
        """The table: each run's state, step, final loss (the mean of its last 50 steps), its
        validation loss and best one where any run evaluated, and its median tokens/s where
        any run measured it; "–" where a run has no value."""
        loss = "bits/byte" if self.per_byte else "loss"
        rows = [stats(run, self.per_byte) for run in self.runs]
        evaluated = any(s["best_step"] is not None for s in rows)
        timed = any(np.isfinite(s["tokens_per_sec"]) for s in rows)
        head = (f"<tr><th>run</th><th>state</th><th>step</th>"
                f'<th title="the mean of the last 50 steps">final {loss}</th>'
                + (f"<th>val {loss}</th><th>best val {loss}</th>" if evaluated else "")
                + ("<th>tokens/s</th>" if timed else "") + "</tr>")
        body = []
        for s, label, color in zip(rows, self.labels, self.colors):
            best = "–" if s["best_step"] is None else f"{s['best_val_loss']:.4f} (step {s['best_step']})"
            body.append(
                f'<tr><td><span style="color:{color}">&#9632;</span> {html.escape(label)}</td>'
                f"<td>{s['state']}</td><td>{s['step']}</td><td>{_cell(s['loss'], '.4f')}</td>"
                + (f"<td>{_cell(s['val_loss'], '.4f')}</td><td>{best}</td>" if evaluated else "")
                + (f"<td>{_cell(s['tokens_per_sec'], ',.0f')}</td>" if timed else "") + "</tr>")
        note = f"<p><i>{html.escape(self.note)}</i></p>" if self.note else ""
        return (f'{note}<table style="border-collapse:collapse" border="1" cellpadding="3">{head}'
                f'{"".join(body)}</table>')


def compare(*runs, labels=None, per_byte: bool | None = None, display: bool = True) -> Compare:
    """Overlay the loss, validation loss, grad norm and LR of several runs (finished or still
    training: the charts follow them live), each labelled by what differs between them,
    with a table of final and best values. `per_byte`: losses in bits per byte (the default
    when the runs' tokenizers differ and every run has recorded bits per byte), else in nats
    per token.

    Args:
        *runs: the runs to overlay (any `Source`), or one list of them.
        labels: a label for each run (default: what differs between their options).
        per_byte: True for bits per byte, False for nats per token, None to choose (bits per
            byte where the tokenizers differ and every run has them).
        display: show the view in the current cell.

    Returns:
        The comparison view, which follows runs still training.
    """
    if len(runs) == 1 and isinstance(runs[0], (list, tuple)):
        runs = tuple(runs[0])
    view = Compare(runs, labels, per_byte)
    if display:
        show_in_notebook(view)
    return view
