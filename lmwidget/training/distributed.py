"""Data parallel training under torchrun: the process group, DDP, metrics reduced across
ranks, and rank 0's control decisions broadcast to every rank at a step boundary."""

from __future__ import annotations

import datetime
import inspect
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# requests every rank carries out; the rest (save, sample, histogram) are rank 0's alone,
# unless the model is sharded (RankSync.shared)
SHARED = ("lr", "grad_clip")
# s: how long a rank waits in a control collective for the others (torch's default)
TIMEOUT = float(os.environ.get("LMWIDGET_CONTROL_TIMEOUT", "1800"))
# while paused, rank 0 re-sends its decision this often, so the other ranks' waits never
# time out however long the pause
PAUSED_HEARTBEAT = min(5.0, TIMEOUT / 4)


def launched() -> bool:
    """True in a process started by torchrun (or another launcher that sets WORLD_SIZE) with
    more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class RankSync:
    """This process's place in a torchrun job, and the collectives the training loop uses.

    Every collective is issued by the training thread only, in the same order on every rank:
    the gradient all-reduce (DDP) and `reduce` in each step, `exchange` at each pass of a
    step boundary (once per step; again every PAUSED_HEARTBEAT seconds while paused).
    """

    def __init__(self, device_name: str = "auto"):
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(f"environment variable {name} is not set: start a distributed "
                                   f"job with torchrun (torchrun --nproc_per_node=N -m lmwidget train ...)")
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if device_name.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device_name!r} asked for, but this machine has no CUDA GPU")
        if cuda:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.backend = "nccl" if cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(self.backend, **({"device_id": self.device} if cuda else {}))
        # control decisions are host values: they travel over gloo, so reading them never
        # waits for the GPU
        self.cpu_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=TIMEOUT))
        self._latest = None  # (step, each rank's [loss, grad_norm, tokens/s] on the device)
        # the requests every rank carries out: SHARED, and under FSDP those that need every
        # rank's shards (sharding.COLLECTIVE)
        self.shared = SHARED

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` in DistributedDataParallel: gradients are averaged across ranks in backward."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        # the models' buffers are constants (causal masks): no broadcast before each forward,
        # so an evaluation or a sample on one rank issues no collective
        params = inspect.signature(DistributedDataParallel).parameters
        quiet = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=ids, **quiet)

    def reduce(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, tokens_per_sec: float):
        """The step's mean loss and grad norm and summed tokens/s over all ranks, as device
        tensors: one all-reduce, and nothing is read back to the host (a host float goes
        to the device as a kernel argument, not a copy). Each rank's own values are kept
        for `per_rank`."""
        stats = torch.zeros(self.world_size, 3, device=loss.device, dtype=torch.float32)
        stats[self.rank, 0] = loss.detach().float()
        stats[self.rank, 1] = grad_norm.detach().float()
        stats[self.rank, 2] = tokens_per_sec
        dist.all_reduce(stats)
        self._latest = (step, stats)
        return stats[:, 0].mean(), stats[:, 1].mean(), stats[:, 2].sum()

    def per_rank(self) -> list[dict]:
        """Each rank's loss, grad norm and tokens/s at the latest step (an observer reads it)."""
        if self._latest is None:
            return []
        step, stats = self._latest
        stats = stats.double().cpu().tolist()
        return [{"rank": r, "step": step, "loss": stats[r][0], "grad_norm": stats[r][1],
                 "tokens_per_sec": stats[r][2]} for r in range(self.world_size)]

    def exchange(self, requests: dict, paused: bool, stop: bool, note: str):
        """Rank 0's decision for this step boundary, on every rank: (requests, paused, stop,
        note). Rank 0 passes what its control holds; the others' arguments are ignored, and
        they get the requests in `shared` only. A broadcast of three integers (gloo), and of
        the shared requests when there are any."""
        flags = torch.zeros(3, dtype=torch.int64)
        if self.is_main:
            shared = {k: v for k, v in requests.items() if k in self.shared}
            flags[:] = torch.tensor([int(paused), int(stop), int(bool(shared) or bool(note and stop))])
        dist.broadcast(flags, src=0, group=self.cpu_group)
        paused, stop, more = (bool(v) for v in flags.tolist())
        if more:  # rare: a new LR or clip norm (and its note), a shared request, a stop's note
            box = [shared, note] if self.is_main else [None, None]
            dist.broadcast_object_list(box, src=0, group=self.cpu_group)
            shared, note = box
        elif not self.is_main:
            shared, note = {}, ""
        return (requests if self.is_main else shared), paused, stop, note

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
