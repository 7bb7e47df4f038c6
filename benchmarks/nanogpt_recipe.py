"""nanoGPT's CPU recipe for tiny Shakespeare (its README: 4 layers, 4 heads, 128 wide, block 64,
batch 12, dropout 0, 2,000 iterations, LR 1e-3 with 100 warmup steps and cosine decay to
1e-4, weight decay 0.1, clip 1.0), trained two ways, one after the other, in fresh processes:
`python -m lmwidget.train`, and a bare loop of our own written the way nanoGPT's train.py
trains (AdamW betas 0.9/0.99, decay on 2-D weights only). Prints ms per iteration and the
final validation loss of each (nanoGPT reports 1.88). Prints a JSON report.

    python benchmarks/nanogpt_recipe.py --data path/to/tinyshakespeare.txt [--iters 2000]
"""

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time

BARE = r"""
import json, math, sys, time, torch
from lmwidget.data import Dataset
from lmwidget.models import GPT
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="tiny Shakespeare: a path, or 'shakespeare'")
    parser.add_argument("--iters", type=int, default=2000)
    args = parser.parse_args()
    report = {"iters": args.iters}
    t0 = time.perf_counter()
    bare = subprocess.run([sys.executable, "-c", BARE, str(args.iters), args.data],
                          capture_output=True, text=True, check=True)
    report["bare_loop"] = {**json.loads(bare.stdout.strip().splitlines()[-1]),
                           "seconds": round(time.perf_counter() - t0, 1)}
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lmwidget.train", "--data", args.data, "--steps", str(args.iters),
                               *CLI, "--run-dir", run_dir, "--checkpoint-dir", run_dir, "--progress-interval", "600"],
                              capture_output=True, text=True, check=True)
        records = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl") if line.strip()]
    columns = {}
    for r in records:
        if r["type"] == "rows":  # columns of rows, in order
            for k, v in r["body"].items():
                columns.setdefault(k, []).extend(v)
    step_times = [t for t in columns.get("step_time", []) if t is not None]
    vals = [v for v in columns.get("val_loss", []) if v is not None and not math.isnan(v)]
    report["lmwidget_cli"] = {"ms_per_iter": 1e3 * sum(step_times) / max(1, len(step_times)),
                              "val_loss": vals[-1] if vals else None,
                              "seconds": round(time.perf_counter() - t0, 1),
                              "printed": re.findall(r"val[ _]loss[^\n]*", done.stdout)[-1:]}
    report["cli_speed_vs_bare"] = report["bare_loop"]["ms_per_iter"] / report["lmwidget_cli"]["ms_per_iter"]
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
