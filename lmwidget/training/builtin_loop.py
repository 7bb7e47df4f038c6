"""BuiltinLoop: lmwidget's own training loop, one step read top to bottom; the step boundary's work is the engine's (core.boundary)."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from torch.nn.utils import clip_grads_with_norm_

from lmwidget.checkpoint.saving import Checkpointer
from lmwidget.core.callbacks import Callbacks
from lmwidget.core.control import Control
from lmwidget.core.health import FiniteGuard, GradNorms, SpikeDetector, nonfinite_cause
from lmwidget.core.history import DRAIN_EVERY, History
from lmwidget.core.steering import Steered
from lmwidget.data.dataset import Dataset
from lmwidget.system.threads import ThreadTuner, cpu_threads
from . import probes, sharding, trainstate
from .config import TrainConfig
from .optim import lr_factor, make_optimizer, resolve_device
from .streams import Streams
from .trainerboundary import TrainerBoundary

SAMPLE_TOKENS = 200


class BuiltinLoop(Steered):
    """Runs the loop in whatever thread calls `run()`; knows nothing about widgets.

    Args:
        config: the run's options.
        model: the model to train (moved to the run's device).
        dataset: the tokens to train on.
        control: the requests from other threads.
        history: the record the loop writes.
        callbacks: called at the loop's points (on_train_begin, on_step_end, ...).
        handle: what callbacks receive as `run` (the Run); the loop never touches it.
        checkpoint_dir: where saves go (else config.checkpoint_dir, else ".").
        restore: a checkpoint (checkpoint.read) to continue from.
        sync: this process's RankSync in a torchrun job (DDP, or FSDP2 with config.fsdp;
            rank 0's control decides for every rank).

    Raises:
        ValueError: config.fsdp without a torchrun job to shard the model over.
    """

    def __init__(self, config: TrainConfig, model: torch.nn.Module, dataset: Dataset,
                 control: Control, history: History, callbacks: Callbacks | None = None,
                 handle=None, checkpoint_dir=None, restore: dict | None = None, sync=None):
        sharding.check_job(config.fsdp, sync)
        self.config = config
        self.sync = sync
        self.device = sync.device if sync is not None else resolve_device(config.device)
        self.model = model if config.fsdp and sync is not None else model.to(self.device)  # FSDP: shards move
        self.data = dataset.to(self.device)
        self.tokenizer = self.data.tokenizer  # kept once the data is let go of
        self.control = control
        self.history = self.record = history  # the record the step boundary writes events to
        # the compiled module shares the model's parameters; generate() uses the plain model
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.local_forward = self.forward  # evaluation and histograms: no collective
        self._shard, self._ddp = (0, 1), None
        self.together = True  # every rank takes part in the collectives (False once the loop ends)
        if sync is not None:
            self._ddp = sharding.shard(self.model, sync) if config.fsdp else sync.wrap(self.model)
            self.forward = torch.compile(self._ddp) if config.compile else self._ddp
            self._shard = (sync.rank, sync.world_size)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=config.dtype == "bfloat16")
        self.grad_norms = (sharding.ShardedGradNorms if config.fsdp else GradNorms)(model.named_parameters())
        self.params = self.grad_norms.params
        self.optimizer = make_optimizer(config, self.params)
        self.guard = FiniteGuard(self.optimizer, self.device)
        self.spikes = SpikeDetector(history, config.spike_factor) if config.spike_factor else None
        if self.spikes is not None:
            history.add_listener(self.spikes)
        self.callbacks = callbacks or Callbacks()
        self.handle = handle
        self.base_lr = config.lr
        self.grad_clip = config.grad_clip
        self.step = 0          # optimizer steps completed
        self.steering = TrainerBoundary(self)
        self.error: BaseException | None = None
        self.started = self.ended = None  # time.time() stamps
        self.threads = None    # the CPU intra-op threads the step uses now (None on a GPU)
        bpt = getattr(self.data, "bytes_per_token", None)  # a user's dataset may not know its bytes
        self._bits_per_nat_token = None if not bpt else {
            split: 1 / (math.log(2) * n) for split, n in bpt.items()}
        # tokens per optimizer step over all ranks; this rank trains on 1/world_size of them
        self.tokens_per_step = config.batch_size * config.block_size * config.grad_accum * self._shard[1]
        # torch threads adopt the last set_num_threads() lazily: fix the calling (user's)
        # thread's own count now, before run() sets the training thread's
        torch.get_num_threads()
        self.streams = Streams(config.seed, self.device)
        self.checkpointer = Checkpointer(self, Path(checkpoint_dir or config.checkpoint_dir or "."))
        self.checkpointer.writes = sync is None or sync.is_main  # rank 0 writes for every rank
        self.full_state = None  # under FSDP, the whole state while saves are written
        self.checkpointer.gathered = (lambda: sharding.gathered(self)) if config.fsdp else contextlib.nullcontext
        self.restored_from = None  # the checkpoint's path, for a resumed run
        self.clock0 = 0.0          # where the run's clock starts (a resumed run's goes on)
        self.callback_states = []  # a resumed run's saved callback states: [class name, state]
        if restore is not None:  # under FSDP, each rank keeps its shards of the saved tensors
            trainstate.restore(self, sharding.sharded(self.model, self.optimizer, restore)
                               if config.fsdp else restore)

    def release(self) -> None:
        """Let go of the model, its optimizer and the data (the run ended and was closed):
        what they hold on the host or the device can be freed. The layer names stay."""
        self.model = self.forward = self.local_forward = self._ddp = None
        self.optimizer = self.guard = self.params = self.data = None
        self.steering.release()

    @property
    def name(self) -> str:
        """The run's name in messages ("run 3")."""
        return getattr(self.handle, "name", "the run")

    @property
    def max_steps(self) -> int:
        return self.config.max_steps

    def checkpoint(self, kind: str) -> dict:
        """Everything needed to continue this run exactly (trainstate.payload), whole under FSDP."""
        payload = trainstate.payload(self, kind)
        if self.full_state is not None:
            payload["trainer"]["model"], payload["trainer"]["optimizer"] = self.full_state
        return payload

    def lr_at(self, step: int) -> float:
        return self.base_lr * lr_factor(self.config, step)

    def run(self) -> None:
        """Train until max_steps or a stop; a failure is kept in `error`, not raised."""
        self.started = time.time()
        self.history.start_clock(self.clock0)
        tuner = None
        if self.device.type == "cpu" and self.config.threads:
            torch.set_num_threads(self.config.threads)  # this thread's only
            self.threads = self.config.threads
        elif self.device.type == "cpu":  # every CPU or one fewer, whichever trains faster now
            tuner = ThreadTuner(cpu_threads(0))
            self.threads = tuner.threads
        if self.streams.resumed:
            self.history.record_event(self.step, "restore", None, f"resumed from {self.restored_from}")
        self.streams.start()
        try:
            self.model.train()
            self.callbacks.call("on_train_begin", self.handle)
            trainstate.restore_callbacks(self.callbacks, self.callback_states)
            while self.step < self.config.max_steps and self.steering.boundary():
                self._train_step()
                if tuner is not None:
                    tuner.tick(time.perf_counter())
                    self.threads = tuner.threads
            self.poll_guard(wait=True)  # the last steps' checks (on a GPU)
            self.streams.ended()  # what a save from now on continues from
            # the requests made during the last step, and any made later, in one order
            self.steering.end("finished" if self.step >= self.config.max_steps else "stopped")
            self.checkpointer.at_end()
        except BaseException as e:  # shown in the dashboard and re-raised by Run.wait()
            self.streams.ended()
            self._fail(e)
        finally:
            self.together = self.grad_norms.together = False
            self.history.drain()
            self.ended = time.time()
        try:
            self.callbacks.call("on_train_end", self.handle)
        except BaseException as e:
            self._fail(e)

    def _fail(self, error: BaseException) -> None:
        self.control.close()
        self.checkpointer.cancel(error)
        if self.error is None:
            self.error = error
        self.steering.state = "failed"

    def _train_step(self) -> None:
        """One optimizer step: set the LR, forward and backward over the micro-batches, clip,
        update, time, evaluate when due, log (the step boundary's work is not here)."""
        cfg = self.config
        step = self.step + 1
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        loss_sum = None  # the step's mean loss over its micro-batches
        for micro in range(cfg.grad_accum):
            x, y = self.data.batch("train", cfg.batch_size, cfg.block_size, self.streams.batch, self._shard)
            # the gradients are averaged across ranks once, in the last micro-step
            quiet = self.sync is not None and micro < cfg.grad_accum - 1
            with self.autocast, sharding.accumulating(self._ddp, quiet):
                _, loss = self.forward(x, y)
            if cfg.grad_accum > 1:
                loss = loss / cfg.grad_accum
            loss.backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()  # the mean
        # the norms stay device tensors (reading them here would be a host-device sync); the
        # histograms asked for are taken now, while the gradients exist
        grad_norm, layers = self.steering.gradients(step)
        self.history.layer_grad_norms = (step, layers)
        if self.grad_clip > 0:
            clip_grads_with_norm_(self.params, self.grad_clip, grad_norm)
        if self.sync is not None:  # means over the ranks: every rank skips or steps alike
            # (the rate of this rank's forward and backward: its optimizer step comes after)
            rate = self.tokens_per_step / self._shard[1] / (time.perf_counter() - t0)
            loss_sum, grad_norm, tokens_per_sec = self.sync.reduce(step, loss_sum, grad_norm, rate)
        if self.guard.check(step, loss_sum, grad_norm):  # a non-finite step is skipped
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if self.sync is None:
            tokens_per_sec = self.tokens_per_step / dt
        val_loss = self.evaluate() if self._eval_due(step) else None
        # the row: device tensors, read in batches when a view is about to draw
        pending = self.history.push(step=step, tokens=step * self.tokens_per_step,
                                    time=self.history.clock(), lr=lr, tokens_per_sec=tokens_per_sec,
                                    step_time=dt, loss=loss_sum, grad_norm=grad_norm, val_loss=val_loss,
                                    **self.per_byte(loss_sum, val_loss))
        self.step = step  # after the row: run.step never runs ahead of the history
        if val_loss is not None:
            self.history.record_event(step, "eval", val_loss)
        self.poll_guard()
        self.checkpointer.after_step(step, val_loss)
        if pending >= DRAIN_EVERY:  # bounded memory when no dashboard drains for us
            self.history.drain()
        if self.callbacks.wants("on_step_end"):
            self.callbacks.call("on_step_end", self.handle, step, {
                "loss": loss_sum, "grad_norm": grad_norm, "val_loss": val_loss, "lr": lr,
                "tokens": step * self.tokens_per_step})
        if val_loss is not None and self.callbacks.wants("on_eval"):
            self.callbacks.call("on_eval", self.handle, step, float(val_loss))

    def per_byte(self, loss, val_loss) -> dict:
        """Bits per byte from the losses (nats per token): device tensors stay on the device."""
        bits = self._bits_per_nat_token
        if bits is None:
            return {}
        out = {"bpb": loss * bits["train"]}
        if val_loss is not None:
            out["val_bpb"] = val_loss * bits["val"]
        return out

    def poll_guard(self, wait: bool = False) -> None:
        """Report the non-finite steps among those whose check has landed (`wait`: all)."""
        for bad in self.guard.poll(wait=wait):
            self.nonfinite(*bad)

    def nonfinite(self, step: int, loss: float, grad_norm: float) -> None:
        """A step whose loss or grad norm was not finite: its update was skipped."""
        self.steering.nonfinite(step, nonfinite_cause(loss, grad_norm),
                                loss if not math.isfinite(loss) else grad_norm,
                                pause=self.config.anomaly == "pause", update="the update was skipped")

    def _eval_due(self, step: int) -> bool:
        every = self.config.eval_interval
        return every > 0 and (step % every == 0 or step == self.config.max_steps)

    @torch.no_grad()
    def evaluate(self) -> torch.Tensor:
        """Mean validation loss over `eval_iters` batches, as a device tensor."""
        sharding.check_together(self, "an evaluation")
        cfg = self.config
        self.model.eval()
        with self.autocast:
            losses = [self.local_forward(*self.data.batch("val", cfg.batch_size, cfg.block_size,
                                                          self.streams.eval))[1]
                      for _ in range(cfg.eval_iters)]
        self.model.train()
        return torch.stack(losses).mean()

    def generate_sample(self, max_new_tokens: int = SAMPLE_TOKENS) -> str:
        """Text from the current model, without disturbing the training RNG streams."""
        sharding.check_together(self, "a sample")
        seed = self.config.seed + 7919 * self.step + len(self.history.samples_since(0))
        return probes.sample_text(self.model, self.data.tokenizer, self.config.block_size, seed,
                                  max_new_tokens, self.device)

    def fresh_grads(self, params: list) -> list:
        """Paused or ended: the gradients of one fresh batch at the current weights, with no
        update and no draw from the training RNG streams."""
        cfg = self.config
        seed = cfg.seed + 104729 + len(self.history.histograms_since(0))
        return probes.fresh_grads(self.local_forward, self.data, params, cfg.batch_size, cfg.block_size,
                                  self.autocast, seed, self.device)

    def set_lr(self, lr: float) -> bool:
        """A new base LR (the schedule still shapes it); False when it is the same."""
        changed, self.base_lr = lr != self.base_lr, lr
        return changed

    def set_grad_clip(self, grad_clip: float) -> bool:
        """A new clip norm (0: off); False when it is the same."""
        changed, self.grad_clip = grad_clip != self.grad_clip, grad_clip
        return changed

