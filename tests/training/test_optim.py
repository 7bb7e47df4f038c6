"""What a TrainConfig names: the optimizer, fused where it can be; the LR schedules; the device."""

import pytest
import torch

from lmwidget.training.config import TrainConfig
from lmwidget.training.optim import lr_factor, make_optimizer, resolve_device


def test_schedules():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 55) == pytest.approx(0.55)
    assert lr_factor(cfg, 100) == pytest.approx(0.1)
    factors = [lr_factor(cfg, s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    exp = TrainConfig(max_steps=100, schedule="exponential", min_lr_ratio=0.01)
    assert lr_factor(exp, 0) == 1.0
    assert lr_factor(exp, 50) == pytest.approx(0.1)
    assert lr_factor(exp, 100) == pytest.approx(0.01)
    assert lr_factor(TrainConfig(schedule="constant"), 1234) == 1.0


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_the_configured_optimizer_with_its_lr_weight_decay_and_momentum(name, cls):
    config = TrainConfig(optimizer=name, lr=3e-3, weight_decay=0.05, momentum=0.8)
    optimizer = make_optimizer(config, torch.nn.Linear(4, 4).parameters())
    group = optimizer.param_groups[0]
    assert type(optimizer) is cls and group["lr"] == 3e-3 and group["weight_decay"] == 0.05
    assert group.get("momentum", 0.8) == 0.8
    assert group["fused"] is True  # float32 on the CPU: the fused kernel takes it
    assert not make_optimizer(config, torch.nn.Linear(4, 4).parameters(), fused=False).param_groups[0]["fused"]


def test_parameters_the_fused_kernel_refuses_get_the_plain_optimizer(monkeypatch):
    class Unfused(torch.optim.SGD):  # as a device or dtype without fused kernels answers
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors "
                                   "of supported devices")
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", Unfused)
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", lr=0.1), torch.nn.Linear(4, 4).parameters())
    assert type(optimizer) is Unfused and not optimizer.param_groups[0]["fused"]
    assert optimizer.param_groups[0]["lr"] == 0.1 and len(optimizer.param_groups[0]["params"]) == 2


def test_auto_is_the_gpu_where_there_is_one():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
