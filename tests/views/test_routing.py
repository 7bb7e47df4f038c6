"""Where the kernel reads the controls' clicks: on lmwidget's own subshell in a real kernel, so a
click acts while a cell blocks, whichever channel the front end sends it on; elsewhere, the
dashboard says when clicks wait for a cell."""

from __future__ import annotations

import json
import re
import time

import ipywidgets as w
import pytest
from jupyter_client.manager import start_new_kernel

import lmwidget
from lmwidget.views import controlbar, routing

from tests.conftest import wait_for

LONG = 1_000_000


def test_outside_a_kernel_nothing_is_routed_and_it_says_why():
    assert routing.serve_on_subshell(w.Button()) is False
    assert routing.why_not() == "not in a Jupyter kernel"


def test_the_dashboard_says_clicks_wait_while_a_cell_runs_on_a_front_end_without_subshells(tiny, monkeypatch):
    run = lmwidget.train(display=False, **{**tiny, "max_steps": LONG})
    d = run.dashboard
    assert d.served_on_subshell is False  # not in a kernel
    d.pacer.acked.value = 1  # an acknowledgement from the page, read on the main thread
    monkeypatch.setattr(controlbar, "cell_running", lambda: True)
    wait_for(lambda: "act once the cell ends" in d.busy_note.value, timeout=10)
    monkeypatch.setattr(controlbar, "cell_running", lambda: False)
    wait_for(lambda: d.busy_note.value == "", timeout=10)
    run.stop()
    run.wait(30)
    wait_for(lambda: d.stop_button.disabled, timeout=10)
    assert d.stop_button.button_style == ""  # a disabled Stop is not red


KERNEL_SETUP = """
import threading, time, ipywidgets as w
from lmwidget.views import routing
clicks = []
button = w.Button()
button.on_click(lambda _: clicks.append((time.time(), threading.current_thread().name)))
print(json.dumps({"routed": routing.serve_on_subshell(button), "id": button.model_id,
                  "subshell": routing.subshell()}))
"""


@pytest.mark.slow
def test_in_a_real_kernel_a_click_acts_while_a_cell_blocks():
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        out = []

        def collect(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        kc.execute_interactive("import json\n" + KERNEL_SETUP, timeout=60, output_hook=collect)
        setup = json.loads("".join(out).strip().splitlines()[-1])
        assert setup["routed"] is True and setup["subshell"], setup
        # a front end's own subshell (JupyterLab's default) and none (comms on the main shell)
        kc.control_channel.send(kc.session.msg("create_subshell_request", {}))
        frontend_subshell = kc.control_channel.get_msg(timeout=10)["content"]["subshell_id"]
        for channel in (frontend_subshell, None):
            cell = kc.execute("started = time.time(); time.sleep(4); ended = time.time()")
            time.sleep(1)  # the cell blocks the main thread now
            click = kc.session.msg("comm_msg", {"comm_id": setup["id"],
                                                "data": {"method": "custom", "content": {"event": "click"}}})
            if channel is not None:
                click["header"]["subshell_id"] = channel
            kc.shell_channel.send(click)
            while kc.get_shell_msg(timeout=20)["parent_header"].get("msg_id") != cell:
                pass
            out.clear()
            kc.execute_interactive("print(json.dumps([clicks.pop(), started, ended]))", timeout=30,
                                   output_hook=collect)
            (at, thread), started, ended = json.loads("".join(out).strip().splitlines()[-1])
            assert started < at < ended, f"the click on {channel or 'the main shell'} waited for the cell"
            assert re.fullmatch(rf"subshell-{setup['subshell']}", thread), thread
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
