"""CPU threads for training beside a kernel: one OpenMP team at a time (the thread that starts
a run lets go of its idle workers), of as many threads as train fastest now."""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from pathlib import Path

import torch

from .resources import usable_cpus

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep nothing else
_runtime_lock = threading.Lock()
_runtime: list = []  # [the OpenMP runtime torch uses (a ctypes library) or None], once found


def cpu_threads(requested: int) -> int:
    """Intra-op threads for a CPU training thread: `requested`, or every usable CPU (where
    lmwidget's own loop starts; its ThreadTuner may settle on one fewer).

    GNU OpenMP (torch's on Linux) spins only briefly before sleeping once it manages more
    threads than there are CPUs, and a thread that has run torch ops keeps its idle
    workers: a training thread beside a kernel that had run any torch op paid a futex
    wake-up per parallel region, and ran at 0.6 of a plain loop in a cell. `start()`
    frees the starting thread's workers (`release_workers`), so one team runs at a time.
    """
    return requested or usable_cpus()


def openmp_runtime():
    """The OpenMP runtime loaded for torch's CPU kernels (GNU libgomp, LLVM libomp or Intel
    libiomp5, as a ctypes library), or None where none is loaded or it cannot be found."""
    with _runtime_lock:
        if not _runtime:
            _runtime.append(_find_runtime())
        return _runtime[0]


def _find_runtime():
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no /proc; torch's macOS and Windows builds pace themselves
        return None
    names = ("libgomp", "libiomp5", "libomp")
    paths = {line.split()[-1] for line in maps.splitlines()
             if "/" in line and any(n in line.rsplit("/", 1)[-1] for n in names)}
    torch_lib = os.path.dirname(torch.__file__)
    for path in sorted(paths, key=lambda p: not p.startswith(torch_lib)):  # torch's own first
        try:
            lib = ctypes.CDLL(path)
            lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def release_workers() -> bool:
    """Free the calling thread's idle OpenMP worker threads (`omp_pause_resource_all`), so a
    training thread's team is the only one. The next torch op on this thread makes new
    ones. True when they were released (or there were none)."""
    lib = openmp_runtime()
    if lib is None:
        return False
    try:
        return lib.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0
    except (OSError, AttributeError):
        return False


def start(thread: threading.Thread, cpu: bool) -> None:
    """Start a training thread; for training on the CPU, the starting thread first lets its
    idle OpenMP workers go (release_workers)."""
    if cpu:
        release_workers()
    thread.start()


class OtherLoad:
    """The CPUs' worth of work that is not this run's training, measured between calls to
    `sample()`: other processes on the CPUs this process may run on (a browser drawing the
    page, a second job), plus this process's main thread (a cell running, the kernel's
    messages, the dashboard's redraws). Read from /proc: None where there is no /proc.

    The training thread calls it; the threads of the training team are what is left out."""

    def __init__(self):
        self._cpus = {f"cpu{c}" for c in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        main = threading.main_thread()
        self._main_clock = None
        if threading.current_thread() is not main and hasattr(time, "pthread_getcpuclockid"):
            try:
                self._main_clock = time.pthread_getcpuclockid(main.ident)
            except OSError:
                pass
        self._last = self._read()

    def busy(self) -> float | None:
        """CPU seconds spent, since boot, on this process's CPUs (idle and iowait left out)."""
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            name, _, rest = line.partition(" ")
            if name.startswith("cpu") and name != "cpu" and (self._cpus is None or name in self._cpus):
                ticks = [int(v) for v in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
                busy += sum(ticks) - ticks[3] - ticks[4]
        return busy / self._hz

    def _read(self):
        busy = self.busy()
        if busy is None:
            return None
        process = os.times()
        main = time.clock_gettime(self._main_clock) if self._main_clock is not None else 0.0
        return time.monotonic(), busy, process.user + process.system, main

    def sample(self) -> float | None:
        """The CPUs' worth of other work since the last call (0.5: half a CPU), or None."""
        now, last = self._read(), self._last
        if now is None or last is None:
            return None
        self._last = now
        wall = now[0] - last[0]
        if wall <= 0:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2]) + (now[3] - last[3])
        return max(0.0, others / wall)


