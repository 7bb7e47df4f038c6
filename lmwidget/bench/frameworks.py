"""What steering costs a loop that is not lmwidget's: your own loop and the Hugging Face Trainer,
each with lmwidget attached and its dashboard redrawing, against the same loop bare: in rounds
of separate runs, and in one run whose steps alternate between the two by blocks."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time

import torch
from torch.nn.utils import clip_grad_norm_

from lmwidget.adapters.hf_trainer import PRINTERS, HFRun
from lmwidget.adapters.loop import Loop
from lmwidget.data.text import builtin_text
from lmwidget.training.config import TrainConfig
from lmwidget.data.dataset import Dataset
from lmwidget.models.builtin import build_model
from lmwidget.system import threads
from lmwidget.system.threads import cpu_threads


BLOCK = 10  # steps: in an interleaved run, lmwidget acts in every other block of this many


def alternating(block: int, warmup: int):
    """on(i): whether lmwidget acts in step i (from 0) of an interleaved run: from `warmup`
    on, in every other block of `block` steps, the first block bare."""
    return lambda i: i >= warmup and (i - warmup) // block % 2 == 1


def interleaved(times: list, warmup: int, block: int = BLOCK) -> dict:
    """Tokens/s with lmwidget against without, from one run whose steps alternate in blocks
    (`alternating`): the median over neighbouring pairs of blocks of the bare block's seconds
    over the steered one's. A pair spans a fraction of a second, so a machine that is slower
    for a while slows both of its sides."""
    pairs = [sum(times[i:i + block]) / sum(times[i + block:i + 2 * block])
             for i in range(warmup, len(times) - 2 * block + 1, 2 * block)]
    if not pairs:
        raise ValueError(f"an interleaved run of {len(times)} steps after {warmup} of warmup holds no "
                         f"pair of {block}-step blocks: give it at least {warmup + 2 * block} steps")
    q1, _, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
    return {"ratio": statistics.median(pairs), "pairs": len(pairs), "block_steps": block,
            "quartiles": [round(q1, 3), round(q3, 3)]}


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
             steered: bool, alternate: int = 0) -> tuple[float, float, list, float]:
    """Tokens/s of a user's plain loop (batch, forward, backward, clip, AdamW step): bare, or
    with `lmwidget.steer(...)`, one `run.tick(loss)` a step (lmwidget clips then) and the
    dashboard redrawing; the training thread's CPU ms a step in `tick()`, or in the clip;
    each step's seconds; and its mean intra-op threads (lmwidget's may train on one fewer,
    as its timing chooses). `alternate=k` (steered): `tick()` only in every other block of k
    steps, the bare clip in the others (see `interleaved`); unsteered, both halves are bare."""
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

    # alternate=k without lmwidget: both halves bare, the measurement's own noise
    on = alternating(alternate, warmup) if alternate and run is not None else lambda i: run is not None

    def train():
        cpu, times, threads = 0.0, [], 0  # this thread's CPU in tick() (which clips), or in the clip
        t = time.perf_counter()
        for i in range(warmup + steps):
            if i == warmup:
                t0, cpu = t, 0.0
            x, y = dataset.batch("train", config.batch_size, config.block_size, gen)
            _, loss = model(x, y)
            loss.backward()
            c0 = time.thread_time()
            if on(i):
                run.tick(loss)
            else:
                clip_grad_norm_(model.parameters(), config.grad_clip)
            cpu += time.thread_time() - c0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
            t += times[-1]
            threads += torch.get_num_threads() if i >= warmup else 0
        return (steps * config.batch_size * config.block_size / (t - t0), 1e3 * cpu / steps, times,
                threads / steps)

    if run is None:
        return _threaded(train)
    result = []
    run.start(lambda: result.append(train()))
    run.wait()
    run.dashboard.settle()
    return result[0]


def hf_trainer(steps: int, warmup: int, steered: bool, seed: int = 0,
               alternate: int = 0) -> tuple[float, float, list, float]:
    """Tokens/s of a Hugging Face Trainer (a 2-layer GPT-2, batch 16 x 64 characters):
    `trainer.train()` bare, or through `lmwidget.fit(trainer)` with the dashboard redrawing;
    the training thread's CPU ms a step in lmwidget's hooks (0 bare); each step's seconds;
    and its mean intra-op threads.
    `alternate=k` (steered): lmwidget's hooks act only in every other block of k steps."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

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

    class Clock(TrainerCallback):  # on both sides: when each step ends
        def on_train_begin(self, args, state, control, **kw):
            self.t, self.times, self.threads = time.perf_counter(), [], []

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.times.append(now - self.t)
            self.threads.append(torch.get_num_threads())
            self.t = now

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(chars), n_positions=block, n_embd=64, n_layer=2,
                                       n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       bos_token_id=0, eos_token_id=0))
    out = tempfile.mkdtemp(prefix="lmwidget-bench-hf-")  # nothing is saved; the Trainer wants one
    args = TrainingArguments(output_dir=out, max_steps=warmup + steps,
                             per_device_train_batch_size=16, learning_rate=3e-3, report_to=[],
                             save_strategy="no", logging_strategy="no", use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True, dataloader_num_workers=0, seed=seed)
    clock = Clock()
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[clock])
    for printer in [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ in PRINTERS]:
        trainer.remove_callback(printer)  # on both sides: nothing printed, as lmwidget.fit does
    cpu = [0.0, 0]  # the training thread's CPU in lmwidget's hooks, and the steps they saw
    try:
        if steered:
            run = HFRun(trainer)
            # what lmwidget does in each step, which all see as step i (from 0): the Trainer's
            # global_step is i until the optimizer steps, i + 1 at the step's end
            on = alternating(alternate, warmup) if alternate else lambda i: True
            hook = run.hook

            def hooked():
                hook()
                trainer.remove_callback(clock)  # after lmwidget's: a step's time holds all of it
                trainer.add_callback(clock)
                counted, bare = trainer.training_step, type(trainer).training_step.__get__(trainer)
                trainer.training_step = lambda *a, **k: (counted if on(trainer.state.global_step)
                                                         else bare)(*a, **k)

            run.hook = hooked
            for name, ahead in (("before_update", 0), ("step_end", 1)):
                setattr(run, name, _cpu_timed(getattr(run, name), cpu, name == "step_end",
                                              lambda ahead=ahead: on(trainer.state.global_step - ahead)))
            run.dashboard
            run.start(run.run_trainer)
            run.wait()
            run.dashboard.settle()
        else:
            _threaded(trainer.train)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return (steps * 16 * block / sum(clock.times[warmup:]), 1e3 * cpu[0] / max(cpu[1], 1), clock.times,
            statistics.fmean(clock.threads[warmup:]))


