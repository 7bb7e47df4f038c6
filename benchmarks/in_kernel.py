"""Training in a real kernel: a plain loop in a cell (the main thread, torch's default
threads) against lmwidget.train() of the same model with its dashboard displayed, interleaved.
The model is a user's own (a 2-layer nn.TransformerEncoder, batch 16 x 64 characters); both
sides clip and step AdamW alike. First, in the fresh kernel, startup: `%load_ext lmwidget`,
and from `%lmtrain` to the first point of the loss chart. Prints a JSON report.

    python benchmarks/in_kernel.py [--rounds 3] [--seconds 12]
"""

import argparse
import ast
import json
import queue
import statistics
import sys
import tempfile
import time

from jupyter_client import KernelManager

SETUP = """
import time, torch, torch.nn as nn, torch.nn.functional as F
import lmwidget
data = lmwidget.Dataset.load("builtin")
B, T = 16, 64

class Encoder(nn.Module):
    def __init__(self, vocab_size, n_embd=128):
        super().__init__()
        self.block_size = T
        self.embed = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Parameter(torch.zeros(T, n_embd))
        layer = nn.TransformerEncoderLayer(n_embd, 4, 4 * n_embd, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(n_embd, vocab_size)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T))
    def forward(self, idx, targets=None):
        t = idx.shape[1]
        x = self.encoder(self.embed(idx) + self.pos[:t], mask=self.mask[:t, :t], is_causal=True)
        logits = self.head(x)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

def plain_loop(seconds):
    torch.manual_seed(0)
    model = Encoder(data.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    steps, t0 = 0, None
    while t0 is None or time.perf_counter() - t0 < seconds:
        if t0 is None and steps == 10:  # warmed up: count from here
            t0, steps = time.perf_counter(), 0
        x, y = data.batch("train", B, T, gen)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps += 1
    return steps * B * T / (time.perf_counter() - t0)

torch.randn(256, 256) @ torch.randn(256, 256)  # the user has run torch ops on the main thread
"""

START = """
torch.manual_seed(0)
run = lmwidget.train(model=Encoder(data.vocab_size), data="builtin", max_steps=10**7, batch_size=B,
                     block_size=T, lr=1e-3, eval_interval=0)
"""


STARTUP = """
import time as _time
_t0 = _time.perf_counter()
%load_ext lmwidget
_t1 = _time.perf_counter()
run = %lmtrain --steps 100000
_t2 = _time.perf_counter()
while not len(run.dashboard.charts["loss"].marks["train"].x):
    _time.sleep(0.005)
_t3 = _time.perf_counter()
run.stop(); run.wait()
import sys as _sys
print({"load_ext_s": round(_t1 - _t0, 2), "lmtrain_returns_s": round(_t2 - _t1, 2),
       "lmtrain_to_first_point_s": round(_t3 - _t1, 2),
       "optional_modules_imported": sorted(m for m in ("transformers", "lightning", "tokenizers",
           "datasets", "tensorboard", "torch.utils.tensorboard") if m in _sys.modules)})
"""


class Client:
    def __init__(self, cwd):
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=cwd)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code, timeout=600):
        msg_id = self.kc.execute(code)
        out = []
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"no answer in {timeout} s to {code[:80]!r}") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                raise RuntimeError("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)

    def value(self, expression):
        return json.loads(self.run(f"import json as _j; print(_j.dumps({expression}))").strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        k = Client(cwd)
        try:
            startup = ast.literal_eval(k.run(STARTUP).strip().splitlines()[-1])
            k.run(SETUP)
            plain, lmw, cell_ms, lmw_threads = [], [], [], []
            for _ in range(args.rounds):  # interleaved: plain, lmwidget, plain, ...
                plain.append(k.value(f"plain_loop({args.seconds})"))
                k.run(START)
                while k.value("run.step") < 20:
                    time.sleep(0.2)
                t0, s0 = time.perf_counter(), k.value("run.step")
                time.sleep(args.seconds)  # the kernel's main thread is idle, as between cells
                s1, t1 = k.value("run.step"), time.perf_counter()
                lmw_threads.append(k.value("run.threads"))
                c0 = time.perf_counter()  # the kernel stays responsive: a cell runs meanwhile
                k.run("sum(range(100_000))")
                cell_ms.append(1e3 * (time.perf_counter() - c0))
                k.run("run.stop(); run.wait()")
                lmw.append((s1 - s0) * 16 * 64 / (t1 - t0))
            info = k.value("{'threads': torch.get_num_threads(), 'torch': torch.__version__, "
                           "'cpus': lmwidget.system.resources.usable_cpus(), 'training_threads': "
                           "getattr(lmwidget, 'threads', lmwidget.training.trainer).cpu_threads(0)}")
        finally:
            k.kc.stop_channels()
            k.km.shutdown_kernel(now=True)
    report = {**info, "startup": startup, "rounds": args.rounds, "seconds": args.seconds,
              "plain_loop_tokens_per_sec": [round(v) for v in plain],
              "lmwidget_tokens_per_sec": [round(v) for v in lmw],
              "lmwidget_threads_at_round_end": lmw_threads,
              "ratio": round(statistics.median(lmw) / statistics.median(plain), 3),
              "ratios_per_round": [round(b / a, 3) for a, b in zip(plain, lmw)],
              "a_cell_while_training_ms": [round(v, 1) for v in cell_ms]}
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
