"""What steering costs a loop that is not lmwidget's: your own loop and the Hugging Face Trainer,
each with lmwidget attached and its dashboard redrawing, against the same loop bare."""

from __future__ import annotations

import statistics
import threading
import time

import torch
from torch.nn.utils import clip_grad_norm_

from .config import TrainConfig
from .data import Dataset
from .models import build_model
from . import threads
from .threads import cpu_threads


def _threaded(fn):
    """fn() on a new thread with lmwidget's CPU thread count, as a background loop runs."""
    out = []

    def target():
        if not torch.cuda.is_available():
            torch.set_num_threads(cpu_threads(0))
        out.append(fn())

    thread = threading.Thread(target=target)
    threads.start(thread, cpu=not torch.cuda.is_available())
    thread.join()
    return out[0]


def own_loop(config: TrainConfig, dataset: Dataset, init_state: dict, steps: int, warmup: int,
             steered: bool) -> tuple[float, float]:
    """Tokens/s of a user's plain loop (batch, forward, backward, clip, AdamW step): bare, or
    with `lmwidget.steer(...)`, one `run.tick(loss)` a step (lmwidget clips then) and the
    dashboard redrawing; and the training thread's CPU ms a step in `tick()`, or in the clip."""
    from .loop import Loop

    model = build_model(config.model, dataset.vocab_size, config.block_size, config.n_layer,
                        config.n_head, config.n_embd, config.dropout)
    model.load_state_dict(init_state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    run = None
    if steered:
        run = Loop(model, optimizer, tokens_per_step=config.batch_size * config.block_size,
                   grad_clip=config.grad_clip)
        run.dashboard  # built here, redrawing from its own thread

    def train():
        cpu = 0.0  # this thread's CPU in tick() (which clips), or in the clip it replaces
        for i in range(warmup + steps):
            if i == warmup:
                t0, cpu = time.perf_counter(), 0.0
            x, y = dataset.batch("train", config.batch_size, config.block_size, gen)
            _, loss = model(x, y)
            loss.backward()
            c0 = time.thread_time()
            if run is not None:
                run.tick(loss)
            else:
                clip_grad_norm_(model.parameters(), config.grad_clip)
            cpu += time.thread_time() - c0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return steps * config.batch_size * config.block_size / (time.perf_counter() - t0), 1e3 * cpu / steps

    if run is None:
        return _threaded(train)
    result = []
    run.start(lambda: result.append(train()))
    run.wait()
    run.dashboard.settle()
    return result[0]


def hf_trainer(steps: int, warmup: int, steered: bool, seed: int = 0) -> tuple[float, float]:
    """Tokens/s of a Hugging Face Trainer (a 2-layer GPT-2, batch 16 x 64 characters):
    `trainer.train()` bare, or through `lmwidget.fit(trainer)` with the dashboard redrawing;
    and the training thread's CPU ms a step in lmwidget's hooks (0 bare)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    from .data import builtin_text
    from .hf_trainer import PRINTERS, HFRun

    text = builtin_text()[:200_000]
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text])
    block = 64

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return (len(ids) - 1) // block

        def __getitem__(self, i):
            x = ids[i * block:(i + 1) * block]
            return {"input_ids": x, "labels": x.clone()}

    class Clock(TrainerCallback):  # on both sides: when the measured steps start and end
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup:
                self.t0 = time.perf_counter()
            self.t1 = time.perf_counter()

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(chars), n_positions=block, n_embd=64, n_layer=2,
                                       n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       bos_token_id=0, eos_token_id=0))
    args = TrainingArguments(output_dir="lmwidget-bench-hf", max_steps=warmup + steps,
                             per_device_train_batch_size=16, learning_rate=3e-3, report_to=[],
                             save_strategy="no", logging_strategy="no", use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True, dataloader_num_workers=0, seed=seed)
    clock = Clock()
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[clock])
    for printer in [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ in PRINTERS]:
        trainer.remove_callback(printer)  # on both sides: nothing printed, as lmwidget.fit does
    cpu = [0.0, 0]  # the training thread's CPU in lmwidget's hooks, and the steps they saw
    if steered:
        run = HFRun(trainer)
        for hook in ("before_update", "step_end"):  # what lmwidget does in each step
            setattr(run, hook, _cpu_timed(getattr(run, hook), cpu, hook == "step_end"))
        run.dashboard
        run.start(run.run_trainer)
        run.wait()
        run.dashboard.settle()
    else:
        _threaded(trainer.train)
    return steps * 16 * block / (clock.t1 - clock.t0), 1e3 * cpu[0] / max(cpu[1], 1)


def _cpu_timed(fn, total: list, counts: bool):
    def timed(*args, **kwargs):
        c0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            total[0] += time.thread_time() - c0
            total[1] += counts
    return timed


def compare(rounds: int, own_steps: int, hf_steps: int, warmup: int, config: TrainConfig,
            dataset: Dataset, init_state: dict) -> dict:
    """Both comparisons, interleaved round by round, in turn bare first and steered first
    (bare, steered, steered, bare, ...), so a machine that drifts favours neither side."""
    own = {"bare": [], "lmwidget": [], "cpu_bare": [], "cpu_lmwidget": []}
    hf = {"bare": [], "lmwidget": [], "cpu_bare": [], "cpu_lmwidget": []}
    try:
        import transformers  # noqa: F401
    except ImportError:
        hf = None
    for r in range(rounds):
        for steered in (False, True) if r % 2 == 0 else (True, False):
            side = "lmwidget" if steered else "bare"
            for sides, measure in ((own, lambda: own_loop(config, dataset, init_state, own_steps, warmup, steered)),
                                   (hf, lambda: hf_trainer(hf_steps, warmup, steered=steered))):
                if sides is not None:
                    tokens_per_sec, cpu_ms = measure()
                    sides[side].append(tokens_per_sec)
                    sides["cpu_" + side].append(cpu_ms)
    report = {"own_loop": _ratio(own)}
    report["hf_trainer"] = _ratio(hf) if hf is not None else "transformers is not installed"
    return report


def _ratio(sides: dict) -> dict:
    bare, steered = statistics.median(sides["bare"]), statistics.median(sides["lmwidget"])
    return {"tokens_per_sec_bare": bare, "tokens_per_sec_lmwidget": steered, "ratio": steered / bare,
            "best_ratio": max(sides["lmwidget"]) / max(sides["bare"]), "rounds": len(sides["bare"]),
            # CPU time of the training thread, which no other process inflates: the cost by construction
            "cpu_ms_per_step_bare": statistics.median(sides["cpu_bare"]),
            "cpu_ms_per_step_lmwidget": statistics.median(sides["cpu_lmwidget"])}
