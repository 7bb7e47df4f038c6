"""Your own script made a job by one line (steer(run_dir=...), HFCallback, LightningCallback), run as a process: alone, under torchrun with 2 ranks, or with Lightning's DDP, attached to and steered from here."""

import time
from pathlib import Path

import pytest

import lmwidget
from lmwidget.errors import LmwidgetWarning
from tests.conftest import wait_for
from tests.harness.scripts import ScriptRun

pytestmark = pytest.mark.slow

# a control collective that waits longer than this fails: a pause held longer must not (every
# framework's ranks wait in the same RankedBoundary; your loop's test holds one 2.5 s)
HEARTBEAT_TEST = {"LMWIDGET_CONTROL_TIMEOUT": "2"}


@pytest.fixture
def script(tmp_path):
    started = []

    def start(kind, **kwargs):
        started.append(ScriptRun(kind, tmp_path / kind, **kwargs))
        return started[-1]

    yield start
    for s in started:
        s.kill()


def steer_from_two_notebooks(script: ScriptRun, ranks: int, hold: float = 1.0):
    """Two notebooks attach; one pauses, the other sets the LR and resumes, the first stops.
    Returns (the step where it paused, the first notebook's run)."""
    a = lmwidget.attach(script.run_dir, display=False, client="notebook-a")
    b = lmwidget.attach(script.run_dir, display=False, client="notebook-b")
    assert a.world_size == b.world_size == ranks
    wait_for(lambda: a.step >= 5, timeout=60)
    a.pause()
    wait_for(lambda: a.state == "paused" and b.state == "paused", timeout=30)
    at = a.step
    last = [script.trace(rank)[-1] for rank in range(ranks)]
    time.sleep(hold)  # no rank advances while paused, however long
    for rank in range(ranks):  # (a script's own callback may come after lmwidget's: at - 1)
        assert script.trace(rank)[-1] == last[rank] and last[rank][0] in (at - 1, at), f"rank {rank} went on"
    assert a.step == b.step == at
    b.set_lr(a.lr / 2)
    b.resume()
    wait_for(lambda: a.step >= at + 5, timeout=60)
    return at, a, b


def check_lr_on_every_rank(script: ScriptRun, a, ranks: int, at: int):
    """Every rank's optimizer applies the new LR from the same step, the one after the pause."""
    traces = [dict(script.trace(r)) for r in range(ranks)]
    for rank in range(1, ranks):
        common = sorted(set(traces[0]) & set(traces[rank]))
        assert [traces[rank][s] for s in common] == [traces[0][s] for s in common], f"rank {rank}'s LRs differ"
    lr = a.history.set_index("step")["lr"]  # what each step applied, as lmwidget recorded it
    assert lr[at] == pytest.approx(2 * lr[at + 1], rel=0.02) and lr[at - 1] == pytest.approx(lr[at], rel=0.02)
    for rank in range(ranks):  # and each rank's own record of when it acted
        events = script.rank_events(rank, ("pause", "lr", "resume"))
        assert [(s, k) for s, k, _ in events] == [(at, "pause"), (at, "lr"), (at, "resume")]


def check_both_notebooks_see_who_asked(a, b, at: int):
    wanted = [(at, "pause", "from notebook-a"), (at, "lr", "from notebook-b"), (at, "resume", "from notebook-b")]
    for run in (a, b):
        wait_for(lambda: "stop" in set(run.events.kind), timeout=10)
        rows = run.events[run.events.kind.isin(["pause", "lr", "resume"])]
        assert list(zip(rows.step, rows.kind, rows.detail)) == wanted
        assert run.events[run.events.kind == "stop"].detail.iloc[0] == "from notebook-a"


def test_your_loop_under_torchrun_is_steered_on_both_ranks_and_a_long_pause_never_times_out(script):
    s = script("loop", nproc=2, env=HEARTBEAT_TEST).wait_ready()
    at, a, b = steer_from_two_notebooks(s, 2, hold=2.5)  # longer than the control timeout
    saved = Path(a.save(timeout=60))  # rank 0 writes the loop's checkpoint (DDP ranks are equal)
    assert saved.is_file() and saved.stat().st_size > 0
    a.stop()
    assert s.wait(60) == 0, s.output()
    check_lr_on_every_rank(s, a, 2, at)
    check_both_notebooks_see_who_asked(a, b, at)
    assert a.state == "stopped" and "DistributedDataParallel" not in a.describe()["model"]
    assert "attach from a notebook: lmwidget.attach(" in s.output()


