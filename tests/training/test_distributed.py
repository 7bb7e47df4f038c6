"""A two-rank torchrun job (DDP over gloo on this CPU), watched and steered from here."""

import json
import math
import time

import numpy as np
import pytest

import lmwidget
from lmwidget.remote.transport.channel import ClientEndpoint, new_key
from tests.conftest import wait_for
from tests.harness.jobs import TINY, Job

pytestmark = pytest.mark.slow
CONTROL_TIMEOUT = 6


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    # a rank gives up waiting for rank 0's decision after 6 s: a pause must not let it
    j = Job(tmp_path_factory.mktemp("ddp") / "run", "--steps", "1000000", *TINY,
            "--eval-interval", "50", "--progress-interval", "1", nproc=2,
            env={"LMWIDGET_CONTROL_TIMEOUT": str(CONTROL_TIMEOUT)}).wait_ready()
    yield j
    j.kill()


@pytest.fixture(scope="module")
def remote(job):
    r = lmwidget.attach(job.run_dir, display=False)
    yield r
    r.detach()


def both(job, kind, times=1):
    """The steps at which rank 0 and rank 1 logged `kind`, once both have `times` times."""
    wait_for(lambda: all(len(job.rank_events(rank, {kind})) >= times for rank in (0, 1)), timeout=15)
    return [[step for step, _, _ in job.rank_events(rank, {kind})] for rank in (0, 1)]


