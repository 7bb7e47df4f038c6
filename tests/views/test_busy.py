"""The dashboard's controls act while a cell is busy: Pause, the LR and Resume during a long
computation, Stop during `run.wait()`, each before the blocking cell returns; in JupyterLab
with its default settings (comms over subshells) and with them off (as Notebook 7 without
subshells or VS Code send clicks), since the kernel reads them on lmwidget's own subshell."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from tests.harness.jupyter_server import artifacts_dir, wait_for
from tests.harness.pace import scaled
from tests.views.test_browser import (
    DASHBOARD,
    REPO,
    TINY,
    make_probe,
    int_in,
    status_is,
    step_text,
)

pytestmark = pytest.mark.browser

LIMIT = scaled(90)  # s a blocking cell waits at most: far longer than any click takes
NEW_LR = 1e-3
CELLS = [
    "%load_ext lmwidget\nimport time",
    f"run = %lmtrain {TINY} --steps 100000 --lr 3e-3",
    # a long computation, holding the main thread (and mostly the GIL) until the LR has
    # changed and the run goes on again
    f"run.wait_for_step(20)\nlr0, computing = run.lr, time.time()\n"
    f"while (run.lr == lr0 or run.paused) and time.time() - computing < {LIMIT}:\n"
    f"    sum(i * i for i in range(20_000))\n"
    f"computed = time.time()",
    # a wait: returns once the run ends
    f"waiting = time.time()\nstopped = run.wait({LIMIT})\nwaited = time.time()",
    "print(run.state, run.step)",
]


def running_cell(nb, index: int) -> bool:
    """Cell `index` runs now: its prompt reads [*] and every cell before it has a number."""
    prompts = nb.prompts()
    return prompts[index].startswith("[*]") and all(p[1:-2].isdigit() for p in prompts[:index])


@pytest.mark.parametrize("frontend", ["lab-subshells-on", "lab-subshells-off"])
def test_controls_act_while_a_cell_is_busy(opened, frontend):
    nb = opened(frontend, CELLS, label=f"busy-{frontend}")
    page = nb.page
    nb.run_all()
    pause = page.locator(".lmwidget-pause").first
    pause.wait_for(state="visible", timeout=120_000)
    wait_for(lambda: running_cell(nb, 2), 60, message=lambda: f"the computing cell to run ({nb.prompts()})")
    wait_for(lambda: (step_text(page) or 0) > 20, 30, message="the run to pass step 20")

    # Pause while the computation holds the kernel's main thread: the run stops advancing
    clicked = time.monotonic()
    pause.click()
    wait_for(lambda: status_is(page, "paused"), 10, message="status 'paused' while the cell computes")
    shown = time.monotonic() - clicked  # click to "paused" on the page, through the kernel
    frozen = step_text(page)
    page.wait_for_timeout(1000)
    assert step_text(page) == frozen, "the run advanced while paused"
    assert running_cell(nb, 2), "the computing cell ended before the LR changed"
    nb.screenshot("paused-while-busy", scroll_to=DASHBOARD)

    # a new LR typed into the slider's readout, then Resume: the computation ends
    readout = page.locator(".lmwidget-lr .widget-readout").first
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(repr(NEW_LR))
    page.keyboard.press("Enter")
    pause.click()
    wait_for(lambda: running_cell(nb, 3), 15, message=lambda: f"the computing cell to end ({nb.prompts()})")
    wait_for(lambda: status_is(page, "running"), 10, message="status 'running' after resume")

    # Stop while run.wait() blocks: the wait returns, the run stopped
    page.locator(".lmwidget-stop").first.click()
    nb.wait_all_executed(timeout=30)
    assert "stopped" in nb.cell_output_text(4), nb.cell_output_text(4)
    assert not nb.error_outputs(), nb.error_outputs()

    probe = make_probe(nb)
    facts = probe.eval(
        "(lambda r, e: {'stopped': stopped, 'state': r.state,"
        " 'computed': computed - computing, 'waited': waited - waiting,"
        " 'start': r.start_time,"
        " 'events': [[int(s), float(t), str(k), v if isinstance(v, (int, float, str)) else str(v)]"
        "            for s, t, k, v in e[['step', 'time', 'kind', 'value']].itertuples(index=False)],"
        " 'lr_at': [[int(s), float(lr)] for s, lr in r.history[['step', 'lr']].itertuples(index=False)],"
        " 'cell_times': [computing, computed, waiting, waited]})(__lmw_run(), __lmw_run().events)"
    )
    assert facts["stopped"] is True and facts["state"] == "stopped", facts["state"]
    assert facts["computed"] < LIMIT and facts["waited"] < LIMIT, facts  # ended by the clicks
    start = facts["start"]
    computing, computed, waiting, waited = (t - start for t in facts["cell_times"])
    kinds = {}
    for step, t, kind, value in facts["events"]:
        kinds.setdefault(kind, []).append((step, t, value))
    # each click acted while its cell was still blocking
    (p_step, p_t, _), = kinds["pause"]
    (r_step, r_t, _), = kinds["resume"]
    # the resume ended the computation (it waits for "not paused"): its event is recorded at
    # the loop's next boundary, which may come a moment after the cell saw it
    assert computing < p_t < computed and p_t < r_t, (computing, kinds, computed)
    assert p_step == r_step, "a step ran between Pause and Resume"
    lr_events = [(s, t) for s, t, v in kinds.get("lr", []) if math.isclose(v, NEW_LR, rel_tol=1e-6)]
    assert lr_events and computing < lr_events[0][1] < computed, kinds.get("lr")
    later = [lr for s, lr in facts["lr_at"] if s > r_step]
    assert later and all(math.isclose(lr, NEW_LR, rel_tol=1e-6) for lr in later), later[:5]
    (_, s_t, _), = kinds["stop"]
    assert waiting < s_t < waited, (waiting, kinds["stop"], waited)
    record = {"frontend": frontend, "click_to_paused_shown_s": round(shown, 3),
              "pause_during_computation_s": round(p_t - computing, 3),
              "stop_during_wait_s": round(s_t - waiting, 3), "wait_returned_after_stop_s": round(waited - s_t, 3)}
    (artifacts_dir() / f"busy-{frontend}.json").write_text(json.dumps(record, indent=1))


LESSON = REPO / "notebooks" / "05_your_own_training.ipynb"
LESSON_STEPS = 300  # each of its three runs: long enough to click during the Trainer's wait


def lesson_cells(path: Path, steps: int) -> list[dict]:
    """The notebook's cells as written, its parameters cell set to `steps`."""
    nb = json.loads(path.read_text())
    cells = []
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = f"STEPS = {steps}"
        cells.append({"cell_type": cell["cell_type"], "source": source})
    return cells


