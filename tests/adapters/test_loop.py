"""Your own loop: lmwidget.steer(model, optimizer, scheduler), run.tick(loss), run.start(train)."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

import lmwidget
from lmwidget import Callback

from tests.conftest import wait_for
from tests.harness.frameworks import CHARS, char_ids, own_loop
from tests.harness.kernel import Kernel

HARNESS_FRAMEWORKS = Path(__file__).parents[1] / "harness" / "frameworks.py"  # pasted into kernels

FOREVER = 10**9


def steered(steps=FOREVER, lr_scheduler=False, **options):
    model, optimizer, scheduler, train = own_loop(steps, lr_scheduler=lr_scheduler)
    run = lmwidget.steer(model, optimizer, scheduler, display=False, tokens_per_step=8 * 32, **options)
    train.run = run
    return run, model, optimizer, scheduler, train


def test_three_lines_record_every_step_as_applied(monkeypatch):
    run, model, optimizer, scheduler, train = steered(60, lr_scheduler=True, max_steps=60)
    norms, lrs = [], []
    tick = run.tick

    def checked(loss, **kw):  # what the step's gradients and LR are, seen by the test
        lrs.append(optimizer.param_groups[0]["lr"])
        norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None])))
        return tick(loss, **kw)

    run.tick = checked
    losses = train()
    assert run.state == "running" and run.step == 60  # on the caller's thread: ended by the user
    run.end()
    assert run.state == "finished"
    h = run.history
    assert list(h.step) == list(range(1, 61))
    assert h.loss.tolist() == pytest.approx([float(x) for x in losses], rel=1e-6)
    assert h.grad_norm.tolist() == pytest.approx([float(n) for n in norms], rel=1e-5)
    assert h.lr.tolist() == pytest.approx(lrs, rel=1e-12) and lrs[0] > lrs[-1]  # the schedule's
    assert h.perplexity.tolist() == pytest.approx(torch.tensor(h.loss).exp().tolist())
    assert (h.tokens == h.step * 256).all() and h.tokens_per_sec.iloc[1:].gt(0).all()
    assert list(run.layer_grad_norms.index) == run.layers == ["wte", "wpe", "blocks.0", "ln_f"]


def test_with_gradient_accumulation_the_step_records_the_mean_over_its_micro_batches():
    model, optimizer, _, _ = own_loop(1)
    run = lmwidget.steer(model, optimizer, display=False, tokens_per_step=4 * 8 * 32)
    ids, gen = char_ids(), torch.Generator().manual_seed(0)
    means = []
    for _ in range(5):  # 4 micro-batches a step, each loss scaled as usual before backward()
        losses = []
        for _ in range(4):
            ix = torch.randint(len(ids) - 33, (8,), generator=gen)
            _, loss = model(torch.stack([ids[i:i + 32] for i in ix]), torch.stack([ids[i + 1:i + 33] for i in ix]))
            (loss / 4).backward()
            losses.append(loss.detach())
        step_loss = torch.stack(losses).mean()  # what to log, as the frameworks log it
        means.append(float(step_loss))
        assert run.tick(step_loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    run.end()
    assert run.history.loss.tolist() == pytest.approx(means, rel=1e-6)  # not scaled again
    assert run.history.loss.iloc[0] == pytest.approx(math.log(len(CHARS)), abs=0.3)  # nats per token


def test_no_host_device_sync_per_step(monkeypatch):
    """tick() keeps the loss and the norms as device tensors: only History.drain reads them,
    on the training thread. (Other threads are not counted: a view's updater, left from an
    earlier test, reads a few norms off the training thread, by design.)"""
    calls = {"item": 0, "float": 0, "tolist": 0, "cpu": 0}
    training = threading.get_ident()  # train() below runs on this thread
    for name, method in (("item", "item"), ("float", "__float__"), ("cpu", "cpu"), ("tolist", "tolist")):
        original = getattr(torch.Tensor, method)

        def counted(self, *a, _original=original, _name=name, **k):
            if (threading.get_ident() == training
                    and sys._getframe(1).f_globals.get("__name__", "").startswith("lmwidget")):
                calls[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, method, counted)
    run, *_, train = steered(600)
    train()
    assert calls == {"item": 0, "float": 0, "tolist": 0, "cpu": 2}  # drained at 256 and 512
    run.end()


def test_pause_blocks_the_loop_at_tick_without_cpu_and_resume_goes_on():
    run, *_, train = steered()
    run.start(train)
    wait_for(lambda: run.step > 5)
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    frozen = run.step
    native = run._thread.native_id
    thread = next(t for t in psutil.Process().threads() if t.id == native)
    before = thread.user_time + thread.system_time
    time.sleep(1.0)
    thread = next(t for t in psutil.Process().threads() if t.id == native)
    assert run.step == frozen and thread.user_time + thread.system_time - before < 0.05
    run.resume()
    wait_for(lambda: run.step > frozen + 5)
    run.stop()
    assert run.wait(10) and run.state == "stopped"
    assert [k for k in run.events.kind] == ["pause", "resume", "stop"]


def test_set_lr_without_a_scheduler_is_the_lr_applied():
    run, model, optimizer, _, train = steered()
    run.start(train)
    wait_for(lambda: run.step > 3)
    run.set_lr(1e-4)
    wait_for(lambda: run.history.lr.iloc[-1] == 1e-4)
    assert optimizer.param_groups[0]["lr"] == 1e-4 and run.lr == 1e-4
    h = run.history
    first = h.step[h.lr == 1e-4].min()
    assert (h.lr[h.step < first] == 3e-3).all() and (h.lr[h.step >= first] == 1e-4).all()
    run.stop()
    run.wait(10)


def test_set_lr_with_a_scheduler_moves_its_base_and_the_schedule_goes_on():
    run, model, optimizer, scheduler, train = steered(lr_scheduler=True)
    run.start(train)
    wait_for(lambda: run.step > 10)
    run.pause()
    wait_for(lambda: run.state == "paused")
    run.set_lr(1e-2)
    run.resume()
    wait_for(lambda: run.step > run.events.step.max() + 10)
    run.stop()
    run.wait(10)
    assert scheduler.base_lrs == [pytest.approx(1e-2)] and run.lr == pytest.approx(1e-2)
    h = run.history
    at = int(run.events.step[run.events.kind == "lr"].iloc[0])
    factor = lambda step: 1 / (1 + (step - 1) / 50)  # the LambdaLR's, at its 0-based epoch  # noqa: E731
    for step, lr in zip(h.step, h.lr):
        assert lr == pytest.approx((3e-3 if step <= at else 1e-2) * factor(step), rel=1e-9), step


def test_stop_ends_the_loop_cleanly_and_callbacks_see_the_end():
    ends = []

    class Ends(Callback):
        def on_train_end(self, run):
            ends.append((run.state, run.step))

    run, *_, train = steered(callbacks=[Ends()])
    run.start(train)
    wait_for(lambda: run.step > 5)
    run.stop("enough")
    assert run.wait(10) is True and run.state == "stopped"
    assert not [t for t in threading.enumerate() if t.name.startswith("lmwidget-run")]
    assert ends == [("stopped", run.step)]
    assert run.events.detail.iloc[-1] == "enough"


def test_a_loop_that_ignores_the_stop_is_ended_at_its_next_tick():
    run, model, optimizer, *_ = steered()

    def stubborn():
        while True:
            _, loss = model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
            loss.backward()
            run.tick(loss)  # its False is ignored
            optimizer.zero_grad()

    run.start(stubborn)
    wait_for(lambda: run.step > 3)
    run.stop()
    assert run.wait(10) is True and run.state == "stopped"


def test_a_failure_in_your_loop_is_kept_and_reraised():
    run, model, *_ = steered()

    def broken():
        for i in range(5):
            _, loss = model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
            loss.backward()
            run.tick(loss)
        raise ValueError("my loop broke")

    run.start(broken)
    with pytest.raises(ValueError, match="my loop broke"):
        run.wait(10)
    assert run.state == "failed" and run.step == 5


def test_on_the_callers_thread_a_with_block_ends_the_run():
    run, model, optimizer, _, train = steered(20)
    with run:
        train()
    assert run.state == "finished" and len(run.history) == 20
    run2, *_, train2 = steered(20)
    with pytest.raises(RuntimeError, match="boom"), run2:
        train2()
        raise RuntimeError("boom")
    assert run2.state == "failed"


def test_grad_clip_is_steerable_only_when_lmwidget_clips():
    run, *_ = steered()
    assert "grad_clip" in run.unsupported and run.grad_clip is None
    with pytest.raises(NotImplementedError, match="pass grad_clip="):
        run.set_grad_clip(1.0)
    run, model, optimizer, _, _ = steered(grad_clip=1e-3)
    applied = []  # the total gradient norm each update applies, after tick()

    def train():
        while True:
            _, loss = model(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
            loss.backward()
            if not run.tick(loss):
                return
            applied.append(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None])).item())
            optimizer.zero_grad()

    run.start(train)
    wait_for(lambda: run.step > 2)
    run.set_grad_clip(5e-4)
    wait_for(lambda: run.grad_clip == 5e-4 and len(applied) > run.events.step.max() + 2)
    run.stop()
    run.wait(10)
    at = int(run.events.step[run.events.kind == "grad_clip"].iloc[0])
    assert applied[:at] == pytest.approx([1e-3] * at, rel=1e-4)
    assert applied[at:] == pytest.approx([5e-4] * (len(applied) - at), rel=1e-4)
    assert (run.history.grad_norm > 1e-2).all()  # recorded before clipping


def test_sample_evaluate_and_histograms():
    run, model, *_, train = steered(sample=lambda m: f"{type(m).__name__} says hi",
                                    evaluate=lambda: torch.tensor(2.5))
    run.start(train)
    wait_for(lambda: run.step > 3)
    assert run.sample() == "GPT says hi"
    run.evaluate()
    run.request_histogram("blocks.0")
    wait_for(lambda: len(run.histograms) == 1 and "eval" in set(run.events.kind))
    h = run.histograms[0]
    assert h["group"] == "blocks.0" and h["grads"] is not None and h["source"].startswith("this training step")
    run.stop()
    run.wait(10)
    assert run.history.val_loss.dropna().tolist() == [2.5]
    lone, *_ = steered()
    assert set(lone.unsupported) == {"grad_clip", "sample", "evaluate"}
    with pytest.raises(NotImplementedError, match="pass sample=fn"):
        lone.sample()


def test_histograms_between_steps_show_your_last_backward_pass():
    """Asked for once the loop has ended: the group asked for, at once, from the gradients
    your last backward pass left (it once looked for no group at all and raised)."""
    run, model, *_, train = steered(5)
    train()
    run.end()
    run.request_histogram("wte")
    (h,) = run.histograms
    assert (h["step"], h["group"], h["source"]) == (5, "wte", "your last backward pass (taken between steps)")
    assert h["weights"]["counts"].sum() == model.wte.weight.numel()


def test_save_and_resume_continue_the_same_curve(tmp_path):
    reference, *_, train = steered(40, lr_scheduler=True)
    expected = [float(x) for x in train()]
    reference.end()

    first, model, optimizer, scheduler, train = steered(40, lr_scheduler=True)
    paths = []
    tick = first.tick

    def saving(loss, **kw):  # after 20 steps, between backward and the 21st update
        if first.step == 20:
            paths.append(first.save(tmp_path / "at20.pt"))
        return tick(loss, **kw)

    first.tick = saving
    train()
    first.end()
    assert paths == [tmp_path / "at20.pt"] and first.checkpoints[0]["step"] == 20
    model2, optimizer2, scheduler2, train2 = own_loop(20, lr_scheduler=True, skip=20)  # fresh weights
    resumed = lmwidget.steer(model2, optimizer2, scheduler2, display=False, resume=paths[0])
    assert resumed.step == 20 and len(resumed.history) == 20 and resumed.restored_from == str(paths[0])
    assert scheduler2.last_epoch == 20
    train2.run = resumed
    assert [float(x) for x in train2()] == expected[20:]  # bit for bit, the same curve
    resumed.end()
    assert list(resumed.history.step) == list(range(1, 41)) and "restore" in set(resumed.events.kind)
    with pytest.raises(lmwidget.CheckpointError, match="written by lmwidget.steer"):
        lmwidget.train(resume=paths[0], display=False)
    other, o, s, _ = own_loop(1)
    with pytest.raises(lmwidget.CheckpointError, match="has LR scheduler state, and this loop has none"):
        lmwidget.steer(other, o, display=False, resume=paths[0])


def test_bad_input_is_refused_before_any_thread():
    model, optimizer, scheduler, _ = own_loop(1, lr_scheduler=True)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer.*got dict"):
        lmwidget.steer(model, {"lr": 1e-3}, display=False)
    other = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of model GPT's parameters"):
        lmwidget.steer(model, other, display=False)
    with pytest.raises(ValueError, match="lr_scheduler LambdaLR is not bound to this optimizer"):
        lmwidget.steer(model, torch.optim.AdamW(model.parameters()), scheduler, display=False)
    with pytest.raises(ValueError, match="tokens_per_step must be an integer >= 1 or None; got 0"):
        lmwidget.steer(model, optimizer, display=False, tokens_per_step=0)
    with pytest.raises(TypeError, match="start\\(\\) takes your loop as a function"):
        lmwidget.steer(model, optimizer, display=False).start("train")
    assert not [t for t in threading.enumerate() if t.name.startswith("lmwidget-run")]


def test_a_non_finite_step_is_marked_and_pauses_the_run():
    run, model, optimizer, *_ = steered()

    def diverging():
        for i in range(FOREVER):
            _, loss = model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
            loss = loss * (math.inf if i == 10 else 1.0)
            loss.backward()
            if not run.tick(loss):
                return
            optimizer.zero_grad()

    run.start(diverging)
    wait_for(lambda: run.state == "paused" and run.anomaly is not None)
    assert run.anomaly[0] == 11 and "inf" in run.anomaly[1] and run.self_paused
    run.stop()
    run.wait(10)


@pytest.mark.slow
def test_your_loop_in_a_kernel_obeys_the_dashboard(tmp_path):
    """In a real kernel, the dashboard's buttons act on a loop of the user's, as a browser's
    clicks would: pause, the LR slider, save, stop."""
    kernel = Kernel(tmp_path)
    try:
        source = HARNESS_FRAMEWORKS.read_text()
        _, _, error, _ = kernel.execute(source)
        assert error is None, error
        _, err, error, displays = kernel.execute(
            "import lmwidget\n"
            "model, optimizer, scheduler, train = own_loop(10**9, lr_scheduler=True)\n"
            "run = lmwidget.steer(model, optimizer, scheduler, tokens_per_step=256)\n"
            "train.run = run\n"
            "run.start(train)")
        assert error is None and err == "", (error, err)
        assert any("application/vnd.jupyter.widget-view+json" in d for d in displays), "no dashboard shown"
        kernel.wait_for("run.step > 20", True)
        ids, frozen = kernel.pause_from_dashboard(controls=("lr_slider", "save_button", "stop_button"))
        kernel.set_value(ids["lr_slider"], 0.01)
        kernel.wait_for("round(run.lr, 9)", 0.01, timeout=5)
        kernel.click(ids["save_button"])
        kernel.wait_for("len(run.checkpoints)", 1, timeout=10)
        kernel.click(ids["pause_button"])
        kernel.wait_for(f"run.step > {frozen + 5}", True)
        assert kernel.value("scheduler.base_lrs") == [0.01]
        assert kernel.value(f"float(run.history.lr[run.history.step == {frozen + 1}].iloc[0])") == \
            pytest.approx(0.01 / (1 + frozen / 50))
        kernel.click(ids["stop_button"])
        kernel.wait_for("run.state", "stopped", timeout=10)
        assert kernel.value("run.alive") is False
        assert kernel.value("[k for k in run.events.kind]") == ["pause", "lr", "checkpoint", "resume", "stop"]
        path = kernel.value("run.checkpoints[0]['path']")
        _, _, error, _ = kernel.execute(
            f"m2, o2, s2, t2 = own_loop(5, lr_scheduler=True)\n"
            f"again = lmwidget.steer(m2, o2, s2, resume={path!r}, display=False)\n")
        assert error is None, error
        assert kernel.value("again.step") == frozen and kernel.value("s2.base_lrs") == [0.01]
        # a loop that blocks the cell: the dashboard still draws, from its own thread
        kernel.execute("m3, o3, s3, t3 = own_loop(600)\nmain = lmwidget.steer(m3, o3, max_steps=600)\n"
                       "t3.run = main")
        updates = kernel.comm_updates
        _, _, error, _ = kernel.execute("import time\nt0 = time.monotonic()\nwith main:\n    t3()\n"
                                        "took = time.monotonic() - t0")
        assert error is None, error
        assert kernel.value("main.state") == "finished" and kernel.value("len(main.history)") == 600
        assert kernel.comm_updates - updates >= 2, "no redraw while the cell ran the loop"
    finally:
        kernel.shutdown()
