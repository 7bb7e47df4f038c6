"""Shared test settings: a tiny model that trains in milliseconds per step, and no leftover runs."""

import http.server
import threading
from pathlib import Path

import pytest

import lmwidget
from lmwidget.core.registry import active_runs

from tests.harness.pace import scaled, slowdown

SHARED_SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

# ~1 ms per step on 2 CPU cores, still a real GPT
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=8, eval_interval=50, threads=1,
            eval_iters=2)


def pytest_sessionstart(session):
    # measured now, before any test starts a run: the measurement seeds and restores torch's
    # global RNG, which a run training meanwhile draws its dropout masks from
    slowdown()


_SECONDS = {"browser": 0.0, "slow": 0.0, "the rest": 0.0}  # per marker: setup, call and teardown


def pytest_runtest_logreport(report):
    keywords = report.keywords
    group = "browser" if "browser" in keywords else "slow" if "slow" in keywords else "the rest"
    _SECONDS[group] += report.duration


def pytest_terminal_summary(terminalreporter):
    """The suite's budget at a glance: where its time went, per marker (CI has 90 minutes on
    2 cores, and the suite should stay within a third of that on a slow machine)."""
    spent = ", ".join(f"{group} {seconds / 60:.1f} min" for group, seconds in _SECONDS.items())
    terminalreporter.write_line(f"lmwidget: time per marker: {spent}")


def pytest_report_header(config):
    return (f"lmwidget: this machine trains the tiny test model {slowdown():.2f}x as slow as the "
            f"reference; every deadline is scaled by that")


@pytest.fixture
def tiny():
    return dict(TINY)


def wait_for(predicate, timeout=10.0, interval=0.005):
    """Poll until predicate() is true; fail the test (not hang) after `timeout` s on the
    reference machine, scaled to this one's speed (tests/harness/pace.py)."""
    import time

    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f} s")
        time.sleep(interval)


def run_python(code: str, timeout: float = 120):
    """Run `code` in a fresh interpreter (clean torch and warning state); fail on a non-zero exit."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=scaled(timeout))
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(autouse=True)
def _in_a_temporary_directory(tmp_path_factory, monkeypatch):
    """Every test runs in a fresh working directory: a default checkpoint directory
    (lmwidget-checkpoints/ in the working directory) never lands in the repository."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(autouse=True)
def _no_leftover_runs():
    yield
    for run in active_runs():
        run.stop()
    for run in lmwidget.runs():
        run.join(5)
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("lmwidget-run")]
    assert not leftovers, f"training threads left running: {leftovers}"


def kinds(run) -> list[str]:
    """The run's event kinds in step order, without the routine "eval" markers."""
    return [k for k in run.events.kind if k != "eval"]


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 that serves `body` at any path, counting GETs."""

    def __init__(self, body: bytes):
        self.body = body
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tinyshakespeare.txt"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def shutdown(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(5)
        self.httpd.server_close()


@pytest.fixture
def start_job():
    """Start `python -m lmwidget train` jobs (tests.jobs.Job); every one, and every process
    it started, is killed when the test ends, whatever happened."""
    from tests.harness.jobs import Job

    started = []

    def start(*args, **options):
        started.append(Job(*args, **options))
        return started[-1]

    yield start
    for job in started:
        job.kill()
