"""TrainerBoundary: the step-boundary engine as lmwidget's own loop runs it (its means, rank 0 deciding under torchrun, RNG states kept while paused)."""

from __future__ import annotations

from lmwidget.core.boundary import Boundary
from .distributed import PAUSED_HEARTBEAT


class TrainerBoundary(Boundary):
    """lmwidget's own loop at a step boundary: under torchrun rank 0 decides for every
    rank; saves due from the last step are written once its requests are applied; the RNG
    states a save continues from are kept while paused. Under FSDP a histogram asked for
    between steps shows the weights only (one fresh batch's gradients would need every rank).

    Args:
        trainer: the BuiltinLoop whose means the engine uses: its LR and clip norm, its
            sample, evaluation and saves, and one fresh batch's gradients.
    """

    def __init__(self, trainer):
        super().__init__(trainer, trainer.grad_norms, set_lr=trainer.set_lr,
                         set_grad_clip=trainer.set_grad_clip, sample=trainer.generate_sample,
                         evaluate=trainer.evaluate, save=lambda: trainer.checkpointer.run_jobs(),
                         fresh_grads=None if trainer.config.fsdp else trainer.fresh_grads)
        self.trainer = trainer

    def decide(self):
        decision = super().decide()
        sync = self.trainer.sync
        return decision if sync is None else sync.exchange(*decision)  # every rank acts alike

    def end(self, state: str | None = None) -> None:
        sync = self.trainer.sync
        if sync is not None and self.trainer.config.fsdp:
            # requests made during the last step that need every rank's shards (a save): rank
            # 0 shares them once more, while the ranks are still together
            with self._lock:
                requests, *_ = sync.exchange(self.control.close(), False, False, "")
                for kind, (value, note) in requests.items():
                    self._carry_out(kind, value, note)
        super().end(state)

    def between(self) -> None:
        self.trainer.checkpointer.write_due()  # the last step's saves, with its requests applied

    def pausing(self) -> None:
        self.trainer.streams.pausing()

    def resuming(self) -> None:
        self.trainer.streams.resuming()

    def wait_paused(self) -> None:
        sync = self.trainer.sync
        if sync is None:
            self.control.wait_while_paused()
        elif sync.is_main:  # the others wait in the next exchange
            self.control.wait_while_paused(timeout=PAUSED_HEARTBEAT)
