"""The cost benchmark: a bare PyTorch loop against lmwidget's loop with its dashboard updating.

    python -m lmwidget bench [--rounds 5] [--framework-rounds 9] [--steps 400] [--device auto] [--dtype bfloat16] [--compile]

prints a JSON report (see the README's "Performance" section for what each figure means).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np
import torch

from lmwidget.training.config import TrainConfig
from lmwidget.data.dataset import Dataset
from lmwidget.models.builtin import GPT, build_model, count_params
from lmwidget.system.threads import cpu_threads
from lmwidget.training.optim import resolve_device
from .frameworks import compare
from .loops import bare_loop, control_latency, in_thread, lmwidget_loop
from .recipe import nanogpt_cpu
from .traffic import CountingComm, install_counting_comm, scaling

# dense bf16 tensor-core peaks (FLOP/s) by a substring of torch.cuda.get_device_name()
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                   "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
                   "V100": 125e12, "T4": 65e12}



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
        report.update(compare(framework_rounds or rounds, steps, steps // 2, warmup, config, dataset,
                              init_state))
    peak = peak_flops(device)
    if peak:
        per_token = flops_per_token(model, config.block_size)
        report["mfu_bare"] = report["tokens_per_sec_bare"] * per_token / peak
        report["mfu_lmwidget"] = report["tokens_per_sec_lmwidget"] * per_token / peak
    return report


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
