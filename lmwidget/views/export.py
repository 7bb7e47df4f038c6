"""Exports that outlive the kernel: tables, config, TensorBoard events, a standalone HTML page."""

from __future__ import annotations

import html
import importlib.util
import json
import math
import platform
from pathlib import Path

from ipywidgets.embed import dependency_state, embed_snippet
import torch

from lmwidget.version import __version__
from lmwidget.writers.tensorboard import TensorBoardWriter
from .summary import summary_html


def has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def run_info(run) -> dict:
    """The options and where the run stands, as JSON-ready values."""
    return {
        "config": {k: _json_value(v) for k, v in run.options().items()},
        "run": {"id": run.id, "kind": type(run).__name__, "state": run.state, "step": run.step,
                "max_steps": run.max_steps, "lr": run.lr, "grad_clip": run.grad_clip,
                "elapsed_s": run.elapsed, "restored_from": run.restored_from,
                "error": repr(run.error) if run.error else None, "checkpoints": run.checkpoints,
                **{k: _json_value(v) for k, v in run.describe().items()}},
        "versions": {"lmwidget": __version__, "torch": str(torch.__version__),
                     "python": platform.python_version()},
    }


def export(run, directory) -> dict:
    """Write the run's record into `directory` (created if needed); returns {name: path}."""
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    frame = run.history
    events = run.events
    frame.to_csv(out / "history.csv", index=False)
    written["history.csv"] = out / "history.csv"
    if has("pyarrow"):
        frame.to_parquet(out / "history.parquet", index=False)
        written["history.parquet"] = out / "history.parquet"
    events.to_csv(out / "events.csv", index=False)
    written["events.csv"] = out / "events.csv"
    run.resources.to_csv(out / "resources.csv", index=False)
    written["resources.csv"] = out / "resources.csv"
    samples = [{"step": step, "text": text} for step, text in run.samples]
    (out / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False), encoding="utf-8")
    written["samples.json"] = out / "samples.json"
    (out / "config.json").write_text(json.dumps(run_info(run), indent=1), encoding="utf-8")
    written["config.json"] = out / "config.json"
    if has("tensorboard"):
        written["tensorboard"] = write_tensorboard(run, out / "tensorboard")
    return written


def write_tensorboard(run, logdir: Path) -> Path:
    """TensorBoard event files of the whole record: every scalar at every step, events and
    samples as text (lmwidget.writers.tensorboard writes them, once)."""
    TensorBoardWriter(run, logdir).close()
    return logdir


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #212121; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #e0e0e0; padding: 2px 8px; text-align: left; }}
details {{ margin: 12px 0; }}
</style>
</head>
<body>
<h2>{title}</h2>
{summary}
<details><summary>options</summary>{config}</details>
<details><summary>events ({n_events})</summary>{events}</details>
<h3>Dashboard</h3>
<p style="color:#757575;font-size:12px">The interactive charts below are the dashboard's saved
widget state; they load the widget scripts from a CDN, so they need a network. The curves above
need nothing.</p>
{widgets}
</body>
</html>
"""


def _cell(column: str, value) -> str:
    """An events-table cell as a person reads it: seconds to 0.01 s, values to 4 digits,
    nothing where there is nothing (never "nan" or "None")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if column == "time":
        return f"{float(value):.2f} s"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_html(run, path) -> Path:
    """One standalone page: the static curves (inline SVG), the options, the events, and the
    dashboard's embedded widget state."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    dashboard = run.dashboard
    dashboard.settle()
    info = run_info(run)["config"]
    config = "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                 for k, v in info.items()) + "</table>"
    events = run.events
    events = events[events["kind"] != "eval"]
    event_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(c, v))}</td>" for c, v in zip(events.columns, row)) + "</tr>"
        for row in events.itertuples(index=False))
    event_table = ("<table><tr>" + "".join(f"<th>{c}</th>" for c in events.columns) + "</tr>"
                   + event_rows + "</table>")
    widgets = embed_snippet(views=[dashboard], state=dependency_state([dashboard], drop_defaults=True))
    what = run.describe()
    page = PAGE.format(title=html.escape(f"lmwidget {run.name}: " + " on ".join(
                           str(what[k]) for k in ("model", "data") if k in what)),
                       summary=summary_html(run, dashboard.smoothing.value), config=config, events=event_table,
                       n_events=len(events), widgets=widgets)
    path.write_text(page, encoding="utf-8")
    return path
