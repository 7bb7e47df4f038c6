"""The cost benchmark: a bare PyTorch loop against lmwidget's loop with its dashboard updating.

    python -m lmwidget bench [--rounds 5] [--framework-rounds 9] [--steps 400] [--device auto] [--dtype bfloat16] [--compile]

prints a JSON report (see the README's "Performance" section for what each figure means).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import threading
import time

import comm
import numpy as np
import torch
from torch.nn.utils import clip_grad_norm_

from lmwidget.views.charts import Chart
from lmwidget.training.config import TrainConfig
from lmwidget.data.dataset import Dataset
from lmwidget.models.builtin import GPT, build_model, count_params
from lmwidget.core.palette import BLUE
from lmwidget.training.run import Run
from lmwidget.system import threads
from lmwidget.system.threads import cpu_threads
from lmwidget.training.optim import make_optimizer, resolve_device

# dense bf16 tensor-core peaks (FLOP/s) by a substring of torch.cuda.get_device_name()
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                   "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
                   "V100": 125e12, "T4": 65e12}
SCALING_SIZES = (1_000, 10_000, 100_000, 1_000_000)


class CountingComm(comm.base_comm.BaseComm):
    """A comm with no frontend: it counts the bytes of every widget message it would send."""

    log: list = []  # (widget comm id, bytes) of each state update

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        if msg_type == "comm_msg":
            size = len(json.dumps(data, default=str)) + sum(memoryview(b).nbytes for b in buffers or [])
            CountingComm.log.append((self.comm_id, size))


def install_counting_comm() -> None:
    comm.create_comm = CountingComm


def flops_per_token(model: torch.nn.Module, block_size: int) -> float:
    """Training FLOPs per token: 6 per parameter, plus attention for a GPT (PaLM appendix B)."""
    flops = 6.0 * count_params(model)
    if isinstance(model, GPT):
        n_head = model.blocks[0].attn.n_head if len(model.blocks) else 1
        n_embd = model.wte.embedding_dim
        flops += 12.0 * len(model.blocks) * n_head * (n_embd // n_head) * block_size
    return flops


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


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


def chart_update_bytes(dashboard, log) -> list[int]:
    """Bytes each chart sent in one redraw, given that redraw's (comm id, bytes) messages."""
    owner = {}
    for name, chart in dashboard.charts.items():
        for mark in (*chart.marks.values(), *chart.extra.values(), chart.rules, chart.figure):
            owner[mark.comm.comm_id] = name
    sizes = {}
    for comm_id, size in log:
        if comm_id in owner:
            sizes[owner[comm_id]] = sizes.get(owner[comm_id], 0) + size
    return list(sizes.values())


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


def scaling(sizes=SCALING_SIZES, new_points: int = 100, repeats: int = 20) -> list[dict]:
    """Bytes and time to prepare one chart update after `n` steps, for each n in `sizes`."""
    import bqplot as bq

    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        chart = Chart("loss", bq.LinearScale(), {"train": (BLUE, None)}, "bench")
        y = 4.0 + np.cumsum(rng.standard_normal(n + new_points * repeats)) * 0.01
        x = np.arange(1, len(y) + 1, dtype=np.float64)
        chart.extend("train", x[:n], y[:n])
        times, sizes_ = [], []
        for r in range(repeats):
            lo, hi = n + r * new_points, n + (r + 1) * new_points
            del CountingComm.log[:]
            t = time.perf_counter()
            chart.extend("train", x[lo:hi], y[lo:hi])
            chart.draw(["train"])
            times.append(time.perf_counter() - t)
            sizes_.append(sum(size for _, size in CountingComm.log))
        rows.append({"steps": n, "points_sent": len(chart.marks["train"].x),
                     "bytes": max(sizes_), "prepare_ms": 1e3 * statistics.median(times)})
    return rows


