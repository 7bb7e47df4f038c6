"""Execute a notebook top to bottom in a real kernel, as "Run all" would, and check what it left.

Used by tests/notebooks/test_notebooks.py (with fewer steps) and benchmarks/notebooks.py (as shipped).
Run it directly to execute one notebook and print its figures as JSON:

    python tests/harness/nbrun.py notebooks/01_quickstart.ipynb STEPS=60
"""

from __future__ import annotations

import ast
import copy
import json
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

# Appended after the notebook's own cells: wait for the runs it left training, then report
# what became of every run and dashboard, and the kernel's peak resident memory.
REPORT = """
import json as __json, re as __re, time as __time
import lmwidget as __lmw
__deadline = __time.monotonic() + {wait}
for __r in __lmw.runs():
    if __r.state in ("running", "paused") and not __r.paused:
        try:  # a run that fails while waited for re-raises: its state and error say so below
            __r.wait(max(0.0, __deadline - __time.monotonic()))
        except Exception:
            pass
def __lmw_summary(r):
    h = r.history
    val = h.dropna(subset=["val_loss"])
    nan = float("nan")
    return {{"id": r.id, "state": r.state, "step": r.step, "max_steps": r.max_steps,
            "error": repr(r.error) if r.error else None,
            "dashboard_error": "dashboard error" in (r._dashboard.notice.value
                                                     if r._dashboard is not None else ""),
            "val_last": float(val.val_loss.iloc[-1]) if len(val) else nan,
            "val_bpb_last": float(val.val_bpb.iloc[-1]) if len(val) and "val_bpb" in val else nan,
            "loss_first": float(h.loss.iloc[0]) if len(h) else nan,
            "loss_last": float(h.loss.tail(20).mean()) if len(h) else nan,
            "val_min": float(val.val_loss.min()) if len(val) else nan,
            "val_min_step": int(val.step[val.val_loss.idxmin()]) if len(val) else None,
            "tokens_per_sec": float(h.tokens_per_sec.median()) if len(h) else nan,
            "anomaly": list(r.anomaly) if r.anomaly else None,
            "unsupported": sorted(getattr(r, "unsupported", None) or {{}}),
            "layers": list(getattr(r, "layers", None) or []),
            "lr": [[int(s), float(f"{{x:.6g}}")] for s, x in zip(h.step, h.lr)],
            "events": [[int(e.step), str(e.kind), str(e.value)] for e in r.events.itertuples()]}}
def __lmw_tables():  # what each comparison's table shows, once its updater has drawn the end
    from lmwidget.views.compare import Compare as __Compare
    __seen, __out = set(), []
    __shown = list(get_ipython().user_ns.get("Out", {{}}).values()) + list(globals().values())
    for __v in __shown:
        if isinstance(__v, __Compare) and id(__v) not in __seen:
            __seen.add(id(__v))
            __v.updater.join(10)
            __out.append({{"runs": [__r.id for __r in __v.runs], "html": __v.table.value}})
    return __out
def __peak_rss_mb():
    try:
        with open("/proc/self/status") as __f:
            return int(__re.search(r"VmHWM:\\s+(\\d+) kB", __f.read()).group(1)) / 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("LMWIDGET-REPORT " + __json.dumps({{
    "runs": [__lmw_summary(__r) for __r in __lmw.runs()] + [  # then the jobs the notebook attached to
        __lmw_summary(__v) for __v in list(globals().values()) if isinstance(__v, __lmw.RemoteRun)],
    "compare_tables": __lmw_tables(),
    "peak_rss_mb": round(__peak_rss_mb(), 1),
}}))
"""

REPORT_RX = re.compile(r"^LMWIDGET-REPORT (.*)$", re.M)
STRAY = ("True", "False")  # what a cell that ends in run.wait() shows
BAD_TEXT_RX = re.compile(r"Traceback \(most recent call last\)|LmwidgetWarning|Exception in thread")


def parameters_cell_index(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    raise ValueError("the notebook has no cell tagged 'parameters'")


def parameter_names(nb) -> set[str]:
    """The names the notebook's 'parameters' cell sets."""
    source = nb.cells[parameters_cell_index(nb)].source
    return {t.id for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def with_parameters(nb, parameters: dict):
    """A copy of `nb` with a cell setting `parameters` after its 'parameters' cell (as papermill
    does); each name must be one that cell sets."""
    nb = copy.deepcopy(nb)
    i = parameters_cell_index(nb)
    known = parameter_names(nb)
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(f"not parameters of this notebook: {', '.join(unknown)}; its "
                         f"parameters: {', '.join(sorted(known))}")
    if parameters:
        source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(i + 1, cell)
    return nb


def output_texts(cell) -> list[str]:
    texts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            texts.append("\n".join(out.get("traceback", [])) or f"{out.get('ename')}: {out.get('evalue')}")
        elif out.get("output_type") == "stream":
            texts.append(out.get("text", ""))
        else:
            data = out.get("data", {})
            texts.extend(str(data[k]) for k in ("text/plain", "text/html") if k in data)
    return texts


def execute(path, parameters: dict | None = None, cwd=None, timeout: int = 600, wait: int = 300, env=None):
    """Run the notebook at `path` with `parameters`; return (executed notebook, report).

    `env`: the kernel's environment (default: this process's).
    The report has the seconds it took, the kernel's peak resident memory, what became of
    each run (its LR at each step, its events, its layer groups, the controls it cannot carry out), the table of
    each comparison shown, and `problems`: error outputs, tracebacks or warnings of lmwidget
    in any output, a cell showing a stray True or False, failed runs, dashboard errors, runs
    left unfinished."""
    nb = with_parameters(nbformat.read(path, as_version=4), parameters or {})
    nb.cells.append(nbformat.v4.new_code_cell(REPORT.format(wait=wait)))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd or Path.cwd())}})
    t0 = time.monotonic()
    client.execute(**({} if env is None else {"env": env}))
    seconds = time.monotonic() - t0
    problems = []
    for i, cell in enumerate(nb.cells[:-1]):
        for text in output_texts(cell):
            if BAD_TEXT_RX.search(text) or any(o.get("output_type") == "error" for o in cell.outputs):
                problems.append(f"cell {i}: {text[:2000]}")
        for out in cell.get("outputs", []):  # a bare call's value (run.wait()'s True), not a lesson's
            if out.get("output_type") == "execute_result" and out.get("data", {}).get("text/plain") in STRAY:
                problems.append(f"cell {i} shows a stray {out['data']['text/plain']}: the value of its last "
                                f"line, {cell.source.strip().splitlines()[-1]!r}")
    found = REPORT_RX.search("".join(output_texts(nb.cells[-1])))
    if found is None:
        problems.append(f"no report from the kernel: {output_texts(nb.cells[-1])}")
        report = {"runs": [], "compare_tables": [], "peak_rss_mb": None}
    else:
        report = json.loads(found.group(1))
    for run in report["runs"]:
        if run["state"] not in ("finished", "stopped"):
            problems.append(f"run {run['id']} ended the notebook {run['state']} at step "
                            f"{run['step']}/{run['max_steps']}: {run['error']}")
        if run["dashboard_error"]:
            problems.append(f"run {run['id']}'s dashboard shows an error")
    report.update(seconds=round(seconds, 1), problems=problems)
    return nb, report


if __name__ == "__main__":
    params = dict(arg.split("=", 1) for arg in sys.argv[2:])
    _, result = execute(sys.argv[1], {k: ast.literal_eval(v) for k, v in params.items()})
    print(json.dumps(result, indent=1))
    sys.exit(1 if result["problems"] else 0)
