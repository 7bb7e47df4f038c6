"""nanoGPT's CPU recipe, side by side: the command-line job against a bare loop of the same recipe.

The recipe is nanoGPT's README command for tiny Shakespeare on a CPU: 4 layers, 4 heads, 128
wide, block 64, batch 12, dropout 0, 2,000 iterations, LR 1e-3 with 100 warmup steps and
cosine decay to 1e-4, weight decay 0.1, clip 1.0; nanoGPT reports a validation loss of 1.88.
The bare loop is our own, written the way nanoGPT's train.py trains (AdamW betas 0.9/0.99,
decay on 2-D weights only). Rounds alternate the two, each in a fresh process.

    python -m lmwidget bench --recipe nanogpt --data path/to/tinyshakespeare.txt [--iters 2000] [--rounds 1]
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time

NANOGPT_VAL_LOSS = 1.88  # nanoGPT's README, for this recipe at 2,000 iterations
QUALITY_TOLERANCE = 0.03

BARE = r"""
import json, math, sys, time, torch
from lmwidget.data.dataset import Dataset
from lmwidget.models.builtin import GPT
iters, data_path = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(1337)
data = Dataset.load(data_path)
model = GPT(data.vocab_size, 64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-3, betas=(0.9, 0.99), fused=True)
def lr_at(it):
    if it < 100:
        return 1e-3 * (it + 1) / 101
    ratio = min(1.0, (it - 100) / (iters - 100))
    return 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)
gen, eval_gen = torch.Generator().manual_seed(1337), torch.Generator().manual_seed(1)
@torch.no_grad()
def val_loss():
    model.eval()
    losses = [model(*data.batch("val", 12, 64, eval_gen))[1] for _ in range(20)]
    model.train()
    return float(torch.stack(losses).mean())
train_time, last = 0.0, None
for it in range(iters + 1):
    if it % 250 == 0 or it == iters:
        last = val_loss()
    if it == iters:
        break
    t0 = time.perf_counter()
    for g in opt.param_groups:
        g["lr"] = lr_at(it)
    x, y = data.batch("train", 12, 64, gen)
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    train_time += time.perf_counter() - t0
print(json.dumps({"ms_per_iter": 1e3 * train_time / iters, "val_loss": last}))
"""

CLI = ["--model", "gpt", "--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size", "64",
       "--batch-size", "12", "--dropout", "0", "--lr", "1e-3", "--schedule", "cosine",
       "--warmup-steps", "100", "--min-lr-ratio", "0.1", "--weight-decay", "0.1", "--grad-clip", "1.0",
       "--eval-interval", "250", "--eval-iters", "20"]


def bare_loop(data: str, iters: int) -> dict:
    """The recipe's bare loop in a fresh process: ms per iteration and the last validation loss."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BARE, str(iters), data], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the bare loop failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - t0, 1)}


def cli_job(data: str, iters: int) -> dict:
    """`python -m lmwidget train` on the recipe: ms per iteration (its steps' own times, as the
    bare loop counts them) and the last validation loss, read from its metrics file."""
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lmwidget", "train", "--data", data, "--steps", str(iters),
                               *CLI, "--run-dir", run_dir, "--checkpoint-dir", run_dir,
                               "--progress-interval", "600"], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"python -m lmwidget train failed:\n{done.stderr[-2000:]}")
        seconds = round(time.perf_counter() - t0, 1)
        columns: dict[str, list] = {}
        with open(f"{run_dir}/metrics.jsonl") as f:
            for line in f:
                record = json.loads(line) if line.strip() else {}
                if record.get("type") == "rows":  # columns of rows, in order
                    for k, v in record["body"].items():
                        columns.setdefault(k, []).extend(v)
    step_times = [t for t in columns.get("step_time", []) if t is not None]
    vals = [v for v in columns.get("val_loss", []) if v is not None and not math.isnan(v)]
    return {"ms_per_iter": 1e3 * sum(step_times) / max(1, len(step_times)),
            "val_loss": vals[-1] if vals else None, "seconds": seconds}


def nanogpt_cpu(data: str, iters: int = 2000, rounds: int = 1) -> dict:
    """Rounds of the bare loop then the command-line job; the medians, their ratio, and how far
    the job's validation loss lands from nanoGPT's 1.88."""
    bare, cli = [], []
    for _ in range(rounds):
        bare.append(bare_loop(data, iters))
        cli.append(cli_job(data, iters))
    ms_bare = statistics.median(r["ms_per_iter"] for r in bare)
    ms_cli = statistics.median(r["ms_per_iter"] for r in cli)
    val = statistics.median(r["val_loss"] for r in cli)
    report = {"recipe": "nanogpt-shakespeare-char-cpu", "iters": iters, "rounds": rounds,
              "bare_loop": bare, "lmwidget_cli": cli,
              "ms_per_iter_bare": ms_bare, "ms_per_iter_cli": ms_cli,
              "cli_speed_vs_bare": ms_bare / ms_cli,  # > 1: the job is faster
              "val_loss_cli": val, "val_loss_nanogpt": NANOGPT_VAL_LOSS}
    if iters == 2000:
        report["val_loss_within_0.03_of_nanogpt"] = abs(val - NANOGPT_VAL_LOSS) <= QUALITY_TOLERANCE
    return report