def test_the_hf_trainer_under_torchrun_saves_evaluates_and_is_steered_the_same_step_on_both_ranks(script):
    s = script("hf", nproc=2, env=HEARTBEAT_TEST).wait_ready()
    at, a, b = steer_from_two_notebooks(s, 2)
    assert a.supports("evaluate") and not a.supports("sample")  # as in the kernel: no tokenizer
    a.evaluate()  # collective: every rank evaluates (should_evaluate on each)
    wait_for(lambda: "eval" in set(a.events.kind), timeout=60)
    saved = Path(a.save(timeout=60))  # the Trainer's own checkpoint-N, every rank taking part
    assert saved.parent == s.out / "hf-out" and saved.name.startswith("checkpoint-")
    assert (saved / "trainer_state.json").is_file()
    a.stop()
    assert s.wait(60) == 0, s.output()
    check_lr_on_every_rank(s, a, 2, at)
    check_both_notebooks_see_who_asked(a, b, at)
    assert a.history.val_loss.notna().sum() >= 1


def test_lightning_ddp_saves_and_is_steered_the_same_step_on_both_processes(script):
    s = script("lightning", devices=2, env=HEARTBEAT_TEST).wait_ready()
    at, a, b = steer_from_two_notebooks(s, 2)
    assert not a.supports("evaluate")  # Lightning validates on its own schedule
    saved = Path(a.save(timeout=60))  # collective under DDP; Lightning writes on rank 0
    assert saved.suffix == ".ckpt" and saved.stat().st_size > 0
    a.stop()
    assert s.wait(60) == 0, s.output()
    check_lr_on_every_rank(s, a, 2, at)
    check_both_notebooks_see_who_asked(a, b, at)


def test_an_hf_job_no_notebook_attaches_to_trains_to_its_end_and_writes_tensorboard_files(script, tmp_path):
    s = script("hf", steps=30, env={"TB": str(tmp_path / "tb")})
    assert s.wait(120) == 0, s.output()
    run = lmwidget.attach(s.run_dir, display=False)
    assert (run.state, run.step, run.max_steps, run.connected) == ("finished", 30, 30, False)
    assert list(run.history.step) == list(range(1, 31)) and run.describe()["trainer"] == "Hugging Face Trainer"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()  # TensorBoard's own reader
    loss = events.Scalars("loss/train")
    assert [e.step for e in loss] == list(range(1, 31))
    assert [e.value for e in loss] == pytest.approx(list(run.history.loss), rel=1e-6)


def test_a_script_that_raises_ends_its_job_failed_with_the_reason(script):
    s = script("loop", steps=1000, env={"FAIL_AT": "40"})
    assert s.wait(60) == 1
    assert "RuntimeError: the data ran out at step 40" in s.output()  # Python's own report, still there
    run = lmwidget.attach(s.run_dir, display=False)
    assert (run.state, run.step) == ("failed", 40)
    assert "the data ran out at step 40" in str(run.error)


def test_a_killed_script_is_shown_dead_from_its_record(script):
    s = script("loop").wait_ready()
    run = lmwidget.attach(s.run_dir, display=False)
    wait_for(lambda: run.step >= 20, timeout=30)
    run.detach()
    s.kill()  # SIGKILL: no last word
    t0 = time.monotonic()
    with pytest.warns(LmwidgetWarning, match=r"job run is dead: it died without ending its record \(its "
                                             r"process \d+ is gone: killed, or out of memory\?\)"):
        dead = lmwidget.attach(s.run_dir, display=False)
    assert time.monotonic() - t0 < 5  # its process is gone: no waiting for an answer
    assert dead.state == "failed" and dead.step >= 20 and not dead.connected
    assert list(dead.history.step) == list(range(1, dead.step + 1))
