import copy
import math
import sys
import threading
import time

import numpy as np
import pytest
import torch

from lmwidget.training.config import TrainConfig
from lmwidget.core.control import Control
from lmwidget.data.dataset import Dataset
from lmwidget.data.text import builtin_text
from lmwidget.core.history import History
from lmwidget.models.builtin import build_model
from lmwidget.training.optim import lr_factor
from lmwidget.training.builtin_loop import BuiltinLoop

from tests.conftest import TINY, run_python


@pytest.fixture(scope="module")
def text():
    return builtin_text()[:60_000]


def make_trainer(text, **options):
    config = TrainConfig.from_options(**{**TINY, "eval_interval": 10_000, **options})
    dataset = Dataset(text, config.val_fraction)
    torch.manual_seed(config.seed)
    model = build_model(config.model, dataset.vocab_size, config.block_size, config.n_layer,
                        config.n_head, config.n_embd, config.dropout)
    return BuiltinLoop(config, model, dataset, Control(), History())


def run_steps(text, steps, **options):
    trainer = make_trainer(text, max_steps=steps, **options)
    trainer.run()
    assert trainer.state == "finished", trainer.error
    return trainer, trainer.history.frame()


def test_recorded_lr_is_the_applied_lr(text):
    trainer, h = run_steps(text, 40, schedule="cosine", warmup_steps=5, lr=1e-2)
    expected = [1e-2 * lr_factor(trainer.config, s) for s in range(40)]
    np.testing.assert_allclose(h.lr, expected)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected[-1])


def test_same_seed_same_loss_curve(text):
    _, a = run_steps(text, 30, seed=7)
    _, b = run_steps(text, 30, seed=7)
    _, c = run_steps(text, 30, seed=8)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.array_equal(a.loss, c.loss)


def test_loss_falls_and_columns_are_consistent(text):
    trainer, h = run_steps(text, 150, eval_interval=50)
    assert h.loss.tail(20).mean() < h.loss.head(5).mean() - 0.8
    assert list(h.step) == list(range(1, 151))
    assert list(h.tokens) == [s * 8 * 32 for s in range(1, 151)]
    np.testing.assert_allclose(h.tokens_per_sec, 8 * 32 / h.step_time)
    assert h.val_loss.notna().tolist() == [s % 50 == 0 for s in range(1, 151)]
    np.testing.assert_allclose(h.val_perplexity.dropna(), np.exp(h.val_loss.dropna()))


def test_last_step_is_always_evaluated(text):
    _, h = run_steps(text, 7, eval_interval=5)
    assert h.val_loss.notna().tolist() == [False] * 4 + [True, False, True]


def test_eval_interval_zero_never_evaluates(text):
    _, h = run_steps(text, 7, eval_interval=0)
    assert h.val_loss.isna().all()


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_optimizers_learn(text, optimizer):
    lr = 0.3 if optimizer == "sgd" else 1e-2
    _, h = run_steps(text, 60, optimizer=optimizer, lr=lr)
    assert h.loss.tail(10).mean() < h.loss.head(3).mean() - 0.5


def test_grad_norm_is_before_clipping_and_the_update_is_clipped(text):
    trainer = make_trainer(text, max_steps=1, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                           lr=0.1, grad_clip=1e-3)
    before = [p.detach().clone() for p in trainer.params]
    trainer.run()
    grad_norm = trainer.history.frame().grad_norm[0]
    assert grad_norm > 0.1  # the raw norm is recorded, far above the clip threshold
    moved = math.sqrt(sum(((p.detach() - b) ** 2).sum().item() for p, b in zip(trainer.params, before)))
    assert moved == pytest.approx(0.1 * 1e-3, rel=1e-3)  # lr * clipped norm


def test_grad_accumulation_averages_micro_batches(text):
    trainer = make_trainer(text, max_steps=1, grad_accum=2, optimizer="sgd", lr=1e-9)
    reference = copy.deepcopy(trainer.model)
    gen = torch.Generator().manual_seed(trainer.config.seed)
    losses = []
    for _ in range(2):
        x, y = trainer.data.batch("train", 8, 32, gen)
        losses.append(reference(x, y)[1])
    (sum(losses) / 2).backward()
    expected = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad) for p in reference.parameters()]))
    trainer.run()
    h = trainer.history.frame()
    assert h.grad_norm[0] == pytest.approx(expected.item(), rel=1e-5)
    assert h.loss[0] == pytest.approx((sum(losses) / 2).item(), rel=1e-6)
    assert h.tokens[0] == 2 * 8 * 32


