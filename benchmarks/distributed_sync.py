"""What lmwidget adds to each step of a torchrun job: the metric reduction and rank 0's
control decision, timed alone. Run: torchrun --standalone --nproc_per_node=2 benchmarks/distributed_sync.py"""

import time

import torch

from lmwidget.distributed import RankSync

N = 2000


def main() -> None:
    sync = RankSync("cpu")
    loss, norm = torch.tensor(2.0), torch.tensor(1.0)
    for _ in range(100):  # warm up the connections
        sync.exchange({}, False, False, "", 1000.0)
    t0 = time.perf_counter()
    for _ in range(N):
        sync.exchange({}, False, False, "", 1000.0)
    exchange = (time.perf_counter() - t0) / N
    t0 = time.perf_counter()
    for _ in range(N):
        sync.reduce(loss, norm)
    reduce = (time.perf_counter() - t0) / N
    t0 = time.perf_counter()
    for _ in range(200):
        sync.exchange({"lr": (1e-3, "by hand")}, False, False, "", 1000.0)
    with_request = (time.perf_counter() - t0) / 200
    if sync.is_main:
        print(f"{sync.world_size} ranks, {sync.backend}: control exchange and summed tokens/s "
              f"{exchange * 1e6:.0f} us/step (with a new LR {with_request * 1e6:.0f} us), loss and grad norm {reduce * 1e6:.0f} us/step")
    sync.close()


if __name__ == "__main__":
    main()
