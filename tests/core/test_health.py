"""Tests for lmwidget.core.health: layer groups, gradient norms, the non-finite guard, spikes, histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.utils import get_total_norm

from lmwidget.core.health import (SPIKE_MIN_SEEN, FiniteGuard, GradNorms, SpikeDetector, histogram,
                             layer_groups, nonfinite_cause)
from lmwidget.core.history import History
from lmwidget.models.builtin import build_model


def test_layer_groups_are_embeddings_each_block_and_the_head():
    names, index = layer_groups(["tok_emb.weight", "pos_emb.weight", "blocks.0.attn.qkv.weight",
                                 "blocks.0.ln1.bias", "blocks.1.mlp.fc.weight", "ln_f.weight",
                                 "head.weight", "bias"])
    assert names == ["tok_emb", "pos_emb", "blocks.0", "blocks.1", "ln_f", "head", "bias"]
    assert index == [0, 1, 2, 2, 3, 4, 5, 6]
    # a Hugging Face GPT-2's names group the same way
    names, _ = layer_groups(["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight",
                             "transformer.h.11.mlp.c_fc.bias", "transformer.ln_f.weight"])
    assert names == ["transformer.wte", "transformer.h.0", "transformer.h.11", "transformer.ln_f"]


def test_our_models_have_one_group_per_block():
    gpt = build_model("gpt", 65, 32, 3, 2, 32, 0.0)
    names = GradNorms(gpt.named_parameters()).names
    assert [n for n in names if n.startswith("blocks.")] == ["blocks.0", "blocks.1", "blocks.2"]
    assert len(names) >= 5  # embeddings, three blocks, the final norm (the head is tied)
    lstm = build_model("lstm", 65, 32, 2, 2, 32, 0.0)
    assert len(GradNorms(lstm.named_parameters()).names) >= 3


def backward(model, seed=0):
    torch.manual_seed(seed)
    x = torch.randint(0, 65, (4, 16))
    _, loss = model(x, x)
    loss.backward()
    return loss


def test_grad_norms_total_matches_torch_and_groups_add_up():
    torch.manual_seed(0)
    model = build_model("gpt", 65, 16, 2, 2, 32, 0.0)
    backward(model)
    norms = GradNorms(model.named_parameters())
    total, groups = norms()
    grads = [p.grad for p in model.parameters()]
    assert total.item() == pytest.approx(get_total_norm(grads).item(), rel=1e-6)
    assert torch.linalg.vector_norm(groups).item() == pytest.approx(total.item(), rel=1e-5)
    by_hand = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in norms.group_params("blocks.1")]))
    assert groups[norms.names.index("blocks.1")].item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_grad_norms_skip_parameters_without_gradients():
    model = torch.nn.ModuleDict({"used": torch.nn.Linear(3, 3), "unused": torch.nn.Linear(3, 3)})
    model["used"](torch.ones(2, 3)).sum().backward()
    total, groups = GradNorms(model.named_parameters())()
    assert groups.tolist()[1] == 0.0 and groups[0].item() == pytest.approx(total.item())
    with pytest.raises(ValueError, match="no layer group 'nope'; the groups are used, unused"):
        GradNorms(model.named_parameters()).group_params("nope")


@pytest.mark.parametrize("fused", [True, False])
def test_the_guard_skips_a_non_finite_update_and_reports_it(fused):
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=fused)
    guard = FiniteGuard(opt, torch.device("cpu"))
    assert guard.on_device is fused  # fused optimizers skip on the device, the rest on the host

    def step(n, loss, norm):
        p.grad = torch.full((3,), norm)
        if guard.check(n, torch.tensor(loss), torch.tensor(norm)):
            opt.step()
        return guard.poll()

    assert step(1, 2.0, 1.0) == []
    after_one = p.detach().clone()
    found = step(2, float("nan"), float("inf"))
    assert len(found) == 1 and found[0][0] == 2
    assert math.isnan(found[0][1]) and math.isinf(found[0][2])
    assert torch.equal(p.detach(), after_one)  # the update was skipped, the weights are finite
    assert opt.state[p]["step"].item() == 1     # and Adam's step count did not move
    assert step(3, 1.5, 1.0) == []
    assert not torch.equal(p.detach(), after_one) and opt.state[p]["step"].item() == 2
    assert guard.poll() == []  # reported once


def test_nonfinite_cause_names_each_culprit():
    assert nonfinite_cause(float("nan"), 1.0) == "loss is nan"
    assert nonfinite_cause(2.0, float("inf")) == "grad norm is inf"
    assert nonfinite_cause(float("nan"), float("nan")) == "loss is nan and grad norm is nan"


def feed(detector, values, name, start=1, other=1.0):
    n = len(values)
    cols = {"step": np.arange(start, start + n), "time": np.arange(start, start + n) * 0.1,
            name: np.asarray(values, dtype=float),
            ("loss" if name == "grad_norm" else "grad_norm"): np.full(n, other)}
    detector(cols)


def anomalies(history):
    events = history.events_frame()
    return events[events.kind == "anomaly"]


def test_a_grad_norm_spike_is_marked_once_per_excursion():
    h = History()
    detector = SpikeDetector(h, factor=10.0)
    rng = np.random.default_rng(0)
    base = list(1.0 + 0.1 * rng.standard_normal(60))
    feed(detector, base + [50.0, 60.0, 1.0, 1.1, 45.0], "grad_norm")
    a = anomalies(h)
    assert a.step.tolist() == [61, 65]  # 61-62 are one excursion; 65 is a new one
    assert a.value.tolist() == [50.0, 45.0]
    assert "grad norm spike: 50 is" in a.detail.iloc[0] and "running median" in a.detail.iloc[0]
    assert a.time.tolist() == pytest.approx([6.1, 6.5])


def test_spikes_are_found_across_drains_and_not_before_enough_values():
    h = History()
    detector = SpikeDetector(h, factor=10.0)
    feed(detector, [1.0] * (SPIKE_MIN_SEEN - 1) + [100.0], "grad_norm")  # too early to judge
    assert anomalies(h).empty
    for start in range(SPIKE_MIN_SEEN + 1, SPIKE_MIN_SEEN + 41, 10):  # drained in small batches
        feed(detector, [1.0] * 10, "grad_norm", start=start)
    feed(detector, [20.0], "grad_norm", start=SPIKE_MIN_SEEN + 41)
    assert anomalies(h).step.tolist() == [SPIKE_MIN_SEEN + 41]


def test_a_loss_spike_is_a_perplexity_factor_and_non_finite_values_are_not_spikes():
    h = History()
    detector = SpikeDetector(h, factor=10.0)
    jump = math.log(10.0)
    feed(detector, [2.0] * 30 + [2.0 + jump - 0.1, float("nan"), float("inf"), 2.0 + jump + 0.1], "loss")
    a = anomalies(h)
    assert a.step.tolist() == [34]
    assert "loss spike" in a.detail.iloc[0] and "perplexity" in a.detail.iloc[0]


def test_histogram_counts_every_finite_value_and_reports_the_rest():
    values = torch.cat([torch.randn(1000), torch.tensor([float("nan"), float("inf")])])
    h = histogram(values, bins=20)
    assert h["counts"].sum() == 1000 and len(h["edges"]) == 21 and h["nonfinite"] == 2
    assert h["edges"][0] == pytest.approx(values[:1000].min().item())
    flat = histogram(torch.zeros(10))
    assert flat["counts"].sum() == 10 and flat["edges"][0] < 0 < flat["edges"][-1]
    empty = histogram(torch.tensor([float("nan")]))
    assert len(empty["counts"]) == 0 and empty["nonfinite"] == 1


def test_a_resumed_runs_detector_takes_up_the_restored_rows_without_marking_them():
    h = History()
    restored = {"step": np.arange(1, 61), "time": np.zeros(60), "loss": np.full(60, 2.0),
                "grad_norm": np.r_[np.ones(40), 100.0, np.ones(19)]}  # its own spike: already an event
    detector = SpikeDetector(h, factor=10.0)
    detector.prime(restored)
    assert anomalies(h).empty  # priming marks nothing
    feed(detector, [20.0], "grad_norm", start=61)  # judged at once against the restored median
    assert anomalies(h).step.tolist() == [61]
    fresh = SpikeDetector(History(), factor=10.0)
    feed(fresh, [20.0], "grad_norm", start=61)
    assert anomalies(fresh.history).empty  # without the restored rows it could not judge yet
