"""Streams: the random streams of lmwidget's loop (its batches', its evaluations') and the process-wide states a save continues from."""

from __future__ import annotations

import torch

from lmwidget.checkpoint.rngstate import global_rng, set_global_rng

GLOBAL = ("torch", "cuda", "python", "numpy")  # the process-wide states a checkpoint keeps


class Streams:
    """The loop's own generators, and the process-wide RNG states (dropout draws from
    torch's) it starts from, keeps while paused and saves.

    Args:
        seed: the run's seed (batches draw from it, evaluations from seed + 1).
        device: where the run trains (CUDA's state is kept only there).
    """

    def __init__(self, seed: int, device: torch.device):
        self.seed, self.device = seed, device
        self.batch = torch.Generator().manual_seed(seed)
        self.eval = torch.Generator().manual_seed(seed + 1)
        self.kept = None     # the process-wide states the loop goes on from (None: seed them)
        self._pending = None  # restored states not set yet (the run started paused)

    @property
    def resumed(self) -> bool:
        """The loop goes on from restored states (a checkpoint's), not from its seed."""
        return self.kept is not None

    def start(self) -> None:
        """The loop starts: torch's global RNG is seeded, like nanoGPT (the curve then repeats
        unless other code draws from it during the run); a resumed run's states are set when
        it goes on, not now: a run that starts paused (a branch) leaves them to other runs."""
        if self.kept is None:
            torch.manual_seed(self.seed)
        else:
            self._pending = self.kept

    def pausing(self) -> None:
        """Keep the states a save while paused continues from."""
        self.kept = self._pending or global_rng(self.device)

    def resuming(self) -> None:
        """Set the restored states a run that started paused has not set yet."""
        if self._pending is not None:
            set_global_rng(self._pending, self.device)
            self._pending = None

    def ended(self) -> None:
        """The loop is over: a save from now on continues from the states as they are."""
        self.kept = global_rng(self.device)

    def state(self, live: bool) -> dict:
        """Every stream's state for a checkpoint. `live`: written by the loop between two
        steps, so the process-wide states are this step's; else the loop's snapshot (other
        code may have drawn since), or a fresh run's seeded states."""
        rng = global_rng(self.device) if live else (self.kept or self._seeded())
        return {**rng, "batch": self.batch.get_state(), "eval": self.eval.get_state()}

    def load(self, rng: dict) -> None:
        """A checkpoint's states (`state()`), before the loop starts."""
        self.batch.set_state(rng["batch"])
        self.eval.set_state(rng["eval"])
        self.kept = {k: rng[k] for k in GLOBAL}

    def _seeded(self) -> dict:
        """The process-wide states a fresh run starts from (see start())."""
        rng = global_rng(self.device)
        rng["torch"] = torch.Generator().manual_seed(self.seed).get_state()
        return rng
