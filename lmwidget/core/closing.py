"""Closing a run: letting go of its model, optimizer and data, and its dashboard's widgets, while its record stays."""

from __future__ import annotations

import torch

from . import retention


class Closable:
    """The memory side of a source: close() releases what it holds beyond its record (see
    keep_runs, which closes older finished runs this way)."""

    closed = False
    #: what a closed run cannot do any more: each needs the model that close() let go of
    NEED_MODEL = ("sample", "save", "histogram", "evaluate")

    def close(self, timeout: float | None = 60.0) -> None:
        """Let go of what the run holds beyond its record: the model, optimizer and data (host
        and device memory), and its dashboard's widgets, whose cells keep the static summary
        of its curves. A run still training is stopped first. Its history, events, samples,
        options and description stay: compare(), ghosts, exports and a new dashboard read them.
        Older finished runs are closed this way while newer ones train (see keep_runs)."""
        if self.closed:
            return
        if not self.ended:
            self.stop("closed")
        if not self.join(timeout):
            raise TimeoutError(f"{self.name} did not end within {timeout} s of being stopped, so it "
                               f"was not closed (its thread still holds the model); try again")
        self.record.drain()  # no value of the record left on the device
        latest = self.record.layer_grad_norms
        if latest is not None:
            self.record.layer_grad_norms = (latest[0], torch.as_tensor(latest[1]).cpu())
        with self._lock:
            if self.closed:
                return
            self._release()
            why = f"{self.name} was closed: its model was released (its record stays)"
            self.unsupported = {**self.unsupported, **{c: why for c in self.NEED_MODEL}}
            self.closed = True
            dashboard, self._dashboard = self._dashboard, None
        if dashboard is not None:
            dashboard.retire()  # its own thread leaves the summary in its cells and closes it
        if torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.empty_cache()
        retention.give_back_host_memory()

    def _release(self) -> None:
        """Drop this source's references to the model, optimizer and data."""