def test_no_host_device_sync_per_step(text, monkeypatch):
    """lmwidget's hot path never reads a scalar back: only History.drain does, in batches.

    (torch's own optimizers call .item() on their CPU step counters; those are not counted.)
    """
    calls = {"item": 0, "float": 0, "cpu": 0, "tolist": 0, "tolist_of_host_copies": 0}
    host = []  # the guard's host buffer: on a GPU the landed non-blocking copies, read without a sync
    for name, method in (("item", "item"), ("float", "__float__"), ("cpu", "cpu"), ("tolist", "tolist")):
        original = getattr(torch.Tensor, method)

        def counted(self, *a, _original=original, _name=name, **k):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("lmwidget"):
                if _name == "tolist" and self.untyped_storage().data_ptr() in host:
                    calls["tolist_of_host_copies"] += 1
                else:
                    calls[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, method, counted)
    trainer = make_trainer(text, max_steps=600)
    assert trainer.guard.on_device  # the fused optimizer skips non-finite steps on the device
    host.append(trainer.guard._host.untyped_storage().data_ptr())
    trainer.run()
    assert calls["item"] == 0 and calls["float"] == 0 and calls["tolist"] == 0
    assert calls["cpu"] <= 4  # 600 steps drained at 256, 512 and the end
    assert calls["tolist_of_host_copies"] == 600  # each step's finiteness, read from host memory
    assert len(trainer.history) == 600


def test_cpu_training_threads_leave_the_callers_threads_alone():
    """The loop picks its own intra-op threads; the thread that started it keeps its count.

    In a fresh process, like a kernel whose main thread has run no torch op yet.
    """
    default = run_python("import torch; print(torch.get_num_threads())").stdout.strip()
    if int(default) < 2:
        pytest.skip("one CPU: nothing to tell apart")
    code = ("import threading, torch, lmwidget\n"
            "run = lmwidget.train(display=False, max_steps=3, threads=1, n_layer=1, n_embd=32, "
            "block_size=32)\n"
            "run.wait()\n"
            "seen = []\n"
            "t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))\n"
            "t.start(); t.join()\n"
            "print(torch.get_num_threads(), seen[0])")
    main, _ = run_python(code).stdout.split()
    assert main == default  # the user's thread keeps torch's default
    # (threads started later take the last setting: that is torch's rule, not lmwidget's)


def test_bfloat16_autocast_trains(text):
    trainer, h = run_steps(text, 60, dtype="bfloat16", lr=1e-2, eval_interval=30)
    assert trainer.autocast.fast_dtype == torch.bfloat16 and trainer.autocast._enabled
    assert h.loss.tail(10).mean() < h.loss.head(3).mean() - 0.5
    assert h.val_loss.notna().sum() == 2
    _, plain = run_steps(text, 3, lr=1e-2)
    assert not np.array_equal(h.loss.head(3), plain.loss)  # bf16 really changed the arithmetic


@pytest.mark.slow
def test_compiled_model_trains_like_the_plain_one(text):
    trainer, compiled = run_steps(text, 8, compile=True)
    assert trainer.forward is not trainer.model  # the compiled module trained
    _, plain = run_steps(text, 8)
    # the same weights give the same first loss; after that the generated kernels' order of
    # summation (the CPU's vector width decides it) moves the last digits, and the steps carry it
    assert compiled.loss.iloc[0] == pytest.approx(plain.loss.iloc[0], rel=1e-5)
    np.testing.assert_allclose(compiled.loss, plain.loss, rtol=1e-3)
    assert len(trainer.generate_sample(20)) == 20  # sampling uses the plain module


# --------------------------------------------------------------------------- anomalies

def run_in_thread(trainer):
    thread = threading.Thread(target=trainer.run)
    thread.start()
    return thread


