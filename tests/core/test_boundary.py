"""Tests for lmwidget.core.boundary.Boundary: the one step-boundary engine, driven directly
with a loop's means as plain functions, and shared by lmwidget's loop and yours."""

from __future__ import annotations

import pytest
import torch

from lmwidget.core.boundary import DURING, FRESH, LAST, Boundary
from lmwidget.core.control import Control
from lmwidget.core.health import GradNorms
from lmwidget.core.history import History


class FakeLoop:
    """What the engine reads of a loop: its record, control, step and name."""

    name = "fake run"
    max_steps = None
    started = True

    def __init__(self):
        self.record = History()
        self.control = Control()
        self.step = 0


class Means:
    """A loop's means, recording how the engine called them."""

    def __init__(self, changes: bool = True, val_loss=2.5):
        self.calls = []
        self.changes, self.val_loss = changes, val_loss

    def set_lr(self, lr):
        self.calls.append(("lr", lr))
        return self.changes

    def set_grad_clip(self, norm):
        self.calls.append(("grad_clip", norm))
        return self.changes

    def sample(self):
        self.calls.append(("sample",))
        return "hello"

    def evaluate(self):
        self.calls.append(("evaluate",))
        return self.val_loss

    def save(self):
        self.calls.append(("save",))

    def on_eval(self, step, value):
        self.calls.append(("on_eval", step, value))


def engine(fresh=None, **means):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    loop, m = FakeLoop(), Means(**means)
    boundary = Boundary(loop, GradNorms(model.named_parameters()), set_lr=m.set_lr,
                        set_grad_clip=m.set_grad_clip, sample=m.sample, evaluate=m.evaluate,
                        save=m.save, fresh_grads=fresh, on_eval=m.on_eval)
    return boundary, loop, m, model


def backward(model):
    model(torch.randn(5, 3)).square().sum().backward()


def events(loop):
    return [(step, kind, value, detail) for step, _, kind, value, detail in loop.record.events_since(0)]


def test_requests_are_carried_out_at_the_boundary_with_their_events():
    boundary, loop, m, _ = engine()
    loop.step = 7
    for kind, value in (("lr", 1e-3), ("grad_clip", 0.5), ("sample", None), ("evaluate", None), ("save", None)):
        loop.control.request(kind, value, "a policy" if kind == "lr" else "")
    assert boundary.boundary() is True
    assert m.calls == [("lr", 1e-3), ("grad_clip", 0.5), ("sample",), ("evaluate",), ("on_eval", 7, 2.5), ("save",)]
    assert events(loop) == [(7, "lr", 1e-3, "a policy"), (7, "grad_clip", 0.5, ""), (7, "sample", None, ""),
                            (7, "eval", 2.5, "asked for")]  # a save records its own event
    assert loop.record.samples_since(0) == [(7, "hello")]
    assert loop.record.logged_since(0) == [] and loop.record.drain() == 0
    loop.record.push(step=7)
    loop.record.drain()
    assert loop.record.last("val_loss") == 2.5  # the evaluation lands in its step's row


def test_a_request_that_changes_nothing_is_not_an_event():
    boundary, loop, m, _ = engine(changes=False, val_loss=None)
    assert boundary.apply("lr", 1e-3) is False and boundary.apply("grad_clip", 1.0) is False
    assert boundary.apply("evaluate", None) is False  # the framework evaluates and records it itself
    assert boundary.apply("no such request", 1) is False
    assert m.calls == [("lr", 1e-3), ("grad_clip", 1.0), ("evaluate",)]  # and no on_eval
    assert events(loop) == []


def test_no_request_no_work():
    boundary, loop, m, model = engine()
    backward(model)
    for _ in range(3):
        assert boundary.boundary() is True
        total, per_group = boundary.gradients(1)
    assert m.calls == [] and events(loop) == [] and loop.record.histograms_since(0) == []
    assert per_group.shape == (2,) and torch.is_tensor(total)  # device tensors: nothing was read


def test_histograms_while_running_are_taken_during_the_next_step():
    boundary, loop, _, model = engine()
    assert boundary.apply("histogram", "1") is False
    assert loop.record.histograms_since(0) == []  # no gradients yet: it waits for the step
    backward(model)
    total, _ = boundary.gradients(1)
    boundary.gradients(2)  # once only
    (h,) = loop.record.histograms_since(0)
    assert (h["step"], h["group"], h["source"]) == (1, "1", DURING)
    assert h["weights"]["counts"].sum() == 4 * 2 + 2 == h["grads"]["counts"].sum()


def test_histograms_between_steps_come_from_a_fresh_batch_or_the_last_gradients():
    asked = []

    def fresh(params):
        asked.append(len(params))
        return [torch.ones_like(p) for p in params]

    for fresh_grads, where in ((fresh, FRESH), (None, LAST)):
        boundary, loop, _, model = engine(fresh=fresh_grads)
        backward(model)
        loop.step = 3
        boundary.end("stopped")
        boundary.request("histogram", "0")  # the loop has ended: carried out at once, for this group
        (h,) = loop.record.histograms_since(0)
        assert (h["step"], h["group"], h["source"]) == (3, "0", where)
        assert h["weights"]["counts"].sum() == 3 * 4 + 4 == h["grads"]["counts"].sum()
    assert asked == [2]


def test_requests_made_while_paused_are_carried_out_while_paused():
    boundary, loop, m, model = engine(fresh=lambda params: [p.detach() for p in params])
    loop.control.pause()
    loop.control.request("sample")
    waits = []

    def wait_paused():  # the loop's wait: a request arrives, then a resume
        waits.append(boundary.state)
        if len(waits) == 1:
            loop.control.request("histogram", "1")
        else:
            loop.control.resume()

    boundary.wait_paused = wait_paused
    assert boundary.boundary() is True
    assert waits == ["paused", "paused"] and m.calls == [("sample",)]
    assert [e[1] for e in events(loop)] == ["sample", "pause", "resume"]
    (h,) = loop.record.histograms_since(0)
    assert (h["group"], h["source"]) == ("1", FRESH)  # paused: taken at once, from a fresh batch


def test_release_lets_go_of_the_parameters():
    boundary, _, _, _ = engine()
    boundary.histogram_of = "0"
    boundary.release()
    assert boundary.norms.params == [] and boundary.histogram_of is None


@pytest.mark.parametrize("which", ["lmwidget's loop", "your loop"])
def test_every_loop_owns_the_one_engine(which):
    from lmwidget.adapters.loop import Loop
    from lmwidget.core.source import Source
    from lmwidget.training.config import TrainConfig
    from lmwidget.training.run import Run

    if which == "your loop":
        model = torch.nn.Linear(2, 2)
        run = Loop(model, torch.optim.SGD(model.parameters(), lr=0.1))
    else:
        run = Run(TrainConfig.from_options(n_layer=1, n_embd=16, n_head=2, block_size=16, max_steps=2))
    assert isinstance(run, Source) and isinstance(run.steering, Boundary)
