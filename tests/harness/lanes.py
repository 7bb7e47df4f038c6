"""Lanes: independent slow jobs (notebooks run in their own kernels) two at a time, each on
CPUs of its own.

A lane's thread is pinned to its share of the CPUs before it starts anything, and the
kernels it starts inherit that share: lmwidget there trains on those CPUs only, so two
OpenMP teams never fight over the same cores (two teams on 2 CPUs ran a run at a tenth of
its speed). On one CPU there is one lane, unpinned.
"""

from __future__ import annotations

import os
import queue
from concurrent.futures import Future, ThreadPoolExecutor


def cpu_shares(lanes: int) -> list[set[int]]:
    """This process's CPUs dealt into at most `lanes` disjoint, non-empty shares."""
    cpus = sorted(os.sched_getaffinity(0))
    lanes = max(1, min(lanes, len(cpus)))
    return [set(cpus[i::lanes]) for i in range(lanes)]


class Lanes:
    """A pool of `lanes` threads, each pinned to its share of the CPUs."""

    def __init__(self, lanes: int = 2):
        self.shares = cpu_shares(lanes)
        free: queue.SimpleQueue = queue.SimpleQueue()
        for share in self.shares:
            free.put(share)

        def pin():
            os.sched_setaffinity(0, free.get())  # this thread only, and what it starts

        pinned = len(self.shares) > 1
        self._pool = ThreadPoolExecutor(len(self.shares), thread_name_prefix="lane",
                                        initializer=pin if pinned else None)
        self._jobs: dict[str, Future] = {}

    def submit(self, key: str, fn, *args, **kwargs) -> None:
        self._jobs[key] = self._pool.submit(fn, *args, **kwargs)

    def result(self, key: str):
        """The job's result once it is done (its exception, raised here)."""
        return self._jobs[key].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
