"""What lmwidget adds to each step of a torchrun job: the metric reduction and rank 0's
control decision, timed alone. Run: torchrun --standalone --nproc_per_node=2 benchmarks/distributed_sync.py"""

import time

import torch

from lmwidget.training.distributed import RankSync

N = 2000


def main() -> None:
    sync = RankSync("cpu")
    loss, norm = torch.tensor(2.0), torch.tensor(1.0)
    for _ in range(100):  # warm up the connections
        sync.exchange({}, False, False, "")
    t0 = time.perf_counter()
    for _ in range(N):
        sync.exchange({}, False, False, "")
    exchange = (time.perf_counter() - t0) / N
    t0 = time.perf_counter()
    for _ in range(N):
        sync.reduce(1, loss, norm, 1000.0)
    reduce = (time.perf_counter() - t0) / N
    t0 = time.perf_counter()
    for _ in range(200):
        sync.exchange({"lr": (1e-3, "by hand")}, False, False, "")
    with_request = (time.perf_counter() - t0) / 200
    if sync.is_main:
        print(f"{sync.world_size} ranks, {sync.backend}: rank 0's decision "
              f"{exchange * 1e6:.0f} us/step (with a new LR {with_request * 1e6:.0f} us), loss, grad norm and tokens/s {reduce * 1e6:.0f} us/step")
    sync.close()


if __name__ == "__main__":
    main()
