"""Lightning, run by lmwidget.fit(trainer, module, ...): every optimizer step recorded, every control obeyed."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

import lmwidget  # noqa: E402
from lmwidget.adapters.chatter import quiet  # noqa: E402

from tests.conftest import wait_for  # noqa: E402
from tests.harness.frameworks import lightning_setup  # noqa: E402
from tests.harness.kernel import Kernel  # noqa: E402

HARNESS_FRAMEWORKS = Path(__file__).parents[1] / "harness" / "frameworks.py"  # pasted into kernels

LONG = 100_000


def test_every_optimizer_step_is_recorded(tmp_path):
    module, trainer, train, val = lightning_setup(max_steps=40, accumulate_grad_batches=2, val_check_interval=40)
    norms, lrs = [], []
    hook = module.on_before_optimizer_step

    def seen(optimizer):  # what the step's gradients and LR are, seen by the test
        lrs.append(optimizer.param_groups[0]["lr"])
        norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in module.parameters() if p.grad is not None])).item())
        return hook(optimizer)

    module.on_before_optimizer_step = seen
    losses = []  # what training_step returns, each micro-batch
    step = module.training_step

    def training_step(*args, **kwargs):
        loss = step(*args, **kwargs)
        losses.append(float(loss))
        return loss

    module.training_step = training_step
    run = lmwidget.fit(trainer, module, train, val, display=False)
    assert run.wait(120) and run.state == "finished" and run.step == trainer.global_step == 40
    h = run.history
    assert list(h.step) == list(range(1, 41))  # optimizer steps, not the 80 batches
    # each step's loss is the mean of its 2 micro-batches' (Lightning divides them already)
    assert h.loss.tolist() == pytest.approx([(losses[2 * i] + losses[2 * i + 1]) / 2 for i in range(40)], rel=1e-5)
    assert h.grad_norm.tolist() == pytest.approx(norms, rel=1e-5)  # before Lightning clips
    assert h.lr.tolist() == pytest.approx(lrs, rel=1e-12) and lrs[0] > lrs[-1]
    val = h.val_loss.dropna()  # validated every 40 batches: after optimizer steps 20 and 40
    assert h.step[val.index].tolist() == [20, 40] and val.iloc[-1] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert (h.tokens == h.step * 2 * 8 * 32).all()  # the batches' inputs
    assert run.callback not in trainer.callbacks


def test_pause_set_lr_and_clip_norm_with_lightnings_own_means(tmp_path):
    module, trainer, train, val = lightning_setup(max_steps=LONG, limit_val_batches=0)
    run = lmwidget.fit(trainer, module, train, display=False)
    wait_for(lambda: run.step > 5)
    run.pause()
    wait_for(lambda: run.state == "paused")
    frozen = run.step
    time.sleep(1.0)
    assert run.step == frozen == trainer.global_step
    run.set_lr(1e-3)
    run.set_grad_clip(0.25)
    run.resume()
    wait_for(lambda: run.step > frozen + 5)
    run.stop()
    assert run.wait(60) and run.state == "stopped"
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.base_lrs == [pytest.approx(1e-3)] and trainer.gradient_clip_val == 0.25
    h = run.history
    cosine = lambda step: 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (step - 1) / LONG)).item())  # noqa: E731
    for step, lr in zip(h.step, h.lr):
        assert lr == pytest.approx((3e-3 if step <= frozen else 1e-3) * cosine(step), rel=1e-6), step
    assert [k for k in run.events.kind] == ["pause", "lr", "grad_clip", "resume", "stop"]
    assert not [t for t in threading.enumerate() if t.name.startswith("lmwidget-run")]


def test_save_writes_a_checkpoint_lightning_resumes_from(tmp_path):
    module, trainer, train, val = lightning_setup(max_steps=30, limit_val_batches=0)
    run = lmwidget.fit(trainer, module, train, display=False, run_options={"checkpoint_dir": tmp_path})
    wait_for(lambda: run.step > 5)
    saved = run.save(timeout=60)
    assert run.wait(120) and run.state == "finished"
    step = run.checkpoints[0]["step"]
    assert saved == tmp_path / f"saved-{step:07d}.ckpt"
    state = torch.load(saved, weights_only=False)
    assert state["global_step"] == step
    module2, trainer2, train2, _ = lightning_setup(max_steps=30, limit_val_batches=0)
    resumed = lmwidget.fit(trainer2, module2, train2, ckpt_path=str(saved), display=False)
    assert resumed.wait(120) and trainer2.global_step == 30
    assert resumed.history.step.iloc[0] == step + 1  # Lightning went on from the checkpoint


def test_what_lightning_cannot_do_is_refused_and_shown_disabled():
    module, trainer, train, _ = lightning_setup(max_steps=LONG, limit_val_batches=0)
    run = lmwidget.fit(trainer, module, train, display=False)
    try:
        assert set(run.unsupported) == {"sample", "evaluate"}
        with pytest.raises(NotImplementedError, match="Lightning validates on its own schedule"):
            run.evaluate()
        d = run.dashboard
        assert d.evaluate_button.disabled and "val_check_interval" in d.evaluate_button.tooltip
        assert d.sample_button.disabled and not d.pause_button.disabled
    finally:
        run.stop()
        run.wait(60)
    with pytest.raises(ValueError, match="already has lmwidget's callback"):
        trainer.callbacks.append(run.callback)
        lmwidget.fit(trainer, module, train, display=False)
    with pytest.raises(TypeError, match="needs the LightningModule"):
        lmwidget.fit(lightning_setup()[1])


@pytest.mark.slow
def test_lightning_in_a_kernel_obeys_the_dashboard(tmp_path):
    """In a real kernel, as a browser's clicks would: pause, the LR slider, stop."""
    kernel = Kernel(tmp_path)
    try:
        _, _, error, _ = kernel.execute(HARNESS_FRAMEWORKS.read_text())
        assert error is None, error
        _, err, error, displays = kernel.execute(
            "import lmwidget\n"
            f"module, trainer, train, val = lightning_setup(max_steps={LONG}, limit_val_batches=0)\n"
            "run = lmwidget.fit(trainer, module, train)")
        assert error is None, error
        assert any("application/vnd.jupyter.widget-view+json" in d for d in displays), "no dashboard shown"
        kernel.wait_for("run.step > 5", True, timeout=60)
        ids, frozen = kernel.pause_from_dashboard("trainer.global_step")
        kernel.set_value(ids["lr_slider"], 0.001)
        kernel.wait_for("round(run.lr, 9)", 0.001, timeout=5)
        kernel.click(ids["pause_button"])
        kernel.wait_for(f"run.step > {frozen + 3}", True)
        assert kernel.value("trainer.optimizers[0].param_groups[0]['lr'] < 0.001") is True
        kernel.click(ids["stop_button"])
        kernel.wait_for("run.state", "stopped", timeout=30)
        assert kernel.value("run.alive") is False and kernel.value("trainer.should_stop") is True
    finally:
        kernel.shutdown()


