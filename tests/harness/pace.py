"""How fast this machine is right now, so that the tests' deadlines scale with it.

Every deadline in the tests is a guard against a hang, set on a 2-core machine that trains
the tiny test model's step in about REFERENCE_STEP_S. On a machine that is slower (an older
CPU, a busy CI runner) the same work takes longer, so each deadline is multiplied by
`slowdown()`: this machine's measured step time over the reference, never below 1. Speed
targets themselves live in the benchmarks, not in the tests.
"""

from __future__ import annotations

import functools
import os
import time

REFERENCE_STEP_S = 0.0031  # s: the tiny GPT's mean training step (1 thread) where the deadlines were set
ENV = "LMWIDGET_TEST_SLOWDOWN"  # a factor given by hand wins over the measurement


@functools.cache
def slowdown() -> float:
    """This machine's training step time over the reference's (>= 1), measured once."""
    if os.environ.get(ENV):
        return max(1.0, float(os.environ[ENV]))
    return max(1.0, step_time() / REFERENCE_STEP_S)


def step_time(seconds: float = 1.0) -> float:
    """The mean time of one training step of the tests' tiny GPT on one thread, over about
    `seconds` of steps: long enough for a busy machine's other processes to take their share."""
    import torch

    from lmwidget.models.builtin import GPT

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a training thread on 2 CPUs
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = GPT(96, 32, n_layer=1, n_head=2, n_embd=32)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x = torch.randint(96, (8, 33))

            def step():
                _, loss = model(x[:, :-1], x[:, 1:])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            for _ in range(10):  # warm up
                step()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                step()
                n += 1
            return (time.perf_counter() - t0) / n
    finally:
        torch.set_num_threads(threads)


def scaled(seconds: float) -> float:
    """A deadline of `seconds` on the reference machine, as long as it must be here."""
    return seconds * slowdown()
