"""CPU threads for training beside a kernel: the training thread gets every CPU, and the
thread that starts it lets go of its idle OpenMP workers, so one team runs at a time."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from .system import usable_cpus

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep nothing else
_runtime_lock = threading.Lock()
_runtime: list = []  # [the OpenMP runtime torch uses (a ctypes library) or None], once found


def cpu_threads(requested: int) -> int:
    """Intra-op threads for a CPU training thread: `requested`, or every usable CPU.

    GNU OpenMP (torch's on Linux) spins only briefly before sleeping once it manages more
    threads than there are CPUs, and a thread that has run torch ops keeps its idle
    workers: a training thread beside a kernel that had run any torch op paid a futex
    wake-up per parallel region, and ran at 0.7 of a plain loop in a cell. `start()`
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
