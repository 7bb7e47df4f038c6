"""The loops the benchmark measures: a bare PyTorch loop (in a cell or a thread), lmwidget's with its dashboard drawing, and how soon a control acts."""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time

import torch
from torch.nn.utils import clip_grad_norm_

from lmwidget.data.dataset import Dataset
from lmwidget.models.builtin import build_model
from lmwidget.system import threads
from lmwidget.training.config import TrainConfig
from lmwidget.training.optim import make_optimizer, resolve_device
from lmwidget.training.run import Run
from .traffic import CountingComm, chart_update_bytes

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_thread(n_threads: int, fn, *args):
    """fn(*args) in a new thread using `n_threads` intra-op threads, started as lmwidget starts
    its training thread."""
    out = []

    def target():
        torch.set_num_threads(n_threads)
        out.append(fn(*args))

    thread = threading.Thread(target=target)
    threads.start(thread, cpu=True)
    thread.join()
    return out[0]


def bare_loop(config: TrainConfig, dataset: Dataset, init_state: dict, steps: int, warmup: int) -> float:
    """A: the plain PyTorch loop lmwidget's does, with nothing else. Returns tokens/s."""
    device = resolve_device(config.device)
    model = _model(config, dataset, init_state).to(device)
    forward = torch.compile(model) if config.compile else model
    optimizer = make_optimizer(config, model.parameters())
    gen = torch.Generator().manual_seed(config.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        x, y = dataset.batch("train", config.batch_size, config.block_size, gen)
        with autocast:
            _, loss = forward(x, y)
        loss.backward()
        clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return steps * config.batch_size * config.block_size / (time.perf_counter() - t0)


def _model(config, dataset, init_state):
    model = build_model(config.model, dataset.vocab_size, config.block_size, config.n_layer,
                        config.n_head, config.n_embd, config.dropout)
    model.load_state_dict(init_state)
    return model


def lmwidget_loop(config: TrainConfig, dataset: Dataset, init_state: dict, steps: int, warmup: int):
    """B: lmwidget's loop with the dashboard drawing into a counting comm.

    Returns the run, its dashboard, tokens/s, the dashboard thread's CPU time as a share of
    one core, redraws (that sent anything) per second, and each chart's bytes per redraw.
    """
    run = Run(config, model=_model(config, dataset, init_state), dataset=dataset)
    dashboard = run.dashboard
    # (time, log position before, log position after, training?) of each redraw
    draws = []
    cpu = [0.0]
    refresh = dashboard.refresh

    def measured_refresh():
        t, before, training = time.thread_time(), len(CountingComm.log), run.state == "running"
        refresh()
        cpu[0] += time.thread_time() - t
        draws.append((time.perf_counter(), before, len(CountingComm.log), training))

    dashboard.refresh = measured_refresh
    run.start()
    while run.step < warmup and run.alive:
        time.sleep(0.002)
    t0, step0, cpu0 = time.perf_counter(), run.step, cpu[0]
    run.join()
    _sync(run.device)
    elapsed = time.perf_counter() - t0
    tokens_per_sec = (run.step - step0) * config.batch_size * config.block_size * config.grad_accum / elapsed
    # the periodic redraws; the end's state change wakes one more at once
    sent = [t for t, before, after, training in draws if after > before and t >= t0 and training]
    rate = (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 else 0.0
    dashboard.settle()  # its last redraw too: with no page, the charts redraw at most once a second
    sizes = [size for _, before, after, _ in draws
             for size in chart_update_bytes(dashboard, CountingComm.log[before:after])]
    return run, dashboard, tokens_per_sec, (cpu[0] - cpu0) / elapsed, rate, sizes


def control_latency(config: TrainConfig, dataset: Dataset, init_state: dict, repeats: int = 5) -> dict:
    """ms from pause() to paused, set_lr() to applied, stop() to the thread's end."""
    out = {"pause_ms": [], "set_lr_ms": [], "stop_ms": []}
    for i in range(repeats):
        run = Run(dataclasses.replace(config, max_steps=10**9),
                  model=_model(config, dataset, init_state), dataset=dataset)
        run.dashboard
        run.start()
        while run.step < 20:
            time.sleep(0.002)
        out["pause_ms"].append(_latency(run.pause, lambda: run.state == "paused"))
        run.resume()
        lr = 1e-3 * (i + 2)
        out["set_lr_ms"].append(_latency(lambda: run.set_lr(lr), lambda: run.lr == lr))
        out["stop_ms"].append(_latency(run.stop, lambda: not run.alive))
    return {k: {"median": statistics.median(v), "max": max(v)} for k, v in out.items()}


def _latency(act, done) -> float:
    t0 = time.perf_counter()
    act()
    while not done():
        time.sleep(0.0002)
    return 1e3 * (time.perf_counter() - t0)
