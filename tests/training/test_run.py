import math
import threading
from fractions import Fraction
import time

import numpy as np
import psutil
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lmwidget
from lmwidget import LmwidgetWarning

from tests.conftest import kinds, run_python, wait_for
from tests.harness.pace import scaled

LONG = 1_000_000  # steps: runs that only end when told to


def start(tiny, **options):
    return lmwidget.train(display=False, **{**tiny, **options})


def test_train_returns_at_once_and_finishes(tiny):
    # torch imports its compiler the first time any optimizer is built in a process (1.7 s
    # here, 8 s on a busy machine): once per kernel, and not lmwidget's to measure
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    t0 = time.monotonic()
    run = start(tiny, max_steps=LONG)
    assert time.monotonic() - t0 < scaled(2.0)
    assert run.state == "running"
    run.stop()
    short = start(tiny, max_steps=30)
    assert short.wait(timeout=30) is True
    assert short.state == "finished" and short.step == 30
    assert len(short.history) == 30


def test_wait_times_out_on_a_running_run(tiny):
    run = start(tiny, max_steps=LONG)
    assert run.wait(timeout=0.05) is False
    assert run.state == "running"


def test_pause_freezes_the_step_counter_and_resume_continues(tiny):
    run = start(tiny, max_steps=LONG)
    wait_for(lambda: run.step > 5)
    threading.Thread(target=run.pause).start()  # from another thread
    wait_for(lambda: run.state == "paused", timeout=2)
    frozen = run.step
    time.sleep(0.5)
    assert run.step == frozen and run.state == "paused"
    assert len(run.history) == frozen  # everything up to the pause is readable
    threading.Thread(target=run.resume).start()
    wait_for(lambda: run.step > frozen + 5, timeout=2)
    assert run.state == "running"
    assert kinds(run) == ["pause", "resume"]
    events = run.events
    assert events[events.kind != "eval"].step.tolist() == [frozen, frozen]


def test_pause_waits_without_burning_cpu(tiny):
    run = start(tiny, max_steps=LONG)
    wait_for(lambda: run.step > 5)
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    native = run._thread.native_id

    def cpu_seconds():
        thread = next(t for t in psutil.Process().threads() if t.id == native)
        return thread.user_time + thread.system_time

    before = cpu_seconds()
    time.sleep(1.0)
    assert cpu_seconds() - before < 0.05


def test_controls_are_idempotent(tiny):
    run = start(tiny, max_steps=LONG)
    wait_for(lambda: run.step > 2)
    run.pause()
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    run.pause()
    time.sleep(0.05)
    run.resume()
    run.resume()
    wait_for(lambda: run.state == "running", timeout=2)
    run.stop()
    run.stop()
    assert run.wait(timeout=2)
    run.stop()
    run.pause()
    run.resume()
    assert run.state == "stopped"
    assert kinds(run) == ["pause", "resume", "stop"]


def test_wait_for_step(tiny):
    run = start(tiny, max_steps=LONG)
    assert run.wait_for_step(20, timeout=scaled(30)) and run.step >= 20
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=5)
    assert run.wait_for_step(run.step + 1, timeout=0.3) is False  # timed out, paused by you
    run.stop()
    run.wait(10)
    assert run.wait_for_step(run.step + 1) is False  # ended before it: at once, never forever
    assert run.wait_for_step(run.step) is True
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="step must be an int >= 0; got"):
            run.wait_for_step(bad)
    diverging = start(tiny, max_steps=LONG, lr=1e4)  # pauses itself on a non-finite step
    assert diverging.wait_for_step(LONG, timeout=scaled(60)) is False and diverging.self_paused
    diverging.stop()
    vocab = lmwidget.Dataset(lmwidget.data.text.builtin_text()).vocab_size
    failing = start(tiny, model=Boom(vocab, fail_at=12), max_steps=LONG, eval_interval=1000)
    with pytest.raises(RuntimeError, match="boom at call 12"):  # its failure, raised here
        failing.wait_for_step(LONG, timeout=scaled(60))


