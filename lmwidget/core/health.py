"""Training health: per-layer gradient norms, the non-finite guard, spikes and weight histograms."""

from __future__ import annotations

import collections
import math

import numpy as np
import torch

SPIKE_WINDOW = 50     # values in the running median
SPIKE_MIN_SEEN = 20   # finite values needed before anything is called a spike
PENDING_CHECKS = 64   # steps whose finiteness may still be in flight to the host


def layer_groups(names) -> tuple[list[str], list[int]]:
    """Group parameter names by layer: each item of a ModuleList (`blocks.0`), else the module
    that owns the parameter (`tok_emb`, `ln_f`, `head`). Returns the group names, in order of
    first appearance, and each parameter's group index."""
    groups: dict[str, int] = {}
    index = []
    for name in names:
        parts = name.split(".")
        cut = next((i + 1 for i, p in enumerate(parts) if p.isdigit()), len(parts) - 1)
        group = ".".join(parts[:max(cut, 1)])
        index.append(groups.setdefault(group, len(groups)))
    return list(groups), index


class GradNorms:
    """The total gradient norm and one norm per layer group, as device tensors (no sync).

    The total is what `torch.nn.utils.get_total_norm` computes (the norm of the per-tensor
    norms); the groups cost three more tiny kernels on the same per-tensor norms.
    """

    def __init__(self, named_params):
        named = [(n, p) for n, p in named_params if p.requires_grad]
        self.names, index = layer_groups([n for n, _ in named])
        self.params = [p for _, p in named]
        device = self.params[0].device if self.params else torch.device("cpu")
        self._index = torch.tensor(index, dtype=torch.long, device=device)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        grads, present = [], []
        for i, p in enumerate(self.params):
            if p.grad is not None:
                grads.append(p.grad)
                present.append(i)
        if not grads:
            zero = torch.zeros((), device=self._index.device)
            return zero, torch.zeros(len(self.names), device=self._index.device)
        per_tensor = torch.stack(torch._foreach_norm(grads)).float()
        index = self._index if len(present) == len(self.params) else self._index[present]
        per_group = torch.zeros(len(self.names), device=per_tensor.device)
        per_group = per_group.index_add_(0, index, per_tensor.square()).sqrt_()
        return torch.linalg.vector_norm(per_tensor), per_group

    def group_params(self, group: str) -> list[torch.nn.Parameter]:
        """The parameters of one layer group."""
        if group not in self.names:
            raise ValueError(f"no layer group {group!r}; the groups are {', '.join(self.names)}")
        g = self.names.index(group)
        return [p for p, i in zip(self.params, self._index.tolist()) if i == g]


class _Ready:
    """A stand-in for a device event where copies are synchronous (the CPU)."""

    @staticmethod
    def query() -> bool:
        return True

    @staticmethod
    def synchronize() -> None:
        pass


class FiniteGuard:
    """Skips the update of a step whose loss or gradient norm is not finite, and reports it.

    With an optimizer that takes a `found_inf` flag (the fused Adam, AdamW and SGD) the
    update is skipped on the device, the two values are copied to host memory without
    waiting, and `poll()` reports the step once its copy has landed: on the CPU at once,
    on a GPU a step or two later, with no host-device sync. Other optimizers are guarded
    by reading the values before stepping, a sync on an accelerator.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        self.optimizer = optimizer
        self.on_device = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        self._cuda = device.type == "cuda"
        self._host = torch.empty((PENDING_CHECKS, 2), pin_memory=self._cuda)
        self._pending: collections.deque = collections.deque()  # (step, slot, event)
        self._found: list = []

    def check(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Before the optimizer steps: False when the loop itself must skip the update."""
        values = torch.stack((loss.detach().float(), grad_norm.detach().float()))
        if not self.on_device:
            loss_v, norm_v = values.tolist()
            if math.isfinite(loss_v) and math.isfinite(norm_v):
                return True
            self._found.append((step, loss_v, norm_v))
            return False
        self.optimizer.found_inf = (~torch.isfinite(values).all()).float()
        if len(self._pending) == PENDING_CHECKS:  # the device is far behind: wait for the oldest
            self._pending[0][2].synchronize()
            self._collect()
        slot = step % PENDING_CHECKS
        self._host[slot].copy_(values, non_blocking=self._cuda)
        event = torch.cuda.Event() if self._cuda else _Ready()
        if self._cuda:
            event.record()
        self._pending.append((step, slot, event))
        return True

    def _collect(self) -> None:
        while self._pending and self._pending[0][2].query():
            step, slot, _ = self._pending.popleft()
            loss_v, norm_v = self._host[slot].tolist()
            if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                self._found.append((step, loss_v, norm_v))

    def poll(self, wait: bool = False) -> list[tuple[int, float, float]]:
        """Steps found non-finite since the last poll: (step, loss, grad_norm); with `wait`,
        every step checked so far (waiting for the device: before a save, at the end)."""
        if wait and self._pending:
            self._pending[-1][2].synchronize()
        self._collect()
        found, self._found = self._found, []
        return found