def test_attached_it_sees_the_metrics_of_both_ranks(job, remote):
    wait_for(lambda: len(remote.ranks) == 2 and len(remote.record) >= 50, timeout=30)
    assert remote.world_size == 2 and remote.state == "running"
    r0, r1 = remote.ranks
    assert (r0["rank"], r1["rank"]) == (0, 1) and r0["step"] == r1["step"]
    assert all(math.isfinite(r[k]) and r[k] > 0 for r in (r0, r1) for k in ("loss", "tokens_per_sec"))
    assert r0["loss"] != r1["loss"]  # each rank trains on its own blocks
    assert r0["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-6)  # of the averaged gradients
    wait_for(lambda: len(remote.record) >= r0["step"], timeout=5)
    h = remote.history
    assert h.step.iloc[0] == 1 and (np.diff(h.step) == 1).all()
    row = h[h.step == r0["step"]].iloc[0]  # what the charts draw: over both ranks
    assert row.loss == pytest.approx((r0["loss"] + r1["loss"]) / 2, rel=1e-6)
    assert row.grad_norm == pytest.approx((r0["grad_norm"] + r1["grad_norm"]) / 2, rel=1e-6)
    assert row.tokens_per_sec == pytest.approx(r0["tokens_per_sec"] + r1["tokens_per_sec"], rel=1e-6)
    assert h.tokens.iloc[0] == 2 * 8 * 32  # both ranks' batches make one step
    assert "lmwidget job: gpt on cpu x2" in job.output() and " | running | " in job.output()


def test_a_wrong_key_can_neither_pause_nor_stop_the_job(job, remote, tmp_path):
    info = json.loads(job.connection_file.read_text())
    intruder = ClientEndpoint({**info, "key": new_key()})
    try:
        for kind in ("pause", "stop"):
            with pytest.raises(TimeoutError, match="no signed reply"):
                intruder.request(kind, None, timeout=1.0)
    finally:
        intruder.close()
    forged = tmp_path / "connection.json"
    forged.write_text(json.dumps({**info, "key": new_key(), "run_dir": str(tmp_path)}))
    with pytest.raises(ConnectionError, match="no signed answer from the job"):
        lmwidget.attach(forged, display=False, timeout=1.0)
    step = remote.step
    wait_for(lambda: remote.step > step + 10, timeout=10)
    assert remote.state == "running"
    assert remote.status()["rejected"] == {"bad signature": 3}
    print(f"\nrejected for a wrong key: {remote.status()['rejected']}")
    assert not job.rank_events(0, {"pause", "stop"}) and not job.rank_events(1, {"pause", "stop"})


def test_pause_stops_both_ranks_at_the_same_step(job, remote):
    remote.pause()
    wait_for(lambda: remote.state == "paused", timeout=10)
    (s0,), (s1,) = both(job, "pause")
    print(f"\npaused: rank 0 at step {s0}, rank 1 at step {s1}")
    assert s0 == s1 == remote.step
    time.sleep(CONTROL_TIMEOUT + 2)  # longer than a rank waits for a decision: rank 0 repeats it
    assert job.proc.poll() is None and remote.status()["state"] == "paused", job.output()
    assert remote.step == s0 and len(remote.record) == s0  # no rank goes on


def test_the_lr_changes_on_both_ranks_at_the_same_step(job, remote):
    paused_at = remote.step
    remote.set_lr(1e-3)
    remote.resume()
    wait_for(lambda: remote.state == "running", timeout=10)
    lr0, lr1 = both(job, "lr")
    assert lr0 == lr1 == [paused_at]
    step = remote.step
    remote.set_lr(2e-3)  # while it trains
    lr0, lr1 = both(job, "lr", times=2)
    print(f"\nLR set: rank 0 at steps {lr0}, rank 1 at steps {lr1}")
    assert lr0 == lr1 and lr0[1] >= step
    assert [v for _, _, v in job.rank_events(1, {"lr"})] == [1e-3, 2e-3]
    wait_for(lambda: remote.step > lr0[1] + 5, timeout=10)
    h = remote.history
    assert (h.lr[(h.step > paused_at) & (h.step <= lr0[1])] == 1e-3).all()
    assert (h.lr[h.step > lr0[1]] == 2e-3).all()


def test_save_writes_a_checkpoint_that_resumes_exactly(job, remote, tmp_path):
    remote.pause()
    wait_for(lambda: remote.state == "paused", timeout=10)
    saved_at = remote.step
    path = remote.save()
    assert path.parent == job.run_dir and path.is_file()
    remote.resume()
    # the rows, not only the step: a job's status may arrive ahead of its last records
    def ahead_rows():
        h = remote.history
        return h[(h.step > saved_at) & (h.step <= saved_at + 20)]
    wait_for(lambda: len(ahead_rows()) == 20, timeout=20)
    ahead = ahead_rows().loss.to_numpy()
    with Job(tmp_path / "resumed", "--resume", str(path), "--steps", str(saved_at + 20),
             "--quiet", nproc=2) as resumed:
        assert resumed.wait(120) == 0, resumed.output()
    again = lmwidget.attach(resumed.run_dir, display=False)  # an ended job: its record
    assert again.state == "finished" and again.step == saved_at + 20
    g = again.history
    assert len(g) == saved_at + 20  # the earlier history came with the checkpoint
    after = g[g.step > saved_at].loss.to_numpy()
    print(f"\nresumed at step {saved_at}: largest loss difference over the next 20 steps "
          f"{np.abs(after - ahead).max():.1e}")
    np.testing.assert_allclose(after, ahead, rtol=0, atol=1e-6)


def test_the_job_survives_detaching_and_reattaching_shows_everything(job, remote):
    remote.detach()
    with pytest.raises(ConnectionError, match="detached"):
        remote.pause()
    step = remote.step
    time.sleep(1.0)
    again = lmwidget.attach(job.run_dir, display=False)
    try:
        assert job.proc.poll() is None and again.step > step + 10
        h = again.history
        assert list(h.step) == list(range(1, len(h) + 1)) and len(h) >= again.step - 50
        kinds = set(again.events.kind)
        assert {"pause", "resume", "lr", "checkpoint", "eval"} <= kinds
        d = again.dashboard  # the same dashboard, acting on the job
        wait_for(lambda: len(d.charts["loss"].marks["train"].x) > 0, timeout=10)
        d.pause_button.click()
        wait_for(lambda: again.state == "paused", timeout=10)
        pauses = both(job, "pause", times=3)
        assert pauses[0] == pauses[1] and len(pauses[0]) == 3
        wait_for(lambda: d.pause_button.description == "Resume", timeout=5)
    finally:
        again.detach()


def test_stop_ends_both_ranks_with_exit_code_0(job):
    last = lmwidget.attach(job.run_dir, display=False)
    last.stop()
    assert job.wait(60) == 0, job.output()
    (s0,), (s1,) = both(job, "stop")
    print(f"\nstopped: rank 0 at step {s0}, rank 1 at step {s1}; exit code 0")
    assert s0 == s1
    wait_for(lambda: last.state == "stopped", timeout=10)
    assert last.step == s0
    last.detach()
