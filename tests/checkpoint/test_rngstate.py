"""The process-wide random states: what is taken is set again exactly, and travels as tensors and plain values."""

import random

import numpy as np
import torch

from lmwidget.checkpoint.rngstate import global_rng, set_global_rng


def draws():
    return torch.rand(3).tolist(), random.random(), np.random.rand(), np.random.randn()


def test_the_states_taken_are_set_again_exactly():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.randn()  # numpy keeps the second of a pair of Gaussian draws: kept too
    state = global_rng(torch.device("cpu"))
    first = draws()
    assert draws() != first
    set_global_rng(state, torch.device("cpu"))
    assert draws() == first
    assert state["cuda"] is None and isinstance(state["numpy"]["key"], torch.Tensor)
    assert state["numpy"]["has_gauss"] == 1


def test_they_survive_a_checkpoints_safe_load(tmp_path):
    state = global_rng(torch.device("cpu"))
    first = draws()
    torch.save(state, tmp_path / "rng.pt")
    set_global_rng(torch.load(tmp_path / "rng.pt", weights_only=True), torch.device("cpu"))
    assert draws() == first
