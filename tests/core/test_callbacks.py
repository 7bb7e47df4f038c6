"""Tests for lmwidget.core.callbacks: the public hooks, early stopping and reduce-LR-on-plateau."""

from __future__ import annotations

import threading

import pytest
import torch

import lmwidget
from lmwidget import Callback, EarlyStopping, ReduceLROnPlateau
from lmwidget.core.callbacks import Callbacks

from tests.conftest import kinds, wait_for

FLAT = dict(lr=1e-9, eval_interval=10, max_steps=10_000)  # the model cannot move: a flat val loss


def start(tiny, callbacks, **options):
    return lmwidget.train(display=False, callbacks=callbacks, **{**tiny, **options})


def test_hooks_are_called_in_order_on_the_training_thread(tiny):
    class Recorder(Callback):
        def __init__(self):
            self.calls, self.threads = [], set()

        def on_train_begin(self, run):
            self.calls.append(("begin", run.step, run.state))
            self.threads.add(threading.current_thread().name)

        def on_step_end(self, run, step, metrics):
            assert step == run.step and torch.is_tensor(metrics["loss"]) and torch.is_tensor(metrics["grad_norm"])
            assert metrics["lr"] == run.lr and metrics["tokens"] == step * 8 * 32
            self.calls.append(("step", step, metrics["val_loss"] is not None))

        def on_eval(self, run, step, val_loss):
            assert isinstance(val_loss, float)
            self.calls.append(("eval", step, val_loss))

        def on_train_end(self, run):
            self.calls.append(("end", run.step, run.state))

    cb = Recorder()
    run = start(tiny, cb, max_steps=20, eval_interval=10)
    run.wait(30)
    assert cb.calls[0] == ("begin", 0, "running")
    assert [c for c in cb.calls if c[0] == "step"] == [("step", s, s in (10, 20)) for s in range(1, 21)]
    evals = [c for c in cb.calls if c[0] == "eval"]
    assert [c[1] for c in evals] == [10, 20]
    assert [c[2] for c in evals] == pytest.approx(run.history.val_loss.dropna().tolist())
    assert cb.calls[-1] == ("end", 20, "finished")
    assert cb.threads == {run._thread.name}
    # eval comes right after its step's on_step_end
    assert cb.calls.index(evals[0]) == cb.calls.index(("step", 10, True)) + 1


def test_a_plain_object_with_hooks_is_a_callback_and_a_wrong_one_is_refused(tiny):
    class Duck:
        def __init__(self):
            self.ended = False

        def on_train_end(self, run):
            self.ended = True

    duck = Duck()
    start(tiny, [duck], max_steps=3).wait(30)
    assert duck.ended
    with pytest.raises(TypeError, match=r"callbacks must be lmwidget.Callback objects .* got 3"):
        lmwidget.train(display=False, callbacks=[3], **tiny)
    assert not Callbacks([Callback()]).wants("on_step_end")  # inherited no-ops cost nothing


def test_a_failing_callback_fails_the_run_with_its_error(tiny):
    class Broken(Callback):
        def on_step_end(self, run, step, metrics):
            if step == 5:
                raise RuntimeError("my policy has a bug")

    run = start(tiny, Broken(), max_steps=100)
    with pytest.raises(RuntimeError, match="my policy has a bug"):
        run.wait(30)
    assert run.state == "failed" and run.step == 5


def test_callbacks_steer_through_the_controls_and_log_events(tiny):
    class Steer(Callback):
        def on_step_end(self, run, step, metrics):
            if step == 10:
                run.set_lr(1e-4, note="my schedule")
                run.log_event("milestone", 10, "ten steps")
            if step == 20:
                run.pause()

    run = start(tiny, Steer(), max_steps=100, eval_interval=0)
    run.dashboard  # noqa: B018 - the markers too
    wait_for(lambda: run.state == "paused", timeout=10)
    assert run.step == 20  # paused at the next step boundary, like the button
    events = run.events
    assert kinds(run) == ["milestone", "lr", "pause"]  # logged at once; the lr at the boundary
    lr = events[events.kind == "lr"].iloc[0]
    assert lr.step == 10 and lr.value == 1e-4 and lr.detail == "my schedule"
    h = run.history
    assert (h.lr[h.step > 10] == 1e-4).all() and (h.lr[h.step <= 10] == 3e-3).all()
    wait_for(lambda: any("milestone" in label for label in run.dashboard.charts["loss"].rules.labels))
    run.stop()


def test_early_stopping_stops_a_run_whose_validation_loss_is_flat(tiny):
    es = EarlyStopping(patience=3, min_delta=0.05)
    run = start(tiny, es, **FLAT)
    assert run.wait(60)
    # evaluations at 10 (the best), 20, 30, 40: three without improvement, stop after step 40
    assert run.state == "stopped" and run.step == 40 and es.stopped_at == 40
    stop = run.events[run.events.kind == "stop"].iloc[0]
    assert stop.step == 40
    assert stop.detail.startswith("early stopping: validation loss did not improve by more than 0.05 "
                                  "for 3 evaluations (best ")


def test_early_stopping_lets_an_improving_run_finish(tiny):
    es = EarlyStopping(patience=2)
    run = start(tiny, es, max_steps=150, eval_interval=25, lr=3e-3)
    assert run.wait(60)
    assert run.state == "finished" and es.stopped_at is None
    assert es.best_step >= 100  # it was still improving late in the run


def test_reduce_lr_on_plateau_lowers_the_lr_with_a_reason_and_respects_min_lr(tiny):
    plateau = ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.05, min_lr=2.5e-10)
    run = start(tiny, plateau, **{**FLAT, "max_steps": 100})
    assert run.wait(60)
    # evals at 10 (best), 20, 30 -> halve; 40, 50 -> halve to the floor; later: at the floor
    assert [s for s, _ in plateau.reductions] == [30, 50]
    assert [lr for _, lr in plateau.reductions] == pytest.approx([5e-10, 2.5e-10])
    events = run.events
    lr_events = events[events.kind == "lr"]
    assert lr_events.step.tolist() == [30, 50] and lr_events.value.tolist() == pytest.approx([5e-10, 2.5e-10])
    assert all(d.startswith("reduce LR on plateau: validation loss did not improve") for d in lr_events.detail)
    assert run.lr == pytest.approx(2.5e-10)


def test_policies_refuse_bad_settings():
    with pytest.raises(ValueError, match="patience must be an integer >= 1; got 0"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="min_delta must be a finite number >= 0.0; got -1"):
        EarlyStopping(min_delta=-1)
    with pytest.raises(ValueError, match=r"factor must be a number in \(0, 1\) .*got 2"):
        ReduceLROnPlateau(factor=2)
    with pytest.raises(ValueError, match="min_lr must be a finite number > 0.0; got 0"):
        ReduceLROnPlateau(min_lr=0)


def test_a_policy_object_serves_a_second_run_afresh(tiny):
    es = EarlyStopping(patience=3, min_delta=0.05)
    for _ in range(2):
        run = start(tiny, es, **FLAT)
        assert run.wait(60) and run.step == 40