def test_lightnings_chatter_stays_out_of_the_cell_and_yours_does_not(cell, logging_state, recwarn):
    from lightning.pytorch.utilities import rank_zero_info

    module, trainer, train, val = lightning_setup(max_steps=4, val_check_interval=2)
    trainer.fit(module, train, val)  # what Lightning prints by itself
    by_itself = cell()
    chatter = ["GPU available: ", "TPU available: ", "Tip: ", "`Trainer.fit` stopped: `max_steps=4` reached"]
    assert all(line in by_itself for line in chatter), by_itself
    if hasattr(torch.utils._pytree, "treespec_leaf"):  # the torch that deprecates LeafSpec
        assert [w for w in recwarn if "LeafSpec" in str(w.message)]
    recwarn.clear()

    before = logging_state()
    with quiet():  # the Trainer() made in your cell, before lmwidget.fit() could act
        module, trainer, train, val = lightning_setup(max_steps=4, val_check_interval=2)

    class Mine(type(module)):
        def training_step(self, batch, i):
            if i == 0:  # your own code, run inside Lightning's fit
                warnings.warn("a warning from my module", UserWarning)
                rank_zero_info("a note Lightning logs")
                logging.getLogger("lightning.pytorch.core").error("an error Lightning logs")
            return super().training_step(batch, i)

    run = lmwidget.fit(trainer, Mine(4), train, val, display=False)
    assert run.wait(60) and run.state == "finished"
    shown = cell()
    assert not [line for line in chatter if line in shown], shown
    assert "a note Lightning logs" not in shown and "an error Lightning logs" in shown
    logs = run.events[run.events.kind == "log"]
    assert [(v, d.split(": ", 1)[1]) for v, d in zip(logs.value, logs.detail)] == [
        ("info", "a note Lightning logs"), ("error", "an error Lightning logs")]  # on the dashboard
    assert [str(w.message) for w in recwarn] == ["a warning from my module"]
    before.assert_unchanged()


def test_an_error_in_your_module_is_raised_not_hidden(logging_state):
    before = logging_state()
    module, trainer, train, _ = lightning_setup(max_steps=10, limit_val_batches=0)

    class Failing(type(module)):
        def training_step(self, batch, i):
            if i == 2:
                raise RuntimeError("step 3 of my module failed")
            return super().training_step(batch, i)

    run = lmwidget.fit(trainer, Failing(10), train, display=False)
    with pytest.raises(RuntimeError, match="step 3 of my module failed"):
        run.wait(60)
    assert run.state == "failed"
    before.assert_unchanged()


def test_pytorch_lightning_too():
    pl = pytest.importorskip("pytorch_lightning")
    import torch.nn.functional as F

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, i):
            x, y = batch
            return F.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    trainer = pl.Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    run = lmwidget.fit(trainer, Tiny(), torch.utils.data.DataLoader(data, batch_size=8), display=False)
    assert run.wait(60) and run.state == "finished" and list(run.history.step) == list(range(1, 31))
