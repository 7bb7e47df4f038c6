"""The Hugging Face Trainer, run by lmwidget.fit(trainer): every step recorded, every control obeyed."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import lmwidget  # noqa: E402
from lmwidget.adapters.hf_trainer import HFRun  # noqa: E402

from tests.conftest import wait_for  # noqa: E402
from tests.harness.frameworks import Blocks, char_ids, hf_trainer  # noqa: E402
from tests.harness.kernel import Kernel  # noqa: E402

HARNESS_FRAMEWORKS = Path(__file__).parents[1] / "harness" / "frameworks.py"  # pasted into kernels

LONG = 100_000


def test_every_step_is_recorded_as_the_trainer_logs_it(tmp_path):
    trainer = hf_trainer(tmp_path, max_steps=30, logging_steps=1)
    run = lmwidget.fit(trainer, display=False)
    assert run.wait(120) and run.state == "finished" and run.step == 30
    logged = [e for e in trainer.state.log_history if "loss" in e]
    h = run.history
    assert list(h.step) == list(range(1, 31)) == [e["step"] for e in logged]
    assert h.loss.tolist() == pytest.approx([e["loss"] for e in logged], abs=1e-4)  # HF rounds to 4 places
    assert h.grad_norm.tolist() == pytest.approx([e["grad_norm"] for e in logged], rel=1e-4)
    schedule = getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler).lr_lambdas[0]
    assert h.lr.tolist() == pytest.approx([3e-3 * schedule(s - 1) for s in h.step], rel=1e-9)  # applied
    if int(__import__("transformers").__version__.split(".")[0]) >= 5:  # 4.x logs the next step's
        assert h.lr.tolist() == pytest.approx([e["learning_rate"] for e in logged], rel=1e-9)
    assert (h.tokens == h.step * 8 * 32).all()  # counted from the batches' input_ids
    tokenizer = getattr(trainer, "processing_class", None) or trainer.tokenizer
    assert run.describe()["tokenizer"].endswith(f"({len(tokenizer)})")  # its kind and size
    assert run.describe()["tokenizer"] == f"word-level tokenizer ({len(tokenizer)})"  # not its class
    assert not [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "Bridge"]
    assert "training_step" not in trainer.__dict__  # the Trainer is left as it was


def test_with_gradient_accumulation_each_steps_loss_is_the_mean_over_its_micro_batches(tmp_path):
    trainer = hf_trainer(tmp_path, max_steps=10, logging_steps=1, gradient_accumulation_steps=2)
    run = lmwidget.fit(trainer, display=False)
    assert run.wait(120) and run.state == "finished" and run.step == 10
    h = run.history
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert h.loss.tolist() == pytest.approx(logged, abs=1e-4)  # as the Trainer logs it
    # and in nats per token: an untrained model starts near ln(vocabulary), neither twice it
    # (micro-batches summed) nor half (divided once more)
    vocab = trainer.model.config.vocab_size
    assert h.loss.iloc[0] == pytest.approx(math.log(vocab), abs=0.3)


def test_pause_and_set_lr_move_the_schedules_base(tmp_path):
    trainer = hf_trainer(tmp_path, max_steps=LONG)
    run = lmwidget.fit(trainer, display=False)
    wait_for(lambda: run.step > 5)
    run.pause()
    wait_for(lambda: run.state == "paused")
    frozen = run.step
    time.sleep(1.0)
    assert run.step == frozen
    run.set_lr(1e-3)
    run.resume()
    wait_for(lambda: run.step > frozen + 5)
    run.stop()
    assert run.wait(60) and run.state == "stopped"
    scheduler = getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler)  # Accelerate's wrapper
    factor = scheduler.lr_lambdas[0]  # HF's cosine, as a multiplier of the base
    assert scheduler.base_lrs == [pytest.approx(1e-3)] * 2  # with and without weight decay
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * factor(run.step))
    h = run.history
    for step, lr in zip(h.step, h.lr):
        assert lr == pytest.approx((3e-3 if step <= frozen else 1e-3) * factor(step - 1), rel=1e-9), step
    assert [k for k in run.events.kind] == ["pause", "lr", "resume", "stop"]


def test_stop_ends_train_and_leaves_no_thread(tmp_path):
    trainer = hf_trainer(tmp_path, max_steps=LONG)
    run = lmwidget.fit(trainer, display=False)
    wait_for(lambda: run.step > 3)
    run.stop("enough")
    assert run.wait(60) is True and run.state == "stopped"
    assert trainer.state.global_step == run.step < LONG
    assert not [t for t in threading.enumerate() if t.name.startswith("lmwidget-run")]


def test_save_writes_the_trainers_own_checkpoint_and_train_resumes_from_it(tmp_path):
    trainer = hf_trainer(tmp_path / "out", max_steps=40)
    run = lmwidget.fit(trainer, display=False)
    wait_for(lambda: run.step > 5)
    saved = run.save(timeout=60)
    assert run.wait(120)
    step = run.checkpoints[0]["step"]
    assert saved.name == f"checkpoint-{step}" and (saved / "trainer_state.json").is_file()
    assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == step
    assert f"the Trainer saved {saved}" in set(run.events.detail)
    again = hf_trainer(tmp_path / "out", max_steps=40)
    resumed = lmwidget.fit(again, str(saved), display=False)  # train(resume_from_checkpoint=...)
    assert resumed.wait(120) and again.state.global_step == 40
    assert resumed.history.step.iloc[0] == step + 1  # the Trainer went on from the checkpoint


def test_evaluate_sample_and_clip_norm(tmp_path):
    trainer = hf_trainer(tmp_path, max_steps=LONG)
    clips = []
    clip = trainer.accelerator.clip_grad_norm_

    def watched(parameters, max_norm, *a, **k):  # what the Trainer clips to
        clips.append(max_norm)
        return clip(parameters, max_norm, *a, **k)

    trainer.accelerator.clip_grad_norm_ = watched
    run = lmwidget.fit(trainer, display=False)
    wait_for(lambda: run.step > 3)
    text = run.sample()
    tokenizer = getattr(trainer, "processing_class", None) or trainer.tokenizer
    assert len(text) > 10 and set(text) <= set(tokenizer.get_vocab()) | {" "}
    run.evaluate()
    wait_for(lambda: run.history.val_loss.notna().any())
    run.set_grad_clip(0.25)
    wait_for(lambda: clips[-1] == 0.25)
    run.stop()
    run.wait(60)
    assert trainer.args.max_grad_norm == 0.25 and clips[0] == 1.0
    assert "the Trainer's evaluation" in set(run.events.detail)
    assert 0 < run.history.val_loss.dropna().iloc[0] < 10


def test_bad_input_is_refused_before_any_thread(tmp_path):
    trainer = hf_trainer(tmp_path)
    with pytest.raises(TypeError, match="fit\\(\\) takes a transformers.Trainer or a Lightning Trainer; got"):
        lmwidget.fit(object())
    first = HFRun(trainer)
    trainer.add_callback(first.callback)
    with pytest.raises(ValueError, match="already has lmwidget's callback"):
        lmwidget.fit(trainer, display=False)
    trainer.remove_callback(first.callback)
    trainer.is_in_train = True
    with pytest.raises(RuntimeError, match="this Trainer is already training"):
        lmwidget.fit(trainer, display=False)
    assert not [t for t in threading.enumerate() if t.name.startswith("lmwidget-run")]


def test_the_trainers_chatter_stays_out_of_the_cell_and_your_warnings_do_not(tmp_path, cell, logging_state):
    transformers = pytest.importorskip("transformers")
    once = logging.Logger.warning_once  # transformers says each of these once per process
    plain = hf_trainer(tmp_path / "plain", max_steps=2)
    once.cache_clear()
    plain.train()  # what the Trainer prints by itself
    eos = plain.model.config.eos_token_id
    plain.model.generate(torch.tensor([[eos]]), max_new_tokens=2, pad_token_id=eos)
    by_itself = cell()
    chatter = ["We strongly recommend passing in an `attention_mask`"]
    if int(transformers.__version__.split(".")[0]) >= 5:
        chatter.append("`loss_type=None` was set in the config but it is unrecognized")
    assert all(line in by_itself for line in chatter), by_itself

    before = logging_state()
    trainer = hf_trainer(tmp_path / "run", max_steps=3)

    def mine(module, args):  # your own code, run inside the Trainer's steps
        warnings.warn("a warning from my model", UserWarning)
        logging.getLogger("my_model").warning("a line my model logs")

    trainer.model.register_forward_pre_hook(mine)
    once.cache_clear()
    with pytest.warns(UserWarning, match="a warning from my model"):
        run = lmwidget.fit(trainer, display=False)
        assert run.wait(120) and run.state == "finished"
        assert len(run.sample()) > 0  # after the end: generate() on this thread
    shown = cell()
    assert not [line for line in chatter if line in shown], shown
    assert "a line my model logs" in shown
    before.assert_unchanged()


def test_an_error_in_the_trainer_is_raised_not_hidden(tmp_path, logging_state):
    class Broken(Blocks):
        def __getitem__(self, i):
            raise ValueError(f"example {i} cannot be read")

    before = logging_state()
    trainer = hf_trainer(tmp_path, max_steps=3)
    trainer.train_dataset = Broken(char_ids(), hf=True)
    run = lmwidget.fit(trainer, display=False)
    with pytest.raises(ValueError, match="example \\d+ cannot be read"):
        run.wait(120)
    assert run.state == "failed"
    before.assert_unchanged()


@pytest.mark.slow
def test_the_trainer_in_a_kernel_obeys_the_dashboard(tmp_path):
    """In a real kernel, as a browser's clicks would: pause, the LR slider, save, stop."""
    kernel = Kernel(tmp_path)
    try:
        _, _, error, _ = kernel.execute(HARNESS_FRAMEWORKS.read_text())
        assert error is None, error
        _, err, error, displays = kernel.execute(
            "import lmwidget\n"
            f"trainer = hf_trainer('out', max_steps={LONG})\n"
            "run = lmwidget.fit(trainer)")
        assert error is None, error
        assert any("application/vnd.jupyter.widget-view+json" in d for d in displays), "no dashboard shown"
        kernel.wait_for("run.step > 5", True, timeout=60)
        ids, frozen = kernel.pause_from_dashboard(controls=("lr_slider", "save_button", "stop_button"))
        kernel.set_value(ids["lr_slider"], 0.001)
        kernel.wait_for("round(run.lr, 9)", 0.001, timeout=5)
        assert kernel.value("trainer.lr_scheduler.base_lrs") == [0.001, 0.001]
        kernel.click(ids["pause_button"])
        kernel.click(ids["save_button"])
        kernel.wait_for("len(run.checkpoints)", 1, timeout=30)
        kernel.wait_for(f"run.step > {frozen + 3}", True)
        kernel.click(ids["stop_button"])
        kernel.wait_for("run.state", "stopped", timeout=30)
        assert kernel.value("run.alive") is False
        assert kernel.value("trainer.state.global_step") == kernel.value("run.step")
        path = kernel.value("str(run.checkpoints[0]['path'])")
        assert (tmp_path / path / "trainer_state.json").is_file() and (tmp_path / path / "optimizer.pt").is_file()
    finally:
        kernel.shutdown()