def wait_paused(trainer, timeout=20):
    deadline = time.monotonic() + timeout
    while trainer.state != "paused" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert trainer.state == "paused", f"not paused within {timeout} s (state {trainer.state})"


def test_a_diverging_run_skips_the_bad_update_and_pauses_itself(text):
    """A huge learning rate: within a few steps the loss or grad norm is no longer finite."""
    trainer = make_trainer(text, max_steps=1000, lr=1e4)
    thread = run_in_thread(trainer)
    try:
        wait_paused(trainer)
        step, cause = trainer.anomaly
        assert step <= 10 and trainer.step == step  # paused at the boundary right after it
        assert "is nan" in cause or "is inf" in cause
        events = trainer.history.events_frame()
        anomaly = events[events.kind == "anomaly"].iloc[-1]
        assert anomaly.step == step and f"at step {step}: the update was skipped" in anomaly.detail
        assert events.kind.tolist()[-1] == "pause"
        assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), "a NaN update was applied"
    finally:
        trainer.control.stop()
        thread.join(10)


def test_the_learner_can_lower_the_lr_and_resume_after_an_anomaly(text):
    trainer = make_trainer(text, max_steps=200, lr=3e-3, grad_clip=0.0)
    forward, steps = trainer.forward, []

    def nan_at_step_5(x, y):  # one training step's loss turns NaN
        logits, loss = forward(x, y)
        if trainer.model.training:
            steps.append(1)
            if len(steps) == 5:
                loss = loss * float("nan")
        return logits, loss

    trainer.forward = nan_at_step_5
    thread = run_in_thread(trainer)
    wait_paused(trainer)
    assert trainer.anomaly == (5, "loss is nan and grad norm is nan")
    snapshot = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.control.request("lr", 1e-3)
    trainer.control.resume()
    thread.join(20)
    assert trainer.state == "finished" and trainer.step == 200
    h = trainer.history.frame()
    assert np.isnan(h.loss[4]) and np.isfinite(h.loss[5:]).all()
    assert (h.lr[h.step > 5] == 1e-3).all()
    assert any(not torch.equal(snapshot[n], p) for n, p in trainer.model.named_parameters())


def test_anomaly_skip_trains_on_without_pausing(text):
    trainer = make_trainer(text, max_steps=40, lr=1e4, anomaly="skip")
    trainer.run()
    assert trainer.state == "finished" and trainer.anomaly is not None
    events = trainer.history.events_frame()
    assert "pause" not in events.kind.tolist()
    assert "the run paused itself" not in " ".join(events.detail)
    assert (events.kind == "anomaly").sum() >= 1


def test_spike_detection_can_be_turned_off(text):
    on = make_trainer(text, max_steps=5)
    off = make_trainer(text, max_steps=5, spike_factor=0)
    assert len(on.history._listeners) == 1 and off.history._listeners == []
    with pytest.raises(ValueError, match="spike_factor must be 0 .off. or a finite number > 1 .* got 1"):
        TrainConfig.from_options(spike_factor=1)
    with pytest.raises(ValueError, match="unknown anomaly 'ignore'; valid: pause, skip"):
        TrainConfig.from_options(anomaly="ignore")


def test_histograms_during_a_step_and_between_steps(text):
    trainer = make_trainer(text, max_steps=3)
    trainer.steering.apply("histogram", "blocks.0")  # before the first step: taken during it
    trainer.run()
    (during,) = trainer.history.histograms_since(0)
    assert during["step"] == 1 and during["group"] == "blocks.0"
    assert during["source"] == "this training step (before clipping)"
    n_weights = sum(p.numel() for p in trainer.grad_norms.group_params("blocks.0"))
    assert during["weights"]["counts"].sum() == n_weights == during["grads"]["counts"].sum()
    rng_before = torch.random.get_rng_state()
    trainer.steering.apply("histogram", "wte")  # the run has ended: one fresh batch, no update
    after = trainer.history.histograms_since(0)[-1]
    assert after["source"] == "one fresh batch (taken between steps)" and after["step"] == 3
    assert after["grads"]["counts"].sum() > 0
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert all(p.grad is None for p in trainer.model.parameters())  # no gradient left behind
