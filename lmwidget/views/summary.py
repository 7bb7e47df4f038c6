"""Static summary of a run: its curves as inline SVG, readable with no kernel and no script."""

from __future__ import annotations

import html

import numpy as np

from .axes import tick_label, x_domain, y_domain
from .charts import EVENT_COLORS, RAW_OPACITY, event_label
from .downsample import MinMaxSeries
from lmwidget.core.palette import MUTED
from .smoothing import DEFAULT as DEFAULT_SMOOTHING, check_weight, ema
from lmwidget.core.schema import CHARTS, user_chart

WIDTH, HEIGHT = 340, 200
MARGIN = dict(left=58, right=12, top=26, bottom=30)
MAX_POINTS = 600          # per series: about two per horizontal pixel
STEERING = ("lr", "grad_clip", "pause", "stop", "anomaly", "checkpoint", "restore")


def _points(x, y, log: bool):
    """Finite points (positive on a log axis), min/max-downsampled to MAX_POINTS."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(y) & np.isfinite(x) & ((y > 0) if log else True)
    x, y = x[keep], y[keep]
    if len(x) > MAX_POINTS:
        series = MinMaxSeries(MAX_POINTS)
        series.extend(x, y)
        x, y = series.points()
        x, y = x.astype(np.float64), y.astype(np.float64)
    return x, y


def svg_chart(title: str, series: list, *, log: bool = False, events=(), x_label: str = "step",
              css_class: str = "", zero: bool = False, smoothing: float = 0.0, span: float = 0.0) -> str:
    """One chart as an SVG string. `series`: (label, x, y, color, dots) tuples; `events`:
    (step, time, kind, value, detail) tuples drawn as vertical rules with a tooltip.
    `smoothing` > 0: each line is drawn smoothed as the dashboard draws it, over its raw
    curve drawn faintly. `span`: how far below its top a log axis reaches at most."""
    drawn = [(label, *_points(x, y, log), color, dots) for label, x, y, color, dots in series]
    drawn = [d for d in drawn if len(d[1])]
    left, top = MARGIN["left"], MARGIN["top"]
    w, h = WIDTH - left - MARGIN["right"], HEIGHT - top - MARGIN["bottom"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lmwidget-summary-chart {css_class}" '
           f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'font-family="sans-serif" font-size="10" fill="currentColor">',  # the page's text colour
           f'<text x="{left + w / 2}" y="14" text-anchor="middle" font-size="12" '
           f'font-weight="bold">{html.escape(title)}</text>']
    if not drawn:
        out.append(f'<text x="{left + w / 2}" y="{top + h / 2}" text-anchor="middle" '
                   f'fill-opacity="0.7">no data</text></svg>')
        return "".join(out)
    xs = np.concatenate([d[1] for d in drawn])
    ys = np.concatenate([d[2] for d in drawn])
    x0, x1, x_ticks = x_domain(float(xs.max()), integer=x_label == "step")  # as the dashboard's axes
    low, high, y_ticks = y_domain(float(ys.min()), float(ys.max()), log=log, zero=zero, span=span)
    if log:  # below a `span`-bound axis: drawn on its floor, inside the chart
        drawn = [(label, x, np.maximum(y, low), color, dots) for label, x, y, color, dots in drawn]

    def scale(v):
        return np.log10(v) if log else v

    y0, y1 = scale(low), scale(high)

    def px(v):
        return left + (v - x0) / (x1 - x0) * w

    def py(v):
        return top + h - (scale(v) - y0) / (y1 - y0) * h

    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="currentColor" '
               f'stroke-opacity="0.35"/>')
    for t in y_ticks:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
                   f'stroke="currentColor" stroke-opacity="0.1"/><text x="{left - 4}" y="{py(t) + 3:.1f}" '
                   f'text-anchor="end">{tick_label(t)}</text>')
    for t in x_ticks:
        out.append(f'<text x="{px(t):.1f}" y="{top + h + 13}" text-anchor="middle">{tick_label(t)}</text>')
    out.append(f'<text x="{left + w / 2}" y="{HEIGHT - 3}" text-anchor="middle" '
               f'fill-opacity="0.75">{x_label}</text>')
    for event in events:
        step, kind = event[0], event[2]
        if x0 <= step <= x1:
            x = px(step)
            out.append(f'<line class="lmwidget-summary-event" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" '
                       f'y2="{top + h}" stroke="{EVENT_COLORS.get(kind, MUTED)}" '
                       f'stroke-dasharray="3,3"><title>{html.escape(event_label(event))}</title></line>')
    for label, x, y, color, dots in drawn:
        if dots:
            out.extend(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.5" fill="{color}"/>'
                       for a, b in zip(x, y))
        elif smoothing > 0:
            out.append(_polyline(x, y, px, py, color, label + " (raw)", 'class="lmwidget-summary-raw" '
                                 f'stroke-opacity="{RAW_OPACITY}" '))
            out.append(_polyline(x, ema(y, smoothing), px, py, color, label, 'class="lmwidget-summary-smoothed" '))
        else:
            out.append(_polyline(x, y, px, py, color, label, ""))
    if len(drawn) > 1:
        for i, (label, *_, color, _dots) in enumerate(drawn):
            out.append(f'<text x="{left + w - 4}" y="{top + 12 + 12 * i}" text-anchor="end" '
                       f'fill="{color}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _polyline(x, y, px, py, color, label, attributes) -> str:
    pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, y))
    return (f'<polyline {attributes}points="{pts}" fill="none" stroke="{color}" stroke-width="1.3">'
            f'<title>{html.escape(label)}</title></polyline>')


def headline(run, frame) -> str:
    """One line: where the run ended and how well it did."""
    total = run.max_steps or "?"
    parts = [f"<b>lmwidget {html.escape(run.name)}</b>", html.escape(str(run.describe()["model"])),
             f"{run.state} at step {run.step}/{total}"]
    loss = frame["loss"].to_numpy()
    tail = loss[-50:][np.isfinite(loss[-50:])]
    if len(tail):
        parts.append(f"loss {tail.mean():.4f} (mean of the last {len(tail)} steps)")
    val = frame[["step", "val_loss"]].dropna()
    if len(val):
        best = val.loc[val["val_loss"].idxmin()]
        parts.append(f"val loss {val['val_loss'].iloc[-1]:.4f}, best {best['val_loss']:.4f} "
                     f"at step {int(best['step'])}")
    tps = frame["tokens_per_sec"].to_numpy()
    if len(tps) and np.isfinite(tps).any():
        parts.append(f"{np.nanmedian(tps):,.0f} tokens/s")
    if len(frame):
        seconds = frame["time"].iloc[-1]
        parts.append(f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min")
    return " · ".join(parts)


def summary_html(run, smoothing: float = DEFAULT_SMOOTHING) -> str:
    """The run's final curves (every chart of the schema's summary metrics, and the user's
    metrics) and headline, as HTML with inline SVG: it renders in any notebook viewer, with
    no kernel or script. The noisy curves are smoothed as the dashboard smooths them."""
    smoothing = check_weight(smoothing)
    frame = run.history
    events = [e for e in run.record.events_since(0) if e[2] in STEERING]
    step = frame["step"].to_numpy()
    metrics = [m for m in run.record.metrics() if m.summary or m.user]
    charts = []
    for key in dict.fromkeys(m.chart for m in metrics):
        spec = CHARTS[key] if key in CHARTS else user_chart(next(m for m in metrics if m.chart == key))
        series = []
        for m in (m for m in metrics if m.chart == key):
            values = frame[m.name].to_numpy(dtype=np.float64)
            keep = ~np.isnan(values) if (m.sparse or m.user) else slice(None)
            series.append((m.label, step[keep], values[keep], m.color, m.sparse))
        if spec.optional and not any(np.isfinite(y).any() for _, _, y, _, _ in series):
            continue  # a metric this source does not measure: no empty chart
        charts.append(svg_chart(spec.title, series, log=spec.log, events=events, zero=spec.zero, span=spec.span,
                                smoothing=smoothing if spec.smooth else 0.0,
                                css_class="lmwidget-summary-" + key.replace("_", "-").replace(":", "-")))
    return (f'<div class="lmwidget-summary" style="font-family:sans-serif">'
            f'<div style="margin:4px 0">{headline(run, frame)}</div>'
            f'<div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(charts)}</div></div>')
