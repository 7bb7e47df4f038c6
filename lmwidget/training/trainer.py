"""The training loop: steps with accumulation and clipping, evaluation, samples, saves, control."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from torch.nn.utils import clip_grads_with_norm_

from lmwidget.core.callbacks import Callbacks
from lmwidget.checkpoint.saving import FORMAT, VERSION, Checkpointer, CheckpointError, check_fits, config_state, tokenizer_state
from .config import TrainConfig
from lmwidget.core.control import Control
from lmwidget.data.dataset import Dataset
from .distributed import PAUSED_HEARTBEAT
from lmwidget.models.hf import unwrap
from lmwidget.core.health import FiniteGuard, GradNorms, SpikeDetector, histogram, nonfinite_cause
from lmwidget.core.history import DRAIN_EVERY, History
from lmwidget.models.builtin import GenerateMixin, sample_tokens
from .optim import lr_factor, make_optimizer, resolve_device
from lmwidget.checkpoint.rngstate import global_rng, set_global_rng
from lmwidget.core.steering import Steered, Steering
from lmwidget.system.threads import ThreadTuner, cpu_threads

SAMPLE_TOKENS = 200


class Trainer(Steered):
    """Runs the loop in whatever thread calls `run()`; knows nothing about widgets."""

    def __init__(self, config: TrainConfig, model: torch.nn.Module, dataset: Dataset,
                 control: Control, history: History, callbacks: Callbacks | None = None,
                 handle=None, checkpoint_dir=None, restore: dict | None = None, sync=None):
        """`handle` is what callbacks receive as `run` (the Run); the loop never touches it.
        `restore`: a checkpoint (checkpoint.read) to continue from. `sync`: this process's
        RankSync in a torchrun job (DDP; rank 0's control decides for every rank)."""
        self.config = config
        self.sync = sync
        self.device = sync.device if sync is not None else resolve_device(config.device)
        self.model = model.to(self.device)
        self.data = dataset.to(self.device)
        self.control = control
        self.history = history
        # the compiled module shares the model's parameters; generate() uses the plain model
        self.forward = torch.compile(self.model) if config.compile else self.model
        self._local_forward = self.forward  # evaluation and histograms: no collective
        self._shard = (0, 1)
        if sync is not None:
            ddp = sync.wrap(self.model)
            self.forward = torch.compile(ddp) if config.compile else ddp
            self._ddp = ddp
            self._shard = (sync.rank, sync.world_size)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=config.dtype == "bfloat16")
        self.grad_norms = GradNorms(model.named_parameters())
        self.params = self.grad_norms.params
        self.optimizer = make_optimizer(config, self.params)
        self.guard = FiniteGuard(self.optimizer, self.device)
        self.spikes = SpikeDetector(history, config.spike_factor) if config.spike_factor else None
        if self.spikes is not None:
            history.add_listener(self.spikes)
        self.callbacks = callbacks or Callbacks()
        self.handle = handle
        self._histogram_of = None        # the layer group whose histograms the next step takes
        self.base_lr = config.lr
        self.grad_clip = config.grad_clip
        self.step = 0          # optimizer steps completed
        self.record = history  # what Steering writes its events to
        self.steering = _Boundary(self)
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
        self._batch_gen = torch.Generator().manual_seed(config.seed)
        self._eval_gen = torch.Generator().manual_seed(config.seed + 1)
        self.checkpointer = Checkpointer(self, Path(checkpoint_dir or config.checkpoint_dir or "."))
        self.checkpointer.writes = sync is None or sync.is_main  # the ranks' states are equal
        self.restored_from = None  # the checkpoint's path, for a resumed run
        self.clock0 = 0.0          # where the run's clock starts (a resumed run's goes on)
        self._rng = None           # the global RNG states the loop starts from (None: seed them)
        self._callback_states = []  # a resumed run's saved callback states: [class name, state]
        self._pending_rng = None    # restored RNG states not yet set (the run started paused)
        if restore is not None:
            self._restore(restore)

    def release(self) -> None:
        """Let go of the model, its optimizer and the data (the run ended and was closed):
        what they hold on the host or the device can be freed. The layer names stay."""
        self.tokenizer = self.data.tokenizer
        self.model = self.forward = self._local_forward = self._ddp = None
        self.optimizer = self.guard = self.params = self.data = None
        self.grad_norms.params = []
        self._histogram_of = None

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The run's name in messages ("run 3")."""
        return getattr(self.handle, "name", "the run")

    @property
    def max_steps(self) -> int:
        return self.config.max_steps

    def checkpoint(self, kind: str) -> dict:
        """Everything needed to continue this run exactly, as tensors and plain values."""
        from lmwidget import __version__

        return {"format": FORMAT, "version": VERSION, "lmwidget": __version__,
                "torch": str(torch.__version__), "saved_at": time.time(), "kind": kind,
                "step": self.step, "config": config_state(self.config),
                "model_class": type(unwrap(self.model)).__name__, **tokenizer_state(self.data.tokenizer),
                "data_sha256": self.data.fingerprint(), "trainer": self.state_dict(),
                "history": self.history.state_dict()}

    def state_dict(self) -> dict:
        # running, a save is written by the loop between two steps: the live RNG states are
        # this step's. Paused or ended, other code may have drawn since: the loop's snapshot
        live = self.state == "running" and self.started is not None and not self.control.closed
        if live:  # on the loop's thread, between steps: settle the steps still being checked
            for bad in self.guard.poll(wait=True):
                self._nonfinite(*bad)
        rng = global_rng(self.device) if live else (self._rng or self._seeded_rng())
        return {"step": self.step, "base_lr": self.base_lr, "grad_clip": self.grad_clip,
                "state": self.state, "model": unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": {**rng, "batch": self._batch_gen.get_state(), "eval": self._eval_gen.get_state()},
                "anomaly": list(self.anomaly) if self.anomaly else None,
                "best_val_loss": self.checkpointer.best,
                "callbacks": [[type(cb).__name__, cb.state_dict() if callable(getattr(cb, "state_dict", None))
                               else None] for cb in self.callbacks.items]}

    def _seeded_rng(self) -> dict:
        """The global RNG states a fresh run starts from (see run())."""
        rng = global_rng(self.device)
        rng["torch"] = torch.Generator().manual_seed(self.config.seed).get_state()
        return rng

    def _restore(self, payload: dict) -> None:
        state, path = payload["trainer"], payload["path"]
        check_fits(unwrap(self.model), state["model"], path)  # before anything is copied into it
        # the saved groups carry the old optimizer's implementation flags: keep this one's
        flags = [{k: g[k] for k in ("fused", "foreach", "capturable", "differentiable") if k in g}
                 for g in self.optimizer.param_groups]
        try:  # first: it checks the groups and leaves the model's weights alone
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"the optimizer state in checkpoint {path} does not fit this "
                                  f"model's parameters: {e}") from None
        unwrap(self.model).load_state_dict(state["model"])
        for group, kept in zip(self.optimizer.param_groups, flags):
            group.update(kept, weight_decay=self.config.weight_decay)
            if "momentum" in group:
                group["momentum"] = self.config.momentum
        self.step = int(state["step"])
        self._batch_gen.set_state(state["rng"]["batch"])
        self._eval_gen.set_state(state["rng"]["eval"])
        self._rng = {k: state["rng"][k] for k in ("torch", "cuda", "python", "numpy")}
        self.steering.anomaly = tuple(state["anomaly"]) if state["anomaly"] else None
        self.checkpointer.best = float(state["best_val_loss"])
        self._callback_states = state["callbacks"]
        self.history.load_state_dict(payload["history"])
        if "samples" in state:  # lmwidget 0.1.0 kept them with the trainer
            for step, text in state["samples"]:
                self.history.add_sample(step, text)
        if self.spikes is not None:
            self.spikes.prime(self.history.since(0))
        self.clock0 = float(payload["history"]["clock"])
        self.restored_from = path

    def lr_at(self, step: int) -> float:
        return self.base_lr * lr_factor(self.config, step)

    def run(self) -> None:
        self.started = time.time()
        self.history.start_clock(self.clock0)
        tuner = None
        if self.device.type == "cpu" and self.config.threads:
            torch.set_num_threads(self.config.threads)  # this thread's only
            self.threads = self.config.threads
        elif self.device.type == "cpu":  # every CPU or one fewer, whichever trains faster now
            tuner = ThreadTuner(cpu_threads(0))
            self.threads = tuner.threads
        # dropout draws from torch's global RNG: seed it as the run starts, like nanoGPT
        # (the curve then repeats unless other code draws from that RNG during the run); a
        # resumed run goes on from the saved states
        if self._rng is None:
            torch.manual_seed(self.config.seed)
        else:
            # a run that starts paused (a branch) sets the process-wide RNGs when it is
            # resumed, not now: another run may be drawing from them meanwhile
            self._pending_rng = self._rng
            self.history.record_event(self.step, "restore", None, f"resumed from {self.restored_from}")
        try:
            self.model.train()
            self.callbacks.call("on_train_begin", self.handle)
            self._restore_callbacks()
            while self.step < self.config.max_steps and self.steering.boundary():
                self._train_step()
                if tuner is not None:
                    tuner.tick(time.perf_counter())
                    self.threads = tuner.threads
            for bad in self.guard.poll(wait=True):  # the last steps' checks (on a GPU)
                self._nonfinite(*bad)
            self._rng = global_rng(self.device)  # what a save from now on continues from
            # the requests made during the last step, and any made later, in one order
            self.steering.end("finished" if self.step >= self.config.max_steps else "stopped")
            self.checkpointer.at_end()
        except BaseException as e:  # shown in the dashboard and re-raised by Run.wait()
            self._rng = global_rng(self.device)
            self._fail(e)
        finally:
            self.history.drain()
            self.ended = time.time()
        try:
            self.callbacks.call("on_train_end", self.handle)
        except BaseException as e:
            self._fail(e)

    def keep_rng(self) -> None:
        """Pausing: keep the RNG states a save while paused continues from."""
        self._rng = self._pending_rng or global_rng(self.device)

    def set_pending_rng(self) -> None:
        """Resuming: set the restored RNG states a run that started paused has not set yet."""
        if self._pending_rng is not None:
            set_global_rng(self._pending_rng, self.device)
            self._pending_rng = None

    def _restore_callbacks(self) -> None:
        """Give the callbacks passed again on resume (same class, same place) their state."""
        for cb, (name, state) in zip(self.callbacks.items, self._callback_states):
            if state is not None and type(cb).__name__ == name and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(state)

    def _fail(self, error: BaseException) -> None:
        self.control.close()
        self.checkpointer.cancel(error)
        if self.error is None:
            self.error = error
        self.steering.state = "failed"

    def _train_step(self) -> None:
        cfg = self.config
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        loss_sum = None  # the step's mean loss over its micro-batches
        for micro in range(cfg.grad_accum):
            x, y = self.data.batch("train", cfg.batch_size, cfg.block_size, self._batch_gen, self._shard)
            # under DDP the gradients are averaged across ranks once, in the last micro-step
            quiet = self.sync is not None and micro < cfg.grad_accum - 1
            with self.autocast, (self._ddp.no_sync() if quiet else contextlib.nullcontext()):
                _, loss = self.forward(x, y)
            if cfg.grad_accum > 1:
                loss = loss / cfg.grad_accum
            loss.backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()  # the mean
        step = self.step + 1
        # the norms stay device tensors: reading them here would be a host-device sync
        grad_norm, layers = self.grad_norms()
        self.history.layer_grad_norms = (step, layers)
        if self._histogram_of is not None:
            self._take_histograms(step)
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
        pending = self.history.push(step=step, tokens=step * self.tokens_per_step,
                                    time=self.history.clock(), lr=lr, tokens_per_sec=tokens_per_sec,
                                    step_time=dt, loss=loss_sum, grad_norm=grad_norm, val_loss=val_loss,
                                    **self.per_byte(loss_sum, val_loss))
        self.step = step  # after the row: run.step never runs ahead of the history
        if val_loss is not None:
            self.history.record_event(step, "eval", val_loss)
        for bad in self.guard.poll():
            self._nonfinite(*bad)
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

    def _nonfinite(self, step: int, loss: float, grad_norm: float) -> None:
        """A step whose loss or grad norm was not finite: its update was skipped."""
        self.steering.nonfinite(step, nonfinite_cause(loss, grad_norm),
                                loss if not math.isfinite(loss) else grad_norm,
                                pause=self.config.anomaly == "pause", update="the update was skipped")

    def _take_histograms(self, step: int) -> None:
        """The weights and this step's gradients (before clipping) of the group asked for."""
        group, self._histogram_of = self._histogram_of, None
        params = self.grad_norms.group_params(group)
        grads = [p.grad.flatten() for p in params if p.grad is not None]
        self.history.add_histogram({
            "step": step, "group": group, "source": "this training step (before clipping)",
            "weights": histogram(torch.cat([p.detach().flatten() for p in params])),
            "grads": histogram(torch.cat(grads)) if grads else None})

    def _histograms_between_steps(self, group: str) -> None:
        """Paused or ended: the gradient of one fresh batch at the current weights, with no
        update and no draw from the training RNG streams."""
        cfg = self.config
        params = self.grad_norms.group_params(group)
        devices = [self.device] if self.device.type == "cuda" else []
        gen = torch.Generator().manual_seed(cfg.seed + 104729 + len(self.history.histograms_since(0)))
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            x, y = self.data.batch("train", cfg.batch_size, cfg.block_size, gen)
            with self.autocast:
                _, loss = self._local_forward(x, y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [g.flatten() for g in grads if g is not None]
        self.history.add_histogram({
            "step": self.step, "group": group, "source": "one fresh batch (taken between steps)",
            "weights": histogram(torch.cat([p.detach().flatten() for p in params])),
            "grads": histogram(torch.cat(grads)) if grads else None})

    def _eval_due(self, step: int) -> bool:
        every = self.config.eval_interval
        return every > 0 and (step % every == 0 or step == self.config.max_steps)

    @torch.no_grad()
    def evaluate(self) -> torch.Tensor:
        """Mean validation loss over `eval_iters` batches, as a device tensor."""
        cfg = self.config
        self.model.eval()
        with self.autocast:
            losses = [self._local_forward(*self.data.batch("val", cfg.batch_size, cfg.block_size,
                                                    self._eval_gen))[1]
                      for _ in range(cfg.eval_iters)]
        self.model.train()
        return torch.stack(losses).mean()

    def apply(self, kind: str, value, note: str = ""):
        """Carry out one request (the loop's thread, or any thread once the loop has ended);
        returns the event's value, a (kind, value, note) event, or False for no event."""
        if kind == "lr" and value != self.base_lr:
            self.base_lr = value
        elif kind == "grad_clip" and value != self.grad_clip:
            self.grad_clip = value
        elif kind == "sample":
            self.history.add_sample(self.step, self.generate_sample())
        elif kind == "evaluate":  # now, at this step: its row gets the validation loss
            value = self.evaluate()
            self.history.log(self.step, {"val_loss": value})
            return "eval", value, note or "asked for"
        elif kind == "save":
            self.checkpointer.run_jobs()  # each save records its own event
            return False
        elif kind == "histogram":
            if self.state == "running" and not self.control.closed:
                self._histogram_of = value  # taken during the next step, while gradients exist
            else:
                self._histograms_between_steps(value)
            return False
        else:
            return False  # a request that changes nothing is not an event
        return value

    def generate_sample(self, max_new_tokens: int = SAMPLE_TOKENS) -> str:
        """Text from the current model, without disturbing the training RNG streams."""
        tokenizer = self.data.tokenizer
        start = tokenizer.start_id
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(self.config.seed + 7919 * self.step + len(self.history.samples_since(0)))
            self.model.eval()
            try:
                idx = torch.full((1, 1), start, dtype=torch.long, device=self.device)
                own = getattr(self.model, "generate", None)
                if callable(own) and not isinstance(self.model, GenerateMixin):
                    out = own(idx, max_new_tokens)  # the user's model's own sampler
                else:  # ours: a context no longer than the run trains on, and its tokens only
                    limit = getattr(self.model, "block_size", None) or self.config.block_size
                    out = sample_tokens(self.model, idx, max_new_tokens,
                                        min(limit, self.config.block_size),
                                        vocab_size=tokenizer.vocab_size)
            finally:
                self.model.train()
        return tokenizer.decode(out[0, 1:].tolist())


class _Boundary(Steering):
    """lmwidget's own loop at a step boundary: under torchrun rank 0 decides for every
    rank; saves due from the last step are written once its requests are applied; the RNG
    states a save continues from are kept while paused."""

    def __init__(self, trainer: "Trainer"):
        super().__init__(trainer, trainer.apply)
        self.trainer = trainer

    def decide(self):
        decision = super().decide()
        sync = self.trainer.sync
        return decision if sync is None else sync.exchange(*decision)  # every rank acts alike

    def between(self) -> None:
        self.trainer.checkpointer.write_due()  # the last step's saves, with its requests applied

    def pausing(self) -> None:
        self.trainer.keep_rng()

    def resuming(self) -> None:
        self.trainer.set_pending_rng()

    def wait_paused(self) -> None:
        sync = self.trainer.sync
        if sync is None:
            self.control.wait_while_paused()
        elif sync.is_main:  # the others wait in the next exchange
            self.control.wait_while_paused(timeout=PAUSED_HEARTBEAT)
