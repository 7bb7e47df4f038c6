"""CPU threads: the training thread gets every CPU, and the thread that starts it lets go of
its idle OpenMP workers, so only one team of them runs."""

import json
import os

import pytest

import lmwidget
from lmwidget.system import threads

from tests.conftest import TINY, run_python, scaled
from tests.harness.frameworks import own_loop

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
from lmwidget.system import threads
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
print(json.dumps([workers, training - idle, torch.get_num_threads(), lmwidget.system.threads.cpu_threads(0)]))
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


class Load:
    """A stand-in for OtherLoad: the CPUs of other work that the next sample reads."""

    def __init__(self, cpus=0.0):
        self.cpus = cpus

    def sample(self):
        return self.cpus


def test_the_tuner_keeps_the_faster_thread_count_and_checks_again(monkeypatch):
    import torch

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    tuner = threads.ThreadTuner(2, Load(0.0))
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


def test_the_larger_team_steps_aside_while_other_work_wants_a_cpu(monkeypatch):
    """A page drawing, another process or a cell on the kernel's main thread: training drops
    to one fewer thread within a sample, times nothing meanwhile, and comes back CALM s after."""
    import torch

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    load = Load(0.0)
    tuner = threads.ThreadTuner(2, load)
    step_time = {2: 0.002, 1: 0.004}  # idle: 2 threads are faster
    t = 0.0

    def steps(seconds):
        nonlocal t
        end = t + seconds
        while t < end:
            t += step_time[tuner.threads]
            tuner.tick(t)

    steps(1.0)
    assert tuner.threads == 2 and tuner.step_times == pytest.approx({2: 0.002, 1: 0.004})
    load.cpus = 0.6  # a browser redraws the dashboard
    steps(threads.ThreadTuner.SAMPLE + 0.01)
    assert tuner.threads == 1 and tuner.busy_since is not None and tuner.other_load == 0.6
    steps(60.0)  # past a re-check: still one fewer while the load lasts, and nothing timed
    assert tuner.threads == 1 and tuner.step_times == pytest.approx({2: 0.002, 1: 0.004})
    load.cpus = 0.05
    steps(threads.ThreadTuner.CALM - threads.ThreadTuner.SAMPLE - 0.1)
    assert tuner.threads == 1  # not yet: the load must stay low for CALM s
    steps(2 * threads.ThreadTuner.SAMPLE)
    assert tuner.threads == 2 and tuner.busy_since is None
    assert set_to[:5] == [2, 1, 2, 1, 2]  # then the re-check that fell due meanwhile times both


def test_other_load_counts_other_processes_and_the_main_thread_not_the_training_team():
    """Read from /proc, over real work: a process spinning beside this one, then this process's
    main thread spinning, then only the sampling thread's own busy team. Whatever else the
    machine runs only adds to the first two; the third is checked against the machine's
    own busy time, so a busy CI machine does not change what it shows."""
    import subprocess
    import sys
    import threading
    import time

    import torch

    two_cpus()
    readings = {}

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    def training_thread():
        load = threads.OtherLoad()
        load.sample()
        time.sleep(1.0)  # the main thread spins meanwhile
        readings["main"] = load.sample()
        spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.monotonic() + 1.5\n"
                                    "while time.monotonic() < end: pass"])
        time.sleep(0.3)  # the child has started spinning
        load.sample()
        time.sleep(1.0)
        readings["process"] = load.sample()
        spinner.wait()
        a = torch.randn(256, 256)
        load.sample()
        busy0, process0, wall0 = load_busy(), sum(os.times()[:2]), time.monotonic()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # this thread's own team, busy
            a = torch.tanh(a @ a)
        readings["own"] = load.sample()
        wall = time.monotonic() - wall0
        readings["machine"] = (load_busy() - busy0) / wall  # every CPU's busy time, ours included
        readings["team"] = (sum(os.times()[:2]) - process0) / wall  # this process: the team, mostly

    def load_busy():
        return threads.OtherLoad().busy()

    worker = threading.Thread(target=training_thread)
    worker.start()
    spin(1.0)
    worker.join()
    assert readings["main"] > 0.6, readings
    assert readings["process"] > 0.6, readings
    assert readings["team"] > 0.5, readings  # the team was busy...
    # ...and left out: what is read is the machine's busy time less this process's (the main
    # thread idle in join()); jiffies are 10 ms, hence the tolerance
    assert readings["own"] == pytest.approx(max(0.0, readings["machine"] - readings["team"]), abs=0.15), readings


def test_a_run_reports_the_threads_it_trains_on():
    fixed = lmwidget.train(display=False, max_steps=5, **TINY)  # TINY fixes threads=1
    assert fixed.threads is None or fixed.threads == 1  # None only before the thread starts
    fixed.wait()
    assert fixed.threads == 1
    tuned = lmwidget.train(display=False, max_steps=40, **{**TINY, "threads": 0})
    tuned.wait()
    cpus = threads.cpu_threads(0)
    assert tuned.threads in {cpus, max(1, cpus - 1)}


class CountingTuner(threads.ThreadTuner):
    ticks = []

    def tick(self, now):
        CountingTuner.ticks.append(now)
        super().tick(now)


def timed_steps(monkeypatch, start):
    """How many steps the tuner of the run `start()` returns timed, once it has ended."""
    CountingTuner.ticks = []
    monkeypatch.setattr(lmwidget.adapters.loop, "ThreadTuner", CountingTuner)
    run = start()
    assert run.wait(timeout=scaled(120)) and run.state == "finished", run.error
    cpus = threads.cpu_threads(0)
    assert run.threads in {cpus, max(1, cpus - 1)}
    return run, len(CountingTuner.ticks)


def test_your_own_loop_in_a_background_thread_is_timed_too(monkeypatch):
    model, optimizer, scheduler, train = own_loop(40)

    def start():
        run = lmwidget.steer(model, optimizer, scheduler, display=False, tokens_per_step=8 * 32)
        train.run = run
        assert run.threads is None  # not started: your own thread is yours
        return run.start(train)

    run, ticks = timed_steps(monkeypatch, start)
    assert ticks == run.step == 40


def test_the_hugging_face_trainer_in_a_background_thread_is_timed(monkeypatch, tmp_path):
    """Each framework records its steps its own way; every one of them is timed (the Trainer's
    and Lightning's runs once trained on every CPU whatever else the machine ran)."""
    pytest.importorskip("transformers")
    from tests.harness.frameworks import hf_trainer

    run, ticks = timed_steps(monkeypatch, lambda: lmwidget.fit(hf_trainer(tmp_path, max_steps=30), display=False))
    assert ticks == run.step == 30


def test_a_lightning_fit_in_a_background_thread_is_timed(monkeypatch):
    pytest.importorskip("lightning")
    from tests.harness.frameworks import lightning_setup

    module, trainer, train, val = lightning_setup(max_steps=30)
    run, ticks = timed_steps(monkeypatch, lambda: lmwidget.fit(trainer, module, train, val, display=False))
    assert ticks == run.step == 30
