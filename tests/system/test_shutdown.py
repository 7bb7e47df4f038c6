"""A process that ends while lmwidget's threads are inside torch exits cleanly."""

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import TINY

# a dashboard whose every redraw also does torch work for half a second: whenever the
# script ends, its updater thread is almost surely inside torch's C++
SCRIPT = textwrap.dedent(f"""
    import time, torch, lmwidget
    run = lmwidget.train(display=False, max_steps=10**6, **{TINY!r})
    dashboard = run.dashboard
    refresh = dashboard.refresh
    x = torch.randn(256, 256)

    def busy_refresh():
        refresh()
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            x @ x

    dashboard.refresh = busy_refresh
    dashboard.kick()
    while run.step < 5:
        time.sleep(0.01)
    time.sleep(0.3)
    print("leaving at step", run.step, flush=True)
""")


@pytest.mark.parametrize("attempt", range(2))
def test_a_script_that_ends_while_its_dashboard_redraws_exits_cleanly(attempt):
    """Python kills a daemon thread still at work when it exits; inside torch that aborts the
    whole process ("terminate called without an active exception", exit status -6)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "leaving at step" in done.stdout
    assert "terminate called" not in done.stderr


def test_a_thread_started_for_lmwidget_is_told_and_waited_for():
    code = textwrap.dedent("""
        import threading, torch
        from lmwidget.system import shutdown
        ready, x = threading.Event(), torch.randn(256, 256)

        def work():
            ready.set()
            while not shutdown.exiting():
                x @ x
            print("stopped", flush=True)

        shutdown.start(work, "worker")
        ready.wait()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout == "stopped\n"
