"""The Hugging Face Trainer on the dashboard: a TrainerCallback that records every step and obeys the controls."""

from __future__ import annotations

import sys
import time

import torch

from lmwidget.data import tokens
from .chatter import quiet
from .loop import Loop

SAMPLE_TOKENS = 60
# generate() from one BOS token: nothing is padded, though transformers 5 drops the mask
# given, and warns when the pad token is the BOS or EOS token (then it cannot tell either)
UNPADDED = ((("transformers",), r"We strongly recommend passing in an `attention_mask`[\s\S]*"
                                r"You may ignore this warning if your `pad_token_id`"),)
# callbacks that print progress from the training thread: the dashboard shows it instead
PRINTERS = ("ProgressCallback", "NotebookProgressCallback", "PrinterCallback")


def is_hf_trainer(obj) -> bool:
    trainer = getattr(sys.modules.get("transformers"), "Trainer", None)
    return trainer is not None and isinstance(obj, trainer)


class HFRun(Loop):
    """A `transformers.Trainer`'s training, as a source: its callback (`self.callback`)
    records each optimizer step's loss (the training_step's, on the device), gradient norm
    before clipping (and each layer's) and LR applied, and evaluations' eval_loss; at each
    step end it carries out the controls with the Trainer's own means:

    pause: blocks in on_step_end · stop: control.should_training_stop · LR: every param
    group and the scheduler's base LRs · clip norm: args.max_grad_norm · save:
    control.should_save (the Trainer's own checkpoint-N directory) · evaluate:
    control.should_evaluate · sample: model.generate with the Trainer's tokenizer.

    Args:
        trainer: the transformers.Trainer.
        from_callback: made by a callback while `trainer.train()` runs (lmwidget.HFCallback).
        **options: Loop's (`tokens_per_step`, `checkpoint_dir`, `callbacks`, `name`, `sync`).
    """

    def __init__(self, trainer, *, from_callback: bool = False, **options):
        if not is_hf_trainer(trainer):
            raise TypeError(f"expected a transformers.Trainer; got {type(trainer).__name__}")
        if not from_callback and getattr(trainer, "is_in_train", False):
            raise RuntimeError("this Trainer is already training: wait for its train() to return, "
                               "or stop it, before lmwidget runs it")
        mine = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, _Bridge)]
        if mine:
            raise ValueError(f"this Trainer already has lmwidget's callback (for {mine[0].run.name}): "
                             f"a Trainer is watched by one run at a time; build a new Trainer, or "
                             f"trainer.remove_callback(...) first")
        args = trainer.args
        self.trainer = trainer
        self.tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
        max_steps = args.max_steps if args.max_steps and args.max_steps > 0 else None
        super().__init__(trainer.model, trainer.optimizer, trainer.lr_scheduler, max_steps=max_steps,
                         grad_clip=float(args.max_grad_norm or 0.0), **options)
        self._lr0 = float(args.learning_rate)
        self._loss = None      # the sum of this optimizer step's training_step losses (a device tensor)
        self._tokens = 0       # this optimizer step's input tokens
        self._norms = None     # (grad norm, per layer) measured before this step's clipping
        self._lr = None        # the LR this step applies
        self._t_step = None
        self._control = None   # the Trainer's control while a step boundary is carried out
        self.callback = _bridge()(self)
        self.unsupported = self._hf_limits()

    def _hf_limits(self) -> dict:
        out = {}
        if self.tokenizer is None or not callable(getattr(self.model, "generate", None)):
            out["sample"] = "the Trainer has no tokenizer (processing_class) or its model no generate()"
        if self.trainer.eval_dataset is None:
            out["evaluate"] = "the Trainer has no eval_dataset"
        return out

    RELEASED = Loop.RELEASED + ("trainer", "tokenizer", "_loss", "_norms")

    def describe(self) -> dict:
        out = super().describe()
        out["trainer"] = "Hugging Face Trainer"
        if self.tokenizer is not None:  # what it is, not its Python class
            try:
                out["tokenizer"] = tokens.load(self.tokenizer).describe()
            except (ValueError, TypeError, ImportError):  # a slow (Python) tokenizer, or none of ours
                out["tokenizer"] = f"tokenizer ({len(self.tokenizer):,})"
        return out

    # -- the Trainer's steps --------------------------------------------------------------
    def hook(self, callback: bool = True, printers: bool = False) -> None:
        """Join the Trainer: its callback, and wrappers that see each micro-batch's loss and
        the gradients before the Trainer clips them. `unhook` puts everything back.

        Args:
            callback: add `self.callback` to the Trainer (False: a callback of the user's
                calls it, lmwidget.HFCallback).
            printers: keep the Trainer's progress printers (a script's terminal shows them).
        """
        trainer = self.trainer
        self._added = callback
        if callback:
            trainer.add_callback(self.callback)
        self._removed = [] if printers else [
            cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ in PRINTERS]
        for cb in self._removed:
            trainer.remove_callback(cb)
        training_step = trainer.training_step

        def counted(*args, **kwargs):
            loss = training_step(*args, **kwargs)
            self._loss = loss.detach() if self._loss is None else self._loss + loss.detach()
            inputs = args[1] if len(args) > 1 else kwargs.get("inputs")
            ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
            self._tokens += ids.numel() if torch.is_tensor(ids) else 0  # a shape: no sync
            return loss

        trainer.training_step = counted
        clip = trainer.accelerator.clip_grad_norm_

        def clipped(parameters, max_norm, *args, **kwargs):
            self.before_update()  # the norms before clipping
            return clip(parameters, max_norm, *args, **kwargs)

        trainer.accelerator.clip_grad_norm_ = clipped

    def unhook(self) -> None:
        trainer = self.trainer
        trainer.__dict__.pop("training_step", None)
        trainer.accelerator.__dict__.pop("clip_grad_norm_", None)
        if self._added:
            trainer.remove_callback(self.callback)
        for cb in self._removed:
            trainer.add_callback(cb)

    def before_update(self) -> None:
        if self._norms is None and self.optimizer is not None:
            self._norms = self.measure()
            self._lr = self.optimizer.param_groups[0]["lr"]

    def step_end(self, control, global_step: int) -> None:
        now = time.perf_counter()
        dt = now - self._t_step
        self._t_step = now
        self.step = global_step - 1  # the Trainer's count (a resumed Trainer goes on from its own)
        if self._loss is not None:
            grad_norm, layers = self._norms or (torch.tensor(float("nan")), None)
            self.push(self._loss, grad_norm, layers, self._lr, self.tokens_per_step or self._tokens, dt)
        self._loss = self._norms = None
        self._tokens = 0
        self._control = control  # what the requests at this boundary set
        if not self.steering.boundary():
            control.should_training_stop = True
        self._control = None

    def step_begin(self) -> None:
        """The next step's time starts after the boundary, a pause included."""
        self._t_step = time.perf_counter()

    # -- what the step boundary carries out, with the Trainer's own means ----------------------
    def _apply_grad_clip(self, grad_clip: float) -> bool:
        self.trainer.args.max_grad_norm = grad_clip
        return super()._apply_grad_clip(grad_clip)

    def _save_now(self) -> None:
        if self._control is not None:
            self._control.should_save = True  # written by the Trainer after on_step_end

    def _evaluate_now(self):
        """None: the evaluation's own event comes with its eval_loss."""
        if self._control is None:  # after the end: on the caller's thread
            with quiet(self.note_log):
                self.evaluated(self.trainer.evaluate())
        else:
            self._control.should_evaluate = True

    def measure(self):
        return self.steering.gradients(self.step + 1)  # HF clips itself, to args.max_grad_norm

    def _generate(self) -> str:
        tok = self.tokenizer
        start = next((i for i in (tok.bos_token_id, tok.eos_token_id) if i is not None), 0)
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), quiet(self.note_log, also=UNPADDED):  # on the caller's thread too
                idx = torch.tensor([[start]], device=self.device)
                longest = getattr(self.model.config, "max_position_embeddings", None) or SAMPLE_TOKENS + 1
                # one prompt, nothing padded: the mask says so (else generate() asks for it)
                out = self.model.generate(idx, attention_mask=torch.ones_like(idx),
                                          max_new_tokens=min(SAMPLE_TOKENS, longest - 1), do_sample=True,
                                          pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else start)
        finally:
            self.model.train(was)
        return tok.decode(out[0, 1:], skip_special_tokens=True)

    def request_save(self, path=None):
        if path is not None:
            raise ValueError("the Trainer saves into its own output_dir (checkpoint-<step>): call "
                             "save() without a path, or trainer.save_model(path) after training")
        if self.ended or not self.started:
            raise RuntimeError(f"{self.name} is not training ({self.state}): the Trainer writes its "
                               f"checkpoints between steps; trainer.save_model() writes its weights now")
        return super().request_save()

    def saved(self, path: str) -> None:
        """The Trainer wrote a checkpoint (its own, or one asked for here)."""
        result = {"path": path, "step": self.step, "kind": "saved", "bytes": 0, "seconds": 0.0}
        self.steering.finish_saves(result)
        self.record.record_event(self.step, "checkpoint", None, f"the Trainer saved {path}")

    def evaluated(self, metrics: dict) -> None:
        value = metrics.get("eval_loss")
        if value is not None:
            self.record.log(self.step, {"val_loss": float(value)})
        self.record.record_event(self.step, "eval", value, "the Trainer's evaluation")

    def run_trainer(self, *args, **kwargs) -> None:
        """`trainer.train(*args, **kwargs)` on this thread, hooked, its chatter kept out of
        the cell (`lmwidget.adapters.chatter.quiet`)."""
        self.hook()
        try:
            with quiet(self.note_log):
                self.trainer.train(*args, **kwargs)
        finally:
            self.unhook()


_Bridge = type("_Bridge", (), {})  # the callback's class once transformers is imported


def _bridge():
    """The TrainerCallback class (made once, when transformers is there)."""
    global _Bridge
    from transformers import TrainerCallback

    if not issubclass(_Bridge, TrainerCallback):
        class Bridge(TrainerCallback):
            def __init__(self, run: HFRun):
                self.run = run

            def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
                run = self.run
                run.bind(optimizer, lr_scheduler)
                run.max_steps = state.max_steps or run.max_steps
                run.step = state.global_step
                if not run.started:
                    run.begin()
                run.step_begin()

            def on_pre_optimizer_step(self, args, state, control, **kw):  # transformers >= 4.42
                self.run.before_update()

            def on_step_end(self, args, state, control, **kw):
                self.run.step_end(control, state.global_step)
                self.run.step_begin()

            def on_evaluate(self, args, state, control, metrics=None, **kw):
                self.run.evaluated(metrics or {})

            def on_save(self, args, state, control, **kw):
                from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

                self.run.saved(f"{args.output_dir}/{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

        _Bridge = Bridge
    return _Bridge
