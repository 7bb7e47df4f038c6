"""The resource monitor: every run's CPU, memory and GPU, about once a second, off the
training thread, with or without a dashboard or a kernel."""

import json
import threading
import time

import lmwidget
from lmwidget.core import monitor

from tests.conftest import TINY, run_python, scaled, wait_for


def test_a_script_records_its_resources_and_exports_them(tmp_path):
    """No kernel, no dashboard: a plain `python` process that trains until it has 3 samples."""
    out = run_python(f"""
import json, time, lmwidget
run = lmwidget.train(display=False, max_steps=10**6, **{TINY!r})
deadline = time.monotonic() + 60
while len(run.resources) < 3 and time.monotonic() < deadline:
    time.sleep(0.05)
run.stop(); run.wait()
r = run.resources
rows = open(run.export({str(tmp_path)!r})["resources.csv"]).read().splitlines()
print(json.dumps([len(r), r.time.diff().mean(), r.time.diff().min(), r.rss_mb.min(), r.cpu_percent.max(),
                  len(rows)]))
""").stdout
    n, mean_gap, min_gap, rss, cpu, csv_rows = json.loads(out.strip().splitlines()[-1])
    assert n >= 3 and mean_gap >= 0.9 and min_gap >= 0.5  # about one a second, never faster
    assert rss > 10 and cpu > 1  # the process's memory, and training burns CPU
    assert csv_rows == n + 1  # the header and every sample


def test_the_samples_are_taken_off_the_training_thread_and_stop_at_the_end():
    run = lmwidget.train(display=False, max_steps=10**6, **TINY)
    takers = []
    sample = run.sample_resources

    def spy():
        takers.append(threading.current_thread().name)
        return sample()

    run.sample_resources = spy
    wait_for(lambda: len(takers) >= 2, timeout=scaled(10))
    run.stop()
    run.wait()
    assert set(takers) == {"lmwidget-resources"}
    before = len(run.resources)
    # the monitor ends with the last run of the process (other tests' runs may still be ending)
    wait_for(lambda: not monitor.running() or any(not r.ended for r in lmwidget.runs()), timeout=5)
    time.sleep(1.5)
    assert len(run.resources) == before  # an ended run is not sampled any more


def test_a_run_shorter_than_a_second_is_sampled_too():
    """The first sample is taken within a tenth of a second of the start (a short job's
    resources.csv is never empty)."""
    run = lmwidget.train(display=False, max_steps=10**6, **TINY)
    wait_for(lambda: len(run.resources) >= 1, timeout=scaled(0.5))
    run.stop()
    run.wait()