def nonfinite_cause(loss: float, grad_norm: float) -> str:
    causes = [f"{name} is {value}" for name, value in (("loss", loss), ("grad norm", grad_norm))
              if not math.isfinite(value)]
    return " and ".join(causes)


class SpikeDetector:
    """Marks a step as an "anomaly" event when its gradient norm is more than `factor` times
    the median of the previous SPIKE_WINDOW finite values, or its loss more than ln(factor)
    above that median (a perplexity `factor` times higher). One mark per excursion: the
    values must come back under the threshold before the next one. Fed by History.drain."""

    def __init__(self, history, factor: float = 10.0):
        self.history = history
        self.factor = factor
        self._recent = {"loss": np.empty(0), "grad_norm": np.empty(0)}
        self._above = {"loss": False, "grad_norm": False}

    def __call__(self, cols: dict) -> None:
        for name in ("loss", "grad_norm"):
            values = np.asarray(cols[name], dtype=np.float64)
            past = self._recent[name]
            series = np.concatenate((past, values))
            finite = np.where(np.isfinite(series), series, np.nan)
            padded = np.concatenate((np.full(SPIKE_WINDOW, np.nan), finite))
            start = len(padded) - len(values) - SPIKE_WINDOW
            windows = np.lib.stride_tricks.sliding_window_view(padded, SPIKE_WINDOW)[start:start + len(values)]
            seen = np.count_nonzero(~np.isnan(windows), axis=1)
            medians = np.full(len(values), np.nan)
            enough = seen >= SPIKE_MIN_SEEN
            if enough.any():
                medians[enough] = np.nanmedian(windows[enough], axis=1)
            if name == "grad_norm":
                limits = medians * self.factor
            else:
                limits = medians + math.log(self.factor)
            with np.errstate(invalid="ignore"):
                over = np.isfinite(values) & (values > limits)
            for i in range(len(values)):
                if over[i] and not self._above[name]:
                    self._mark(name, cols, i, medians[i])
                if np.isfinite(values[i]):
                    self._above[name] = bool(over[i])
            self._recent[name] = finite[-SPIKE_WINDOW:]

    def prime(self, cols: dict) -> None:
        """Take up a resumed run's recent rows (its events already hold their spikes)."""
        tail = {k: np.asarray(v)[-(2 * SPIKE_WINDOW + 1):] for k, v in cols.items()}
        self._priming = True
        try:
            self(tail)
        finally:
            self._priming = False

    def _mark(self, name: str, cols: dict, i: int, median: float) -> None:
        if getattr(self, "_priming", False):
            return
        value = float(cols[name][i])
        if name == "grad_norm":
            detail = (f"grad norm spike: {value:.4g} is {value / median:.0f}x the running median "
                      f"{median:.4g}")
        else:
            gap = value - median
            times = f"{math.exp(gap):.3g}" if gap < 50 else f"e^{gap:.3g}"
            detail = (f"loss spike: {value:.4g} against a running median of {median:.4g} "
                      f"(perplexity {times} times higher)")
        self.history.record_event(int(cols["step"][i]), "anomaly", value, detail,
                                  time=float(cols["time"][i]))


def histogram(values: torch.Tensor, bins: int = 60) -> dict:
    """Counts of `values` in `bins` equal bins over their finite range (one read to the host)."""
    flat = values.detach().float().flatten()
    finite = flat[torch.isfinite(flat)]
    if finite.numel() == 0:
        return {"counts": np.zeros(0), "edges": np.zeros(0), "nonfinite": int(flat.numel())}
    lo, hi = (float(v) for v in torch.aminmax(finite))
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(finite, bins=bins, min=lo, max=hi)
    return {"counts": counts.cpu().numpy(), "edges": np.linspace(lo, hi, bins + 1),
            "nonfinite": int(flat.numel() - finite.numel())}
