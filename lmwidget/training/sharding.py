"""FSDP2 for lmwidget's own loop: the model sharded across a torchrun job's ranks, its gradient norms over every shard, and its full state gathered for a checkpoint and scattered back from one."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from lmwidget.core.health import GradNorms
from lmwidget.models.hf import unwrap
from .distributed import SHARED

# requests that run the sharded model (its all-gathers) or gather its state: every rank must
# carry them out at the same step boundary, so rank 0 shares them (see RankSync.exchange)
COLLECTIVE = ("save", "sample", "evaluate", "histogram")
# a checkpoint holds the whole model, in host memory, as a job without FSDP writes it
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check_job(fsdp: bool, sync) -> None:
    """Refuse `fsdp` without a torchrun job (`sync`, a RankSync) to shard the model over."""
    if fsdp and sync is None:
        raise ValueError("fsdp=True shards the model over the processes of a torchrun job, and "
                         "this process is not one (WORLD_SIZE is not above 1): start it with "
                         "torchrun --nproc_per_node=N -m lmwidget train --fsdp ..., or set fsdp=False")


def check_together(trainer, what: str) -> None:
    """Refuse `what` once the ranks of an FSDP job have stopped training together."""
    if trainer.config.fsdp and not trainer.together:
        raise RuntimeError(f"{what} of {trainer.name} needs every rank of the job (fsdp=True: each "
                           f"holds a shard of the model), and they stopped training together at "
                           f"step {trainer.step}: ask for it while the job runs or is paused")


@contextlib.contextmanager
def gathered(trainer):
    """`trainer.full_state` gathered to rank 0 once, for the saves written inside: a
    collective, entered by every rank at the same step boundary (rank 0 decided it).

    Raises:
        RuntimeError: the ranks no longer train together (the loop has ended).
    """
    check_together(trainer, "a save")
    trainer.full_state = full_state(trainer.model, trainer.optimizer)
    try:
        yield
    finally:
        trainer.full_state = None


def shard(model: torch.nn.Module, sync) -> torch.nn.Module:
    """Shard `model` in place with FSDP2 over the job's ranks: each transformer block (every
    item of a ModuleList, GPT's `blocks`, a Hugging Face model's `layers`) is a unit of its
    own, gathered only while it computes, then the root (embeddings, final norm, head). The
    requests that need every rank's shards become shared ones of `sync` (a RankSync).

    Returns:
        The same module, its parameters now DTensors sharded over the ranks (dim 0).
    """
    mesh = init_device_mesh(sync.device.type, (sync.world_size,))  # each unit's shard moves to its device
    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sync.shared = SHARED + COLLECTIVE
    return model


def accumulating(wrapped, quiet: bool):
    """The context of one micro-step: its gradients stay on this rank while `quiet` (DDP's
    no_sync covers the forward; FSDP2 reads its flag in backward, so it is set now for the
    whole micro-step). `wrapped`: the DDP or FSDP module, or None alone."""
    if isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(not quiet)
    elif quiet:
        return wrapped.no_sync()
    return contextlib.nullcontext()


class ShardedGradNorms(GradNorms):
    """The total and per-layer gradient norms of a sharded model: each rank's squared norms
    of its own shards, summed over the ranks in one all-reduce on the device (no sync)."""

    together = True  # False once the ranks stop training together: no more gathers

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not present:
            zero = torch.zeros((), device=self._index.device)
            return zero, torch.zeros(len(self.names), device=self._index.device)
        grads = [_local(self.params[i].grad) for i in present]
        squares = torch.stack(torch._foreach_norm(grads)).float().square()
        dist.all_reduce(squares)  # sum over the shards: the whole tensors' squared norms
        per_tensor = squares.sqrt()
        index = self._index if len(present) == len(self.params) else self._index[present]
        per_group = torch.zeros(len(self.names), device=per_tensor.device)
        per_group = per_group.index_add_(0, index, squares).sqrt_()
        return torch.linalg.vector_norm(per_tensor), per_group

    def group_params(self, group: str) -> list[torch.Tensor]:
        """The parameters of one layer group, gathered whole (a collective: every rank calls
        it at the same step), each with its gathered gradient, for a histogram.

        Raises:
            RuntimeError: the ranks no longer train together (the loop has ended).
        """
        if not self.together:
            raise RuntimeError("a histogram of an FSDP job's layer needs every rank (each holds a "
                               "shard), and they stopped training together: ask while it runs")
        whole = []
        for p in super().group_params(group):
            full = p.detach().full_tensor() if isinstance(p, DTensor) else p.detach()
            if p.grad is not None:
                full.grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            whole.append(full)
        return whole


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The whole model's and optimizer's state, on rank 0 in host memory, as
    `unwrap(model).state_dict()` and `optimizer.state_dict()` of one process hold them (a
    checkpoint of an FSDP job resumes with or without FSDP). A collective: every rank calls
    it, in the same order; the other ranks get empty dicts.

    Returns:
        (model state, optimizer state) on rank 0; ({}, {}) elsewhere.
    """
    weights = get_model_state_dict(unwrap(model), options=FULL)
    by_name = get_optimizer_state_dict(model, optimizer, options=FULL)
    if dist.get_rank() != 0:
        return {}, {}
    # torch numbers the parameters 0, 1, ... through the groups in order; the named form
    # lists them in that same order
    ids, groups = {}, []
    for group in by_name["param_groups"]:
        params = [ids.setdefault(name, len(ids)) for name in group["params"]]
        groups.append({**group, "params": params})
    state = {ids[name]: value for name, value in by_name["state"].items()}
    return weights, {"state": state, "param_groups": groups}


def sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> dict:
    """`saved` (checkpoint.read of a whole model's checkpoint) with its weights and optimizer
    state cut into this rank's shards, as DTensors placed like the sharded model's: then
    `load_state_dict` takes them. Every rank read the file, so each cuts its own shard with
    no communication (what `set_model_state_dict(..., broadcast_from_rank0=True)` would
    send from rank 0); what does not fit is left whole for the restore to refuse by name.

    Returns:
        A copy of `saved`; the original is left as it is.
    """
    trainer = saved["trainer"]
    own = unwrap(model).state_dict()
    weights = {k: _cut(v, own.get(k)) for k, v in trainer["model"].items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    opt = trainer["optimizer"]
    state = {}
    for i, values in opt.get("state", {}).items():
        p = params[i] if isinstance(i, int) and 0 <= i < len(params) else None
        state[i] = {k: _cut(v, p) for k, v in values.items()} if isinstance(values, dict) else values
    return {**saved, "trainer": {**trainer, "model": weights, "optimizer": {**opt, "state": state}}}


def _cut(value, like):
    """`value` as this rank's shard of a DTensor placed like `like`, when it is a whole
    tensor of `like`'s shape; else as it is."""
    if not (isinstance(like, DTensor) and torch.is_tensor(value) and value.shape == like.shape):
        return value
    return distribute_tensor(value.to(like.to_local().device), like.device_mesh, like.placements,
                             src_data_rank=None)