def test_set_lr_applies_within_one_step(tiny):
    run = start(tiny, max_steps=LONG, lr=3e-3)
    wait_for(lambda: run.step > 10)
    called_at = []

    def set_lr():
        called_at.append(run.step)
        run.set_lr(1e-4)

    threading.Thread(target=set_lr).start()
    wait_for(lambda: called_at and run.step > called_at[0] + 5, timeout=2)
    called_at = called_at[0]
    h = run.history
    first = int(h.step[h.lr == 1e-4].iloc[0])
    assert first <= called_at + 2  # the step running when it was called, then the next
    assert (h.lr[h.step >= first] == 1e-4).all()
    assert (h.lr[h.step < first] == 3e-3).all()
    events = run.events[run.events.kind != "eval"]
    assert events.kind.tolist() == ["lr"] and events.value.tolist() == [1e-4]
    assert run.lr == 1e-4


def test_set_lr_keeps_the_schedule_shaping_it(tiny):
    run = start(tiny, max_steps=400, lr=1e-2, schedule="cosine", min_lr_ratio=0.0)
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    run.set_lr(1e-3)
    run.resume()
    run.wait(30)
    h = run.history
    events = run.events
    after = h[h.step > events[events.kind == "lr"].step.iloc[-1] + 1]
    assert len(after) > 300
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 400)) for s in after.step]
    np.testing.assert_allclose(after.lr, expected, rtol=1e-9)


def test_set_lr_while_paused_is_applied_and_recorded(tiny):
    run = start(tiny, max_steps=LONG)
    wait_for(lambda: run.step > 3)
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    run.set_lr(5e-4)
    wait_for(lambda: run.lr == 5e-4, timeout=2)
    assert run.state == "paused"
    assert kinds(run) == ["pause", "lr"]


def test_set_grad_clip(tiny):
    run = start(tiny, max_steps=LONG, grad_clip=1.0)
    run.set_grad_clip(0.25)
    wait_for(lambda: run.grad_clip == 0.25, timeout=2)
    assert kinds(run) == ["grad_clip"]


def test_stop_ends_the_thread_within_two_seconds_and_leaves_none(tiny):
    run = start(tiny, max_steps=LONG)
    wait_for(lambda: run.step > 3)
    t0 = time.monotonic()
    threading.Thread(target=run.stop).start()
    run._thread.join(scaled(2.0))
    assert not run._thread.is_alive()
    assert time.monotonic() - t0 < scaled(2.0)
    assert run.state == "stopped"
    assert not [t for t in threading.enumerate() if t.name.startswith("lmwidget-run")]
    assert len(run.history) == run.step


def test_stop_while_paused(tiny):
    run = start(tiny, max_steps=LONG)
    run.pause()
    wait_for(lambda: run.state == "paused", timeout=2)
    run.stop()
    assert run.wait(timeout=2) and run.state == "stopped"


def test_sample_while_training_and_after(tiny):
    run = start(tiny, max_steps=LONG)
    wait_for(lambda: run.step > 3)
    text = run.sample()
    assert len(text) == 200 and set(text) <= set(run.tokenizer.chars)
    run.stop()
    run.wait(2)
    assert len(run.sample()) == 200
    assert [kind for kind in kinds(run) if kind == "sample"] == ["sample", "sample"]
    assert len(run.samples) == 2


def test_sampling_does_not_change_the_loss_curve(tiny):
    plain = start(tiny, max_steps=60, seed=3)
    plain.wait(30)
    sampled = start(tiny, max_steps=60, seed=3)
    sampled.sample()
    sampled.sample()
    sampled.wait(30)
    np.testing.assert_array_equal(plain.history.loss, sampled.history.loss)


class Boom(nn.Module):
    """A bigram model that raises at a chosen forward call, to exercise failure."""

    def __init__(self, vocab_size, fail_at=None):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, idx, targets=None):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("boom at call %d" % self.calls)
        logits = self.table(idx)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            probs = F.softmax(self(idx)[0][:, -1] / temperature, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, 1)), dim=1)
        return idx


def test_a_user_model_plugs_in(tiny):
    vocab = lmwidget.Dataset(lmwidget.data.text.builtin_text()).vocab_size
    run = start(tiny, model=Boom(vocab), max_steps=50, lr=0.1)
    assert run.wait(30)
    h = run.history
    assert h.loss.iloc[-5:].mean() < h.loss.iloc[:3].mean()
    assert len(run.sample()) == 200


