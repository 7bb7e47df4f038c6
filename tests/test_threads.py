"""CPU threads: the training thread gets every CPU, and the thread that starts it lets go of
its idle OpenMP workers, so only one team of them runs."""

import json

import pytest

import lmwidget
from lmwidget import threads

from .conftest import TINY, run_python, scaled
from .frameworks import own_loop

# the threads of this process, as the kernel lists them (OpenMP workers included)
TASKS = """
import os
def tasks():
    return len(os.listdir("/proc/self/task"))
"""


def test_every_usable_cpu_trains_unless_told(monkeypatch):
    assert threads.cpu_threads(3) == 3
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)  # a container's quota, not the host's CPUs
    assert threads.cpu_threads(0) == 4
    monkeypatch.setattr(threads, "usable_cpus", lambda: 1)
    assert threads.cpu_threads(0) == 1


def two_cpus():
    if int(run_python("import torch; print(torch.get_num_threads())").stdout) < 2:
        pytest.skip("one CPU: torch makes no OpenMP workers")


def test_the_starting_thread_lets_its_idle_openmp_workers_go():
    """A thread that ran a torch op keeps its OpenMP workers (GNU OpenMP counts them, and spins
    less once they outnumber the CPUs); release_workers() ends them, the next op makes new ones."""
    two_cpus()
    out = run_python(TASKS + """
import json, torch
import lmwidget
from lmwidget import threads
before = tasks()
torch.randn(512, 512) @ torch.randn(512, 512)  # the user's op: the main thread's team
with_team = tasks()
released = threads.release_workers()
after = tasks()
torch.randn(512, 512) @ torch.randn(512, 512)
again = tasks()
print(json.dumps([before, with_team, released, after, again, threads.openmp_runtime() is not None]))
""").stdout
    before, with_team, released, after, again, found = json.loads(out)
    assert found and released
    assert with_team > before and after == before  # the workers are gone
    assert again == with_team  # and come back for the next op on this thread


def test_a_run_started_on_the_cpu_leaves_one_team_of_workers():
    """lmwidget.train() from a thread that had run torch ops: while it trains, the only
    OpenMP workers are the training thread's team; the starting thread's
    are gone."""
    two_cpus()
    out = run_python(TASKS + """
import json, time, torch, lmwidget
idle = tasks()
torch.randn(512, 512) @ torch.randn(512, 512)  # the main thread's team: one worker on 2 CPUs
workers = tasks() - idle
run = lmwidget.train(display=False, max_steps=10**6, n_layer=1, n_embd=64, block_size=32)
while run.step < 20:
    time.sleep(0.01)
training = tasks()
run.stop(); run.wait()
print(json.dumps([workers, training - idle, torch.get_num_threads(), lmwidget.threads.cpu_threads(0)]))
""").stdout
    workers, extra, main_threads, cpus = json.loads(out)
    assert workers == cpus - 1 and main_threads == cpus  # the user's thread keeps torch's default
    # the training thread itself, the dashboard-free run's helpers, and its own cpus - 1 workers;
    # without the release the main thread's workers would still be there too
    extra_without_workers = json.loads(run_python(TASKS + """
import json, time, lmwidget
idle = tasks()
run = lmwidget.train(display=False, max_steps=10**6, n_layer=1, n_embd=64, block_size=32)
while run.step < 20:
    time.sleep(0.01)
training = tasks()
run.stop(); run.wait()
print(json.dumps(training - idle))
""").stdout)
    assert extra == extra_without_workers, (extra, extra_without_workers)




def test_the_tuner_keeps_the_faster_thread_count_and_checks_again(monkeypatch):
    import torch

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    tuner = threads.ThreadTuner(2)
    assert tuner.threads == 2 and set_to == [2]
    step_time = {2: 0.010, 1: 0.004}  # a busy machine: one fewer thread is faster
    t = 0.0
    for _ in range(60):
        t += step_time[tuner.threads]
        tuner.tick(t)
    assert tuner.threads == 1 and set_to == [2, 1]
    assert tuner.step_times == pytest.approx({2: 0.010, 1: 0.004})
    step_time = {2: 0.002, 1: 0.004}  # the machine is idle again: after the re-check, 2 threads
    for _ in range(20_000):
        t += step_time[tuner.threads]
        tuner.tick(t)
        if tuner.threads == 2:
            break
    assert tuner.threads == 2 and t >= threads.ThreadTuner.RECHECK
    assert threads.ThreadTuner(1).choices == [1]  # one CPU: nothing to choose


def test_a_run_reports_the_threads_it_trains_on():
    fixed = lmwidget.train(display=False, max_steps=5, **TINY)  # TINY fixes threads=1
    assert fixed.threads is None or fixed.threads == 1  # None only before the thread starts
    fixed.wait()
    assert fixed.threads == 1
    tuned = lmwidget.train(display=False, max_steps=40, **{**TINY, "threads": 0})
    tuned.wait()
    cpus = threads.cpu_threads(0)
    assert tuned.threads in {cpus, max(1, cpus - 1)}


def test_your_own_loop_in_a_background_thread_is_timed_too():
    model, optimizer, scheduler, train = own_loop(40)
    run = lmwidget.steer(model, optimizer, scheduler, display=False, tokens_per_step=8 * 32)
    train.run = run
    assert run.threads is None  # not started: your own thread is yours
    run.start(train)
    assert run.wait(timeout=scaled(60))
    cpus = threads.cpu_threads(0)
    assert run.threads in {cpus, max(1, cpus - 1)}