def test_a_lesson_run_with_run_all_stays_steerable(opened):
    """Notebook 05 with Run All in JupyterLab: Pause on the Hugging Face dashboard while
    `hf.wait()` blocks pauses the Trainer, Resume lets it finish; no cell shows framework
    output or an error; each dashboard is photographed after Run All."""
    cells = lesson_cells(LESSON, LESSON_STEPS)
    code = [c["source"] for c in cells if c["cell_type"] == "code"]
    waiting = next(i for i, s in enumerate(code) if s.lstrip().startswith("if hf_ready:\n    hf.wait()"))
    nb = opened("lab-subshells-on", cells, label="lesson-05-run-all")
    page = nb.page
    root = nb.server.root_dir
    before = {p.name for p in root.iterdir()}
    nb.run_all()
    wait_for(lambda: running_cell(nb, waiting), 300, message=lambda: f"hf.wait() to block ({nb.prompts()})")
    hf = page.locator(".lmwidget-dashboard").nth(1)
    hf.scroll_into_view_if_needed()  # JupyterLab draws no text in cells off screen (Run All scrolls on)
    hf_step = lambda: int_in(hf.locator(".lmwidget-step").first.inner_text())  # noqa: E731
    wait_for(lambda: (hf_step() or 0) >= 5, 60, message="the Trainer's first steps")
    hf.locator(".lmwidget-pause").first.click()
    wait_for(lambda: "paused" in hf.locator(".lmwidget-status").first.inner_text(), 10,
             message="the Trainer's dashboard to read 'paused' while hf.wait() blocks")
    frozen = hf_step()
    page.wait_for_timeout(1500)
    assert hf_step() == frozen and running_cell(nb, waiting), "the Trainer went on while paused"
    assert frozen < LESSON_STEPS, "the Trainer had finished before the click"
    hf.scroll_into_view_if_needed()
    nb.screenshot("hf-paused-during-wait")
    hf.locator(".lmwidget-pause").first.click()
    nb.wait_all_executed(timeout=600)
    assert not nb.error_outputs(), nb.error_outputs()
    stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert stderr.count() == 0, stderr.evaluate_all("els => els.map(e => e.textContent)")
    left = {p.name for p in root.iterdir()} - before - {".ipynb_checkpoints"}
    assert not left, f"the lesson left {sorted(left)} beside the notebook"
    dashboards = page.locator(".lmwidget-dashboard")
    for i in range(dashboards.count()):
        dashboards.nth(i).scroll_into_view_if_needed()
        dashboards.nth(i).screenshot(path=str(artifacts_dir() / f"lesson-05-dashboard-{i + 1}.png"))
    compared = next(i for i, s in enumerate(code) if s.startswith("lmwidget.compare("))
    nb.code_cells().nth(compared).screenshot(path=str(artifacts_dir() / "lesson-05-compare.png"))
