"""A two-rank torchrun job with FSDP2 (gloo on this CPU): it trains, is steered, and saves a checkpoint that resumes exactly, with FSDP and without."""

import numpy as np
import pytest
import torch

import lmwidget
from lmwidget.training.config import TrainConfig
from lmwidget.training.run import Run
from tests.conftest import wait_for
from tests.harness.jobs import TINY, Job

pytestmark = pytest.mark.slow
AHEAD = 10  # steps compared after the save
ARGS = [*TINY, "--n-layer", "2", "--eval-interval", "0"]  # two blocks: two FSDP units and the root


def both(job, kind, times=1):
    """The steps at which rank 0 and rank 1 logged `kind`, once both have `times` times."""
    wait_for(lambda: all(len(job.rank_events(rank, {kind})) >= times for rank in (0, 1)), timeout=15)
    return [[step for step, _, _ in job.rank_events(rank, {kind})] for rank in (0, 1)]


def resumed(tmp_path, name, path, steps, *args):
    """The rows of a two-rank job resumed from `path` until `steps`."""
    with Job(tmp_path / name, "--resume", str(path), "--steps", str(steps), "--quiet", *args,
             nproc=2) as job:
        assert job.wait(120) == 0, job.output()
    again = lmwidget.attach(job.run_dir, display=False)  # an ended job: its record
    assert again.state == "finished" and again.step == steps
    return again.history


def test_an_fsdp_job_trains_is_steered_and_resumes_exactly(tmp_path):
    job = Job(tmp_path / "fsdp", "--fsdp", "--steps", "1000000", *ARGS, "--progress-interval", "1",
              nproc=2).wait_ready()
    try:
        remote = lmwidget.attach(job.run_dir, display=False)
        wait_for(lambda: len(remote.ranks) == 2 and len(remote.record) >= 5, timeout=30)
        r0, r1 = remote.ranks
        assert r0["loss"] != r1["loss"]  # each rank trains on its own blocks
        # the norm of the whole gradient, over both ranks' shards: the same on each
        assert r0["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-6) and r0["grad_norm"] > 0
        assert "lmwidget job: gpt on cpu x2" in job.output()

        remote.pause()
        wait_for(lambda: remote.state == "paused", timeout=10)
        (s0,), (s1,) = both(job, "pause")
        assert s0 == s1 == remote.step
        remote.set_lr(1e-3)
        assert both(job, "lr") == [[s0], [s0]]  # every rank, at the same step
        path = remote.save()  # a collective: every rank gathers its shards for rank 0
        assert path.parent == job.run_dir and path.is_file()
        assert remote.sample()  # every rank runs the sharded model's forward passes
        assert both(job, "sample") == [[s0], [s0]]
        remote.resume()
        saved_at = s0

        def ahead_rows():
            h = remote.history
            return h[(h.step > saved_at) & (h.step <= saved_at + AHEAD)]
        wait_for(lambda: len(ahead_rows()) == AHEAD, timeout=20)
        ahead = ahead_rows()
        assert (ahead.lr == 1e-3).all()
        remote.stop()
        assert job.wait(60) == 0, job.output()
        remote.detach()
    finally:
        job.kill()

    # the checkpoint holds the whole model and optimizer state, as a job without FSDP writes them
    state = torch.load(path, map_location="cpu", weights_only=True)["trainer"]
    assert type(state["model"]["wpe.weight"]) is torch.Tensor and state["model"]["wpe.weight"].shape == (32, 32)
    ids = [i for group in state["optimizer"]["param_groups"] for i in group["params"]]
    assert sorted(state["optimizer"]["state"]) == ids == list(range(len(ids)))  # numbered, not named
    g = resumed(tmp_path, "again", path, saved_at + AHEAD)  # FSDP again: the saved option
    assert len(g) == saved_at + AHEAD  # the earlier history came with the checkpoint
    after = g[g.step > saved_at]
    print(f"\nFSDP resumed at step {saved_at}: largest loss difference over the next {AHEAD} "
          f"steps {np.abs(after.loss.to_numpy() - ahead.loss.to_numpy()).max():.1e}")
    np.testing.assert_allclose(after.loss, ahead.loss, rtol=0, atol=1e-6)
    np.testing.assert_allclose(after.grad_norm, ahead.grad_norm, rtol=1e-5)

    # without FSDP (DDP): the same run, up to the order of the float sums
    d = resumed(tmp_path, "ddp", path, saved_at + AHEAD, "--no-fsdp")
    after = d[d.step > saved_at]
    print(f"DDP resumed: largest loss difference {np.abs(after.loss.to_numpy() - ahead.loss.to_numpy()).max():.1e}, "
          f"grad norm {np.abs(after.grad_norm.to_numpy() / ahead.grad_norm.to_numpy() - 1).max():.1e} (relative)")
    np.testing.assert_allclose(after.loss, ahead.loss, rtol=0, atol=1e-4)
    np.testing.assert_allclose(after.grad_norm, ahead.grad_norm, rtol=1e-3)


def test_fsdp_without_torchrun_is_refused():
    config = TrainConfig.from_options(fsdp=True, max_steps=1, n_layer=1, n_embd=16, n_head=2,
                                      block_size=16)
    with pytest.raises(ValueError, match=r"fsdp=True shards the model over the processes of a "
                                         r"torchrun job.*or set fsdp=False"):
        Run(config)