def test_lstm_trains(tiny):
    run = start(tiny, model="lstm", max_steps=60, lr=1e-2)
    assert run.wait(30)
    assert run.history.loss.tail(5).mean() < run.history.loss.head(3).mean() - 0.5


def test_failure_keeps_history_and_wait_reraises(tiny):
    vocab = lmwidget.Dataset(lmwidget.data.text.builtin_text()).vocab_size
    run = start(tiny, model=Boom(vocab, fail_at=12), max_steps=LONG, eval_interval=1000)
    with pytest.raises(RuntimeError, match="boom at call 12"):
        run.wait(10)
    assert run.state == "failed"
    assert len(run.history) == 10  # call 1 is the contract check; steps 1..10 completed
    assert isinstance(run.error, RuntimeError)


def _thread_names():
    """Training threads (the monitor and earlier runs' views come and go by themselves)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("lmwidget-run"))


@pytest.mark.parametrize("options, error, match", [
    (dict(lr=0), ValueError, r"lr must be a finite number > 0.*got 0"),
    (dict(lr=-1e-3), ValueError, r"got -0.001"),
    (dict(lr=float("nan")), ValueError, r"got nan"),
    (dict(lr=float("inf")), ValueError, r"got inf"),
    (dict(lr="fast"), ValueError, r"got 'fast'"),
    (dict(lr=True), ValueError, r"got True"),
    (dict(max_steps=0), ValueError, r"max_steps must be an integer >= 1; got 0"),
    (dict(max_steps=-5), ValueError, r"got -5"),
    (dict(max_steps=2.5), ValueError, r"got 2.5"),
    (dict(block_size=50_000), ValueError, r"block_size=50000 is longer than the validation split"),
    (dict(data="to be or not to be, that is the question", block_size=32), ValueError,
     r"block_size=32 is longer than the validation split allows: it has 4 tokens"),
    (dict(data=""), ValueError, r"empty"),
    (dict(model="gpx"), ValueError, r"unknown model 'gpx'; valid: gpt, lstm"),
    (dict(data="shakspeare"), ValueError, r"(?i)valid corpus names: builtin, shakespeare"),
    (dict(optimizer="lion"), ValueError, r"unknown optimizer 'lion'; valid: adamw, adam, sgd"),
    (dict(schedule="step"), ValueError, r"valid: constant, cosine, exponential"),
    (dict(grad_clip=-1), ValueError, r"grad_clip must be a finite number >= 0"),
    (dict(n_embd=30, n_head=4), ValueError, r"n_embd=30, n_head=4"),
    (dict(lrr=1e-3), TypeError, r"unknown option\(s\) lrr; valid options: .*lr"),
    (dict(schedule="exponential", min_lr_ratio=0), ValueError, r"min_lr_ratio must be > 0"),
])
def test_bad_input_is_refused_before_any_thread_starts(tiny, options, error, match):
    threads, runs = _thread_names(), len(lmwidget.runs())
    with pytest.raises(error, match=match):
        start(tiny, **options)
    assert _thread_names() == threads
    assert len(lmwidget.runs()) == runs


def test_bad_files_are_named(tiny, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8"):
        start(tiny, data=str(latin1))
    with pytest.raises(ValueError, match=r"missing.txt"):
        start(tiny, data=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match=r"adir' is a directory but not a token directory: it has no meta.json"):
        (tmp_path / "adir").mkdir()
        start(tiny, data=tmp_path / "adir")


def test_a_model_that_breaks_the_contract_is_refused(tiny):
    class LogitsOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(200, 200)

        def forward(self, idx, targets=None):
            return self.table(idx)

    with pytest.raises(TypeError, match=r"must return \(logits, loss\)"):
        start(tiny, model=LogitsOnly())
    assert not lmwidget.core.registry.active_runs()


@pytest.mark.parametrize("call, value, why", [
    ("set_lr", -1, "got -1$"), ("set_lr", float("nan"), "got nan$"), ("set_lr", "x", "got 'x'$"),
    ("set_lr", 0, "got 0$"), ("set_grad_clip", -0.5, "got -0.5$"), ("set_grad_clip", float("inf"), "got inf$"),
    ("set_lr", 10**400, r"got 1000000000\d+\.\.\. \(401 characters\) \(too large for a float\)$"),
    ("set_lr", Fraction(1, 10**400), r"got Fraction\(1, 1000\d+\.\.\. \(414 characters\) \(0\.0 as a float\)$"),
    ("set_grad_clip", Fraction(1, 10**400), r"\(0\.0 as a float\)$"),  # not "off" by rounding
])
def test_a_bad_control_call_leaves_the_run_untouched(tiny, call, value, why):
    run = start(tiny, max_steps=LONG)
    wait_for(lambda: run.step > 2)
    with pytest.raises(ValueError, match=why):  # a ValueError, never an OverflowError or a silent 0.0
        getattr(run, call)(value)
    step = run.step
    wait_for(lambda: run.step > step + 3, timeout=2)
    assert run.state == "running" and run.lr == 3e-3 and run.grad_clip == 1.0
    assert run.events.empty


def test_a_second_run_warns_and_does_not_start(tiny):
    first = start(tiny, max_steps=LONG)
    with pytest.warns(LmwidgetWarning, match="%lmstop"):
        second = start(tiny, max_steps=LONG)
    assert second is first
    assert len([t for t in threading.enumerate() if t.name.startswith("lmwidget-run")]) == 1
    both = start(tiny, max_steps=LONG, concurrent=True)
    assert both is not first and both.state == "running" and first.state == "running"


def test_repr(tiny):
    run = start(tiny, max_steps=5)
    run.wait(10)
    assert repr(run) == f"<lmwidget.Run {run.id}: gpt, finished, step 5/5, lr=0.003>"


def test_exiting_python_while_a_run_trains_is_clean():
    done = run_python("import lmwidget; lmwidget.train(display=False, max_steps=10**6, n_layer=1, "
                      "n_embd=32, block_size=32); print('bye')")
    assert done.stdout.strip() == "bye"


def test_the_second_run_warning_shows_every_time():
    """Python prints a warning once per call site by default; this one must not go quiet."""
    done = run_python("import lmwidget\n"
                      "opts = dict(display=False, n_layer=1, n_embd=32, block_size=32, max_steps=10**6)\n"
                      "first = lmwidget.train(**opts)\n"
                      "for _ in range(3):\n"
                      "    assert lmwidget.train(**opts) is first\n")
    assert done.stderr.count("LmwidgetWarning") == 3


def test_same_seed_same_curve_with_dropout(tiny):
    curves = []
    for _ in range(2):
        run = start(tiny, max_steps=15, dropout=0.1, seed=5)
        run.wait(30)
        curves.append(run.history.loss.to_numpy())
    np.testing.assert_array_equal(*curves)


def test_after_the_end_steering_is_refused_and_the_state_shown_stays(tiny):
    """A new LR or clip norm is refused, saying why; pause, resume and stop ask for a state
    the run is past, and do nothing; a sample is still taken."""
    run = start(tiny, max_steps=3)
    run.wait(30)
    lr, clip = run.lr, run.grad_clip
    for call, value, what in (("set_lr", 1e-2, "change its learning rate"),
                              ("set_grad_clip", 0.5, "change its clip norm")):
        with pytest.raises(RuntimeError, match=rf"^run {run.id} has ended \(finished at step 3\): "
                                               rf"it cannot {what} any more; sample, save"):
            getattr(run, call)(value)
    run.pause()
    run.resume()
    run.pause()
    run.stop()
    assert (run.state, run.paused, run.lr, run.grad_clip) == ("finished", False, lr, clip)
    first, second = run.sample(), run.sample()
    assert first != second  # each sample draws anew, even at the same step
    assert kinds(run) == ["sample", "sample"]
    assert not run.control.pending("lr")


def one_slow_step(tiny):
    """A run of one 0.3 s step, 0.1 s into it."""
    class Slow(Boom):
        def forward(self, idx, targets=None):
            if targets is not None and idx.size(0) == 8:
                time.sleep(0.3)  # the training step, not the contract check
            return super().forward(idx, targets)

    vocab = lmwidget.Dataset(lmwidget.data.text.builtin_text()).vocab_size
    run = start(tiny, model=Slow(vocab), max_steps=1, eval_interval=0)
    time.sleep(0.1)  # inside the only step
    return run


def test_requests_during_the_last_step_are_applied(tiny):
    run = one_slow_step(tiny)
    run.request_sample()
    run.set_lr(1e-2)
    assert run.wait(10)
    assert run.state == "finished" and run.lr == 1e-2 and len(run.samples) == 1
    assert sorted(kinds(run)) == ["lr", "sample"]


def test_a_request_as_the_run_ends_is_applied_in_order_or_refused(tiny, monkeypatch):
    """The loop closes the control, then applies the requests left from its last step (a
    0.2 s delay injected between the two). A set_lr made in that gap waits for the end and
    is refused: it can neither be applied and then overwritten by a leftover, nor lost."""
    from lmwidget.core.control import Control

    close = Control.close

    def slow_close(self):
        left = close(self)
        time.sleep(0.2)
        return left

    monkeypatch.setattr(Control, "close", slow_close)

    run = one_slow_step(tiny)
    run.set_lr(1e-2)  # left over when the loop ends: applied by the end
    wait_for(lambda: run.control.closed, timeout=5)
    with pytest.raises(RuntimeError, match="has ended .* it cannot change its learning rate"):
        run.set_lr(2e-2)  # in the gap: waits for the end, then refused
    assert run.wait(10) and run.lr == 1e-2 and kinds(run) == ["lr"]


def test_repr_does_not_copy_the_users_model(tiny):
    vocab = lmwidget.Dataset(lmwidget.data.text.builtin_text()).vocab_size
    model = Boom(vocab)
    model.cache = model.table.weight * 2  # a non-leaf tensor: deepcopy would raise
    run = start(tiny, model=model, max_steps=2)
    run.wait(30)
    assert repr(run).startswith(f"<lmwidget.Run {run.id}: Boom, finished")


def test_a_dataset_moved_for_one_run_is_not_moved_under_another():
    ds = lmwidget.Dataset("to be or not to be " * 100)
    moved = ds.to("meta")
    assert moved is not ds and isinstance(ds.train, np.ndarray) and moved.train.device.type == "meta"
    assert moved.tokenizer is ds.tokenizer
    assert ds.to("cpu").train is ds.train  # on the CPU the compact tokens are used as they are


def test_a_branch_continues_from_its_parents_state(tiny):
    """Branched at step 30 with the same LR, a run repeats what its parent does next; with
    another LR it parts from it. Both start paused at the branch step, with the parent's
    history, and the parent goes on untouched."""
    from lmwidget import Callback

    class PauseAt(Callback):
        def on_step_end(self, run, step, metrics):
            if step == 30:
                run.pause()

    reference = lmwidget.train(display=False, max_steps=60, **tiny)
    reference.wait(60)
    parent = lmwidget.train(display=False, max_steps=60, callbacks=PauseAt(), **tiny)
    wait_for(lambda: parent.state == "paused", 30)
    same = parent.branch(display=False)
    other = parent.branch(lr=1e-2, display=False)
    for child in (same, other):
        assert child.state == "paused" and child.step == 30
        assert list(child.history.step) == list(range(1, 31))
        np.testing.assert_array_equal(child.history.loss, parent.history.loss)  # same loss at the branch step
    assert other.lr == 1e-2 and same.lr == parent.lr
    for r in (same, other, parent):
        r.resume()
    for r in (same, other, parent):
        assert r.wait(60) and r.step == 60
    np.testing.assert_array_equal(same.history.loss, reference.history.loss)
    np.testing.assert_array_equal(parent.history.loss, reference.history.loss)
    assert not np.allclose(other.history.loss[30:], reference.history.loss[30:])
    events = parent.events
    assert f"run {other.id} branched here, lr=0.01" in set(events.detail)
    assert "resumed from run" in " ".join(same.events.detail)


def test_a_running_run_branches_between_two_steps(tiny):
    parent = lmwidget.train(display=False, max_steps=10**6, **tiny)
    wait_for(lambda: parent.step > 10, 30)
    child = parent.branch(display=False, max_steps=10**6)
    assert child.state == "paused" and child.step >= 11 and parent.state == "running"
    assert len(child.history) == child.step
    np.testing.assert_array_equal(child.history.loss, parent.history.loss[:child.step])
    with pytest.raises(ValueError, match="n_embd=16 differs"):
        parent.branch(n_embd=16, display=False)
    parent.stop()
    child.stop()


def test_a_branch_with_dropout_repeats_its_parent_when_they_take_turns(tiny):
    """A branch sets the process-wide RNGs (dropout) only when it is resumed: the parent,
    resumed first, is untouched by it, and the branch, resumed after, repeats the reference."""
    from lmwidget import Callback

    class PauseAt(Callback):
        def on_step_end(self, run, step, metrics):
            if step == 30:
                run.pause()

    options = {**tiny, "dropout": 0.2, "max_steps": 60}
    reference = lmwidget.train(display=False, **options)
    reference.wait(60)
    parent = lmwidget.train(display=False, callbacks=PauseAt(), **options)
    wait_for(lambda: parent.state == "paused", 30)
    child = parent.branch(display=False)
    parent.resume()
    assert parent.wait(60)
    torch.rand(10)  # other code draws in between
    child.resume()
    assert child.wait(60)
    np.testing.assert_array_equal(parent.history.loss, reference.history.loss)
    np.testing.assert_array_equal(child.history.loss, reference.history.loss)


class ForwardOnly(nn.Module):
    """A user model with no generate(): lmwidget samples from its forward()."""

    def __init__(self, vocab_size):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)
        self.contexts = []

    def forward(self, idx, targets=None):
        self.contexts.append(idx.shape[1])
        logits = self.table(idx)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def test_a_user_model_without_generate_is_sampled_from_its_forward(tiny):
    model = ForwardOnly(lmwidget.Dataset.load("builtin").vocab_size)
    run = start(tiny, model=model, max_steps=20, lr=0.1)
    assert run.wait(30)
    model.contexts.clear()
    text = run.sample()
    assert len(text) == 200
    assert max(model.contexts) == tiny["block_size"]  # the context is cropped to block_size


def test_wait_returns_when_the_run_pauses_itself_but_waits_through_your_pause(tiny):
    run = start(tiny, max_steps=LONG, lr=1e4)  # diverges within a few steps: a non-finite step
    t0 = time.monotonic()
    assert run.wait(60) is False
    assert time.monotonic() - t0 < scaled(30) and run.state == "paused" and run.anomaly is not None
    run.stop()
    assert run.wait(30) is True
    # resumed after it paused itself: wait() waits again (to the end, or to the next anomaly)
    run = start(tiny, max_steps=40, lr=1e4)
    assert run.wait(60) is False
    first = run.anomaly[0]
    run.set_lr(1e-4)
    run.resume()
    assert run.wait(60) is True or run.anomaly[0] > first
    run.stop()
    run.wait(30)
    # a pause of the user's own: wait() keeps waiting, through it, to the end
    run = start(tiny, max_steps=60)
    run.pause()
    threading.Timer(0.5, run.resume).start()
    t0 = time.monotonic()
    assert run.wait(60) is True and run.state == "finished"
    assert time.monotonic() - t0 >= 0.4
    assert run.wait(0) is True  # an ended run: at once


def test_wait_refuses_the_runs_own_thread_and_a_run_not_started(tiny):
    seen = []

    class WaitsForItself(lmwidget.Callback):
        def on_step_end(self, run, step, metrics):
            if step == 2:
                try:
                    run.wait(1)
                except RuntimeError as e:
                    seen.append(str(e))

    run = start(tiny, max_steps=5, callbacks=[WaitsForItself()])
    assert run.wait(30)
    assert seen and "own training thread" in seen[0]
    unstarted = lmwidget.Run(lmwidget.TrainConfig.from_options(**tiny, max_steps=5))
    with pytest.raises(RuntimeError, match="has not started: call run.start"):
        unstarted.wait(1)


def test_a_run_resumed_before_it_got_to_pause_is_waited_through_a_later_pause(tiny):
    """A callback resumes at once after a non-finite step: the self-pause never lands, and a
    later pause of the user's is not mistaken for one."""
    class ResumesAtOnce(lmwidget.Callback):
        def on_step_end(self, run, step, metrics):
            if step == 3:
                run._trainer.nonfinite(step, float("nan"), float("nan"))  # as the guard does
                run.resume()

    run = start(tiny, max_steps=200, callbacks=[ResumesAtOnce()])
    wait_for(lambda: run.step > 10, timeout=30)
    assert run._trainer.self_paused is False
    run.pause()
    threading.Timer(0.5, run.resume).start()
    assert run.wait(60) is True and run.state == "finished"
