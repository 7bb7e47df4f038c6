"""The dashboard's controls act while a cell is busy: Pause, the LR and Resume during a long
computation, Stop during `run.wait()`, each before the blocking cell returns; in JupyterLab
with its default settings (comms over subshells) and with them off (as Notebook 7 without
subshells or VS Code send clicks), since the kernel reads them on lmwidget's own subshell."""

from __future__ import annotations

import math

import pytest

from tests.harness.jupyter_server import wait_for
from tests.harness.pace import scaled
from tests.views.test_browser import (  # noqa: F401  (fixtures)
    DASHBOARD,
    TINY,
    browser,
    make_probe,
    opened,
    page,
    servers,
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
    pause.click()
    wait_for(lambda: status_is(page, "paused"), 10, message="status 'paused' while the cell computes")
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
    assert computing < p_t < r_t < computed, (computing, kinds, computed)
    assert p_step == r_step, "a step ran between Pause and Resume"
    lr_events = [(s, t) for s, t, v in kinds.get("lr", []) if math.isclose(v, NEW_LR, rel_tol=1e-6)]
    assert lr_events and computing < lr_events[0][1] < computed, kinds.get("lr")
    later = [lr for s, lr in facts["lr_at"] if s > r_step]
    assert later and all(math.isclose(lr, NEW_LR, rel_tol=1e-6) for lr in later), later[:5]
    (_, s_t, _), = kinds["stop"]
    assert waiting < s_t < waited, (waiting, kinds["stop"], waited)
