"""Training scripts as a practitioner writes them (your own loop, the Hugging Face Trainer, Lightning), each made a job by one lmwidget line, run as processes for the tests: alone, under torchrun, or with Lightning's DDP.

Each script trains a tiny model on random tokens for STEPS steps (a test stops it long
before) and appends, on every rank, one line per optimizer step to trace-<rank>.jsonl:
[step, the LR the optimizer applies next]. Arguments: run_dir, out_dir, steps."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.harness.jobs import kill_tree
from tests.harness.pace import scaled

STEPS = 100_000

COMMON = '''
import json, os, sys
import torch
import torch.nn.functional as F
import lmwidget

run_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
torch.set_num_threads(1)
VOCAB, T, B = 64, 16, 8
WIDTH = int(os.environ.get("WIDTH", "32"))  # the model's width (a benchmark gives a larger one)


def trace(rank, step, lr):
    with open(os.path.join(out, f"trace-{rank}.jsonl"), "a") as f:
        f.write(json.dumps([step, lr]) + "\\n")
'''

LOOP = COMMON + '''
import torch.distributed as dist

ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
if ddp:
    dist.init_process_group("gloo")
rank = dist.get_rank() if ddp else 0
model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, WIDTH), torch.nn.Linear(WIDTH, VOCAB))
net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
run = lmwidget.steer(net, optimizer, run_dir=run_dir, max_steps=steps, tokens_per_step=B * T, grad_clip=1.0)
g = torch.Generator().manual_seed(rank)
for _ in range(steps):
    x = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    loss = F.cross_entropy(net(x[:, :-1]).reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    if not run.tick(loss):
        break
    if run.step == int(os.environ.get("FAIL_AT", "0")):
        raise RuntimeError(f"the data ran out at step {run.step}")
    trace(rank, run.step, optimizer.param_groups[0]["lr"])
    optimizer.step()
'''

HF = COMMON + '''
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=1_000_000):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        ids = torch.randint(0, VOCAB, (T,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


class Trace(TrainerCallback):
    def on_step_end(self, args, state, control, optimizer=None, **kw):
        trace(args.process_index, state.global_step, optimizer.param_groups[0]["lr"])


model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=T, n_embd=WIDTH, n_layer=1, n_head=2,
                                   bos_token_id=0, eos_token_id=0))
args = TrainingArguments(output_dir=os.path.join(out, "hf-out"), max_steps=steps, learning_rate=1e-3,
                         per_device_train_batch_size=B, logging_steps=10 ** 9, save_strategy="no",
                         report_to=[], use_cpu=os.environ.get("DEVICE", "cpu") == "cpu", disable_tqdm=True,
                         dataloader_num_workers=0,
                         ddp_find_unused_parameters=False)
trainer = Trainer(model=model, args=args, train_dataset=Tokens(), eval_dataset=Tokens(16),
                  callbacks=[lmwidget.HFCallback(run_dir=run_dir, tensorboard=os.environ.get("TB")), Trace()])
trainer.train()
'''

LIGHTNING = COMMON + '''
import lightning as L


class Bigram(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Embedding(VOCAB, WIDTH), torch.nn.Linear(WIDTH, VOCAB))

    def training_step(self, x, i):
        return F.cross_entropy(self.net(x[:, :-1]).reshape(-1, VOCAB), x[:, 1:].reshape(-1))

    def on_train_batch_end(self, outputs, batch, i):
        trace(self.global_rank, self.trainer.global_step, self.optimizers().param_groups[0]["lr"])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 1_000_000

    def __getitem__(self, i):
        return torch.randint(0, VOCAB, (T + 1,), generator=torch.Generator().manual_seed(i))


devices = int(os.environ.get("DEVICES", "1"))
with lmwidget.quiet():
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=devices,
                        strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0,
                        callbacks=[lmwidget.LightningCallback(run_dir=run_dir)])
trainer.fit(Bigram(), torch.utils.data.DataLoader(Tokens(), batch_size=B))
'''

SCRIPTS = {"loop": LOOP, "hf": HF, "lightning": LIGHTNING}


class ScriptRun:
    """One script, run as a process (torchrun with `nproc` ranks; Lightning starts its own
    with DEVICES=`devices`), its output in <out>/log."""

    def __init__(self, kind: str, out: Path, nproc: int = 0, devices: int = 1, steps: int = STEPS, env=None):
        self.out, self.run_dir = Path(out), Path(out) / "run"
        self.out.mkdir(parents=True, exist_ok=True)
        script = self.out / f"train_{kind}.py"
        script.write_text(SCRIPTS[kind])
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                    if nproc else [sys.executable])
        self.log = open(self.out / "log", "w")
        env = {**os.environ, "DEVICES": str(devices), "PYTHONWARNINGS": "ignore", **(env or {})}
        self.proc = subprocess.Popen([*launcher, str(script), str(self.run_dir), str(self.out), str(steps)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=self.out)

    def output(self) -> str:
        self.log.flush()
        return (self.out / "log").read_text()

    def wait_ready(self, timeout: float = 120.0) -> "ScriptRun":
        deadline = time.monotonic() + scaled(timeout)
        while not (self.run_dir / "connection.json").exists():
            assert self.proc.poll() is None, f"the script exited {self.proc.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no connection file within {timeout} s:\n{self.output()}"
            time.sleep(0.05)
        return self

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(scaled(timeout))

    def trace(self, rank: int) -> list[tuple[int, float]]:
        """[(step, LR applied next)] that rank `rank` traced, in order."""
        path = self.out / f"trace-{rank}.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [tuple(json.loads(line)) for line in lines if line.endswith("]")]

    def rank_events(self, rank: int, kinds) -> list[tuple]:
        """(step, kind, value) of the events rank `rank` wrote to its rank file."""
        path = self.run_dir / f"rank-{rank}.jsonl"
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        return [(e["step"], e["kind"], e["value"]) for e in events if e["kind"] in kinds]

    def kill(self) -> None:
        """The script and every process it started (torchrun's, Lightning's ranks)."""
        kill_tree(self.proc)
        self.log.close()
