"""Ranks of a distributed run that your script or a framework launched: rank 0's control decisions applied by every rank at the same step boundary."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from lmwidget.core.boundary import Boundary
from lmwidget.training.distributed import PAUSED_HEARTBEAT, TIMEOUT, RankSync, launched

# what every rank carries out: a framework's evaluation and save are collective (every
# rank takes part, or the ranks wait for each other forever)
SHARED = ("lr", "grad_clip")
FRAMEWORK_SHARED = SHARED + ("evaluate", "save")


class JoinedSync(RankSync):
    """The collectives lmwidget's steering uses, over a process group that your script or
    its framework initialized (torchrun, accelerate, Lightning's DDP): its own gloo group
    for the control decisions, made collectively by every rank.

    Args:
        device: this rank's training device (its loss and grad norm live there).
        shared: the requests every rank carries out (the rest are rank 0's alone).
    """

    def __init__(self, device, shared=SHARED):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.device = torch.device(device)
        self.backend = dist.get_backend()
        self.shared = tuple(shared)
        self.cpu_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=TIMEOUT))
        self._latest = None

    def close(self) -> None:
        """Only lmwidget's own group goes: the process group is the script's."""
        if dist.is_initialized():
            dist.destroy_process_group(self.cpu_group)


def join_ranks(device, shared=SHARED):
    """This process's place among the ranks of a distributed run, or None for one process.

    A process group initialized already (your script's, a framework's) is joined; under
    torchrun with none, one is initialized (nccl on GPUs, gloo on the CPU) and left for
    your script. Every rank must call this at the same point: it is collective.

    Args:
        device: this rank's training device.
        shared: the requests every rank carries out.

    Returns:
        A RankSync, or None when there is one process.
    """
    device = torch.device(device)
    if not (dist.is_available() and dist.is_initialized()):
        if not launched():
            return None
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return JoinedSync(device, shared) if dist.get_world_size() > 1 else None


class RankedBoundary(Boundary):
    """The step boundary of one rank of a distributed run: rank 0 decides (pause, stop,
    requests), every rank acts on that decision at the same step; while paused, rank 0
    re-sends it every PAUSED_HEARTBEAT seconds, so no rank's wait times out however long
    the pause.

    Args:
        sync: this rank's RankSync.
        *args: Boundary's (the source and its gradient norms).
        **kwargs: Boundary's (the loop's means: set_lr, sample, save, ...).
    """

    def __init__(self, sync, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sync = sync

    def decide(self):
        return self.sync.exchange(*super().decide())

    def wait_paused(self) -> None:
        if self.sync.is_main:  # the others wait in the next exchange
            self.control.wait_while_paused(timeout=PAUSED_HEARTBEAT)
