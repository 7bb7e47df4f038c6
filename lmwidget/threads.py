"""CPU threads for training beside a kernel: one OpenMP team at a time (the thread that starts
a run lets go of its idle workers), of as many threads as train fastest now."""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
from pathlib import Path

from .system import usable_cpus

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
    import torch

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


class ThreadTuner:
    """Chooses a CPU training thread's intra-op threads by timing its own steps: every usable
    CPU, or one fewer, whichever is faster now. Re-checked from time to time, since what else
    runs on the machine changes the answer: on 2 CPUs with a page drawing at full speed, a
    tiny model's steps took 6 times as long on 2 threads as on 1 (a worker waiting for its
    turn on a core), while on an idle machine 2 threads are faster.

    `tick()` is called by the training thread once per step."""

    SETTLE = 2        # steps after a change that are not timed (the team is rebuilt)
    TRIAL = 12        # steps timed for each choice: their median
    RECHECK = 30.0    # s between checks at least, and 20 times what a check cost

    def __init__(self, cpus: int):
        import torch

        self._set = torch.set_num_threads
        self.choices = [cpus, cpus - 1] if cpus > 1 else [cpus]
        self.threads = self.choices[0]
        self.step_times: dict[int, float] = {}  # the last median step time of each choice
        self._todo = list(self.choices) if len(self.choices) > 1 else []
        self._times: list[float] = []
        self._last = self._check_started = None
        self._next_check = 0.0
        self._set(self.threads)

    def tick(self, now: float) -> None:
        last, self._last = self._last, now
        if last is None or len(self.choices) == 1:
            self._check_started = now
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

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self.threads = threads
            self._set(threads)