class ThreadTuner:
    """Chooses a CPU training thread's intra-op threads: every usable CPU while nothing else
    wants one, else one fewer, timed by its own steps and checked again from time to time.

    An OpenMP team as large as the CPUs waits at every parallel region for the worker that
    lost its core to anything else: on 2 CPUs with a page drawing at full speed, a tiny
    model's steps took 6 times as long on 2 threads as on 1, and the page and the kernel's
    replies waited too. So the larger team is used only while the rest of the machine (other
    processes, and the kernel's main thread) uses less than `BUSY` of a CPU (OtherLoad,
    sampled every `SAMPLE` s); the moment it uses more, training steps aside to one fewer,
    and returns `CALM` s after it stops. On an idle machine the two are timed (12 steps
    each) and the faster kept, re-checked every 30 s.

    `tick()` is called by the training thread once per step."""

    SETTLE = 2        # steps after a change that are not timed (the team is rebuilt)
    TRIAL = 12        # steps timed for each choice: their median
    RECHECK = 30.0    # s between checks at least, and 20 times what a check cost
    SAMPLE = 1.0      # s between readings of the other load
    BUSY = 0.25       # CPUs of other work above which the larger team steps aside
    CALM = 5.0        # s of less other work before it comes back

    def __init__(self, cpus: int, load: OtherLoad | None = None):
        self._set = torch.set_num_threads
        self.choices = [cpus, cpus - 1] if cpus > 1 else [cpus]
        self.threads = self.choices[0]
        self.step_times: dict[int, float] = {}  # the last median step time of each choice
        self.busy_since: float | None = None  # when other work last went above BUSY
        self.other_load: float | None = None  # the last reading, in CPUs
        self._load = (load or OtherLoad()) if len(self.choices) > 1 else None
        self._todo = list(self.choices) if len(self.choices) > 1 else []
        self._times: list[float] = []
        self._last = self._check_started = None
        self._next_check = self._next_sample = 0.0
        self._set(self.threads)

    def tick(self, now: float) -> None:
        last, self._last = self._last, now
        if last is None or len(self.choices) == 1:
            self._check_started = now
            self._next_sample = now + self.SAMPLE
            return
        if now >= self._next_sample and self._sample(now):
            return
        if self.busy_since is not None:  # others want a CPU: one fewer, nothing timed
            return
        if not self._todo:
            if now >= self._next_check:  # time the current choice, then the other
                self._todo = [self.threads] + [c for c in self.choices if c != self.threads]
                self._times, self._check_started = [], now
            return
        self._times.append(now - last)
        if len(self._times) < self.SETTLE + self.TRIAL:
            return
        self.step_times[self._todo.pop(0)] = statistics.median(self._times[self.SETTLE:])
        self._times = []
        best = min(self.step_times, key=self.step_times.get)
        if self._todo:
            self._use(self._todo[0])
        else:
            self._use(best)
            self._next_check = now + max(self.RECHECK, 20 * (now - self._check_started))

    def _sample(self, now: float) -> bool:
        """Reads the other load; True when this tick steps aside or comes back."""
        self._next_sample = now + self.SAMPLE
        self.other_load = self._load.sample()
        if self.other_load is None:
            return False
        if self.other_load > self.BUSY:
            stepping_aside = self.busy_since is None
            self.busy_since = now
            if stepping_aside:
                self._todo, self._times = [], []  # a timing made now would time the others
                self._use(self.choices[-1])
            return stepping_aside
        if self.busy_since is not None and now - self.busy_since >= self.CALM:
            self.busy_since = None
            if self.step_times:
                self._use(min(self.step_times, key=self.step_times.get))
            self._next_check = 0.0 if len(self.step_times) < len(self.choices) else self._next_check
            return True
        return False

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self.threads = threads
            self._set(threads)