def benchmark(rounds: int = 5, steps: int = 400, warmup: int = 30, frameworks: bool = True,
              progress=None, framework_rounds: int | None = None, **options) -> dict:
    """The rounds described in the README's Performance section; `progress(line)` is told
    of each side measured (the command prints it on stderr). The frameworks' comparisons
    take `framework_rounds` rounds (default: `rounds`)."""
    install_counting_comm()
    torch.get_num_threads()  # fix this thread's count before any training thread sets its own
    config = TrainConfig.from_options(**{"eval_interval": 0, **options,
                                         "max_steps": warmup + steps})
    dataset = Dataset.from_config(config)
    device = resolve_device(config.device)
    dataset = dataset.to(device)
    torch.manual_seed(config.seed)
    init_state = build_model(config.model, dataset.vocab_size, config.block_size, config.n_layer,
                             config.n_head, config.n_embd, config.dropout).state_dict()
    n_threads = cpu_threads(config.threads) if device.type == "cpu" else torch.get_num_threads()
    a, a_main, b, ui_cpu, ui_rate, update_bytes, msg_bytes = [], [], [], [], [], [], []
    for r in range(rounds):  # interleaved, in turn forwards and backwards: A main, A, B, B, A, A main, ...
        for side in ("main", "thread", "lmwidget")[::1 if r % 2 == 0 else -1]:
            if side == "main":
                a_main.append(bare_loop(config, dataset, init_state, steps, warmup))
            elif side == "thread":
                a.append(in_thread(n_threads, bare_loop, config, dataset, init_state, steps, warmup))
            else:
                del CountingComm.log[:]
                run, dashboard, tps, cpu_share, rate, sizes = lmwidget_loop(config, dataset, init_state,
                                                                            steps, warmup)
                b.append(tps)
                ui_cpu.append(cpu_share)
                ui_rate.append(rate)
                update_bytes += sizes
                msg_bytes.append(sum(size for _, size in CountingComm.log) * 1000 / run.step)
            if progress is not None:
                done = {"main": a_main, "thread": a, "lmwidget": b}[side][-1]
                progress(f"round {r + 1}/{rounds}, {side}: {done:,.0f} tokens/s")
    history = run.record
    model = run.model
    report = {
        # the headline: lmwidget as shipped (a background thread, its dashboard redrawing)
        # against the same loop in a cell, blocking the main thread with torch's default threads
        "ratio_to_main_thread": statistics.median(b) / statistics.median(a_main),
        "best_ratio_to_main_thread": max(b) / max(a_main),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "bare_thread_threads": n_threads,
        "main_thread_threads": torch.get_num_threads(), "lmwidget_threads": run.threads,
        "model": config.model, "params": count_params(model), "batch_size": config.batch_size,
        "block_size": config.block_size, "dtype": config.dtype, "compile": config.compile,
        "rounds": rounds, "steps_per_round": steps,
        "tokens_per_sec_bare_main_thread": statistics.median(a_main),
        "tokens_per_sec_lmwidget": statistics.median(b),
        # A: the bare loop in a background thread on every CPU: lmwidget's own cost beside it
        "tokens_per_sec_bare": statistics.median(a),
        "ratio": statistics.median(b) / statistics.median(a),
        "best_ratio": max(b) / max(a),  # best round of each: the least disturbed by other load
        "ui_updates_per_sec": statistics.median(ui_rate),
        "chart_update_bytes": {"max": max(update_bytes), "mean": statistics.fmean(update_bytes)},
        "widget_bytes_per_1000_steps": statistics.median(msg_bytes),
        "history_bytes_per_step": history.nbytes_per_step(),
        "dashboard_cpu_share_of_one_core": statistics.median(ui_cpu),
        "control_latency": control_latency(config, dataset, init_state),
        "step_time_ms": 1e3 * float(np.median(run.history.step_time)),
        "scaling": scaling(),
    }
    if frameworks:  # your own loop and the Hugging Face Trainer, with lmwidget and without
        from .frameworks import compare

        report.update(compare(framework_rounds or rounds, steps, steps // 2, warmup, config, dataset,
                              init_state))
    peak = peak_flops(device)
    if peak:
        per_token = flops_per_token(model, config.block_size)
        report["mfu_bare"] = report["tokens_per_sec_bare"] * per_token / peak
        report["mfu_lmwidget"] = report["tokens_per_sec_lmwidget"] * per_token / peak
    return report


def threads_used(run) -> int | None:
    """The intra-op threads a finished CPU run trained on last (None on an accelerator)."""
    if run.device.type != "cpu":
        return None
    out = []
    probe = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    probe.start(), probe.join()  # a new thread reports the default, so ask the run's record
    return run.config.threads or run.trainer_threads


SIZES = ("n_layer", "n_head", "n_embd", "block_size", "batch_size")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmwidget bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="5; for --recipe, 1")
    parser.add_argument("--steps", type=int, default=400, help="measured steps per round")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--framework-rounds", type=int, default=9,
                        help="rounds of the your-own-loop and Trainer comparisons (short: 9 by default)")
    parser.add_argument("--no-frameworks", action="store_true",
                        help="leave out your-own-loop and Hugging Face Trainer comparisons")
    for name in SIZES:
        parser.add_argument("--" + name.replace("_", "-"), type=int, help="the model's (default: lmwidget's)")
    parser.add_argument("--recipe", choices=["nanogpt"],
                        help="instead: the command-line job against a bare loop on nanoGPT's CPU recipe")
    parser.add_argument("--data", help="with --recipe: tiny Shakespeare (a path, or 'shakespeare')")
    parser.add_argument("--iters", type=int, default=2000, help="with --recipe: iterations per run")
    args = parser.parse_args(argv)
    if args.recipe:
        if not args.data:
            parser.error("--recipe nanogpt needs --data: tiny Shakespeare, as a path or 'shakespeare'")
        from .recipe import nanogpt_cpu

        report = nanogpt_cpu(args.data, args.iters, args.rounds or 1)
    else:
        sizes = {name: getattr(args, name) for name in SIZES if getattr(args, name) is not None}
        report = benchmark(args.rounds or 5, args.steps, device=args.device, dtype=args.dtype,
                           compile=args.compile, frameworks=not args.no_frameworks,
                           framework_rounds=args.framework_rounds,
                           progress=lambda line: print(line, file=sys.stderr, flush=True), **sizes)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