def _cpu_timed(fn, total: list, counts: bool, on):
    def timed(*args, **kwargs):
        if not on():
            return None
        c0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            total[0] += time.thread_time() - c0
            total[1] += counts
    return timed


def compare(rounds: int, own_steps: int, hf_steps: int, warmup: int, config: TrainConfig,
            dataset: Dataset, init_state: dict, interleaved_steps: int | None = None) -> dict:
    """Both comparisons, interleaved round by round, in turn bare first and steered first
    (bare, steered, steered, bare, ...), so a machine that drifts favours neither side; then
    each in one run of `interleaved_steps` (the Trainer half as many) alternating by blocks."""
    own = {key + side: [] for key in ("", "cpu_", "threads_") for side in ("bare", "lmwidget")}
    hf = {key + side: [] for key in ("", "cpu_", "threads_") for side in ("bare", "lmwidget")}
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
                    tokens_per_sec, cpu_ms, _, threads = measure()
                    sides[side].append(tokens_per_sec)
                    sides["cpu_" + side].append(cpu_ms)
                    sides["threads_" + side].append(threads)
    report = {"own_loop": _ratio(own)}
    report["hf_trainer"] = _ratio(hf) if hf is not None else "transformers is not installed"
    # then each in one run, lmwidget acting in every other block of BLOCK steps
    steps = (interleaved_steps or 10 * own_steps) // (2 * BLOCK) * 2 * BLOCK
    times = own_loop(config, dataset, init_state, steps, warmup, True, alternate=BLOCK)[2]
    report["own_loop"]["interleaved"] = interleaved(times, warmup)
    # the same bare loop in both halves: what the alternating measurement reads for no cost
    times = own_loop(config, dataset, init_state, steps, warmup, False, alternate=BLOCK)[2]
    report["own_loop"]["interleaved_bare_against_bare"] = interleaved(times, warmup)
    if hf is not None:
        times = hf_trainer(steps // 2 // (2 * BLOCK) * 2 * BLOCK, warmup, True, alternate=BLOCK)[2]
        report["hf_trainer"]["interleaved"] = interleaved(times, warmup)
    return report


def _ratio(sides: dict) -> dict:
    """The ratio is the median over rounds of each round's own ratio: a round's two sides run
    close together (the other framework's run between them), so a machine that is slower for
    a while slows both."""
    bare, steered = statistics.median(sides["bare"]), statistics.median(sides["lmwidget"])
    rounds = [s / b for b, s in zip(sides["bare"], sides["lmwidget"])]
    return {"tokens_per_sec_bare": bare, "tokens_per_sec_lmwidget": steered,
            "ratio": statistics.median(rounds), "round_ratios": [round(r, 3) for r in rounds],
            "best_ratio": max(sides["lmwidget"]) / max(sides["bare"]), "rounds": len(rounds),
            # CPU time of the training thread, which no other process inflates: the cost by construction
            "cpu_ms_per_step_bare": statistics.median(sides["cpu_bare"]),
            "cpu_ms_per_step_lmwidget": statistics.median(sides["cpu_lmwidget"]),
            # intra-op threads, the mean over each round's steps: lmwidget's timing may choose one fewer
            "threads_bare": [round(t, 2) for t in sides["threads_bare"]],
            "threads_lmwidget": [round(t, 2) for t in sides["threads_lmwidget"]]}
