"""The LR range test: suggestions in a sane range, early stop on divergence, weights restored,
click-to-choose, and training with the chosen LR."""

import math

import numpy as np
import pytest
import torch

import lmwidget
from lmwidget.lrfind.finder import LRFinder, smooth, suggest

from tests.conftest import TINY, wait_for


def test_smoothing_is_bias_corrected():
    assert smooth([5.0])[0] == pytest.approx(5.0)  # not pulled towards 0
    out = smooth([5.0, 5.0, 5.0, 1.0], beta=0.5)
    assert out[:3] == pytest.approx([5.0, 5.0, 5.0]) and 1.0 < out[3] < 5.0


def test_suggestions_on_a_textbook_curve():
    lrs = np.logspace(-6, 1, 100)
    x = np.log10(lrs)
    loss = 4 - 2 / (1 + np.exp(-(x + 3) * 3))  # falls fastest at 1e-3, flat from 1e-2
    loss[x > -0.5] += (x[x > -0.5] + 0.5) ** 2 * 10  # then explodes
    s = suggest(lrs, loss)
    assert s["steepest"] == pytest.approx(1e-3, rel=0.2)
    assert 1e-3 < s["min/10"] < 1e-1
    assert suggest(lrs[:5], loss[:5]) == {}  # too few points


@pytest.fixture(scope="module")
def finder():
    f = lmwidget.lr_find(display=False)  # the default GPT on the built-in corpus
    assert f.wait(120)
    return f


def test_the_default_gpt_gets_a_sane_suggestion_and_the_test_stops_at_divergence(finder):
    assert finder.state == "diverged" and len(finder.lrs) < 100  # the LR never reached 10
    # observed: steepest 2.5e-3 and min/10 3.9e-2 (README); a sane range around it
    assert 5e-4 <= finder.suggestion <= 2e-2, finder.suggestions
    assert 5e-3 <= finder.suggestions["min/10"] <= 1e-1
    lrs, losses, smoothed = finder.results()
    assert lrs[0] == pytest.approx(1e-6) and np.all(np.diff(lrs) > 0)
    assert smoothed[-1] > 4 * np.nanmin(smoothed[:-1]) or not math.isfinite(smoothed[-1])


def test_the_models_weights_are_restored():
    torch.manual_seed(0)
    model = lmwidget.GPT(200, 32, n_layer=1, n_head=2, n_embd=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    f = lmwidget.lr_find(model=model, display=False, steps=30, **{k: v for k, v in TINY.items()
                                                                  if k not in ("n_layer", "n_head", "n_embd")})
    f.wait(60)
    assert len(f.lrs) >= 10
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_choose_and_train_with_the_finder(finder):
    with pytest.raises(RuntimeError, match="still running"):
        running = lmwidget.lr_find(display=False, steps=5000, end=1e-3)
        try:
            running.lr
        finally:
            running.stop()
            running.wait(30)
    assert finder.lr == finder.suggestion  # nothing chosen: the suggestion
    run = lmwidget.train(lr=finder, max_steps=3, display=False, **TINY)
    assert run.lr == finder.suggestion
    run.wait(30)
    finder.choose(1.5e-3)
    run = lmwidget.train(lr=finder, max_steps=3, display=False, **TINY)
    assert run.lr == 1.5e-3
    run.wait(30)
    run = finder.train(max_steps=3, display=False)  # the finder's own model, data and options
    assert run.lr == 1.5e-3 and run.config.n_embd == 64 and run.config.data == "builtin"
    run.wait(30)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        finder.choose(-1)
    finder._chosen = None


def test_clicking_a_point_chooses_its_lr():
    f = lmwidget.lr_find(display=False, steps=40, **TINY)
    view = f.widget
    f.wait(60)
    wait_for(lambda: not view.updater.running, 10)
    assert len(view.points.x) == len(f.lrs)
    assert list(view.marks.names) == ["steepest", "min/10"]
    np.testing.assert_allclose(view.marks.x, list(f.suggestions.values()), rtol=1e-6)
    assert not view.train_button.disabled  # the suggestion is ready
    # what bqplot sends when a dot is clicked in the browser
    view.points._handle_custom_msg({"event": "element_click", "data": {"index": 7}}, [])
    assert f.chosen == f.lrs[7]
    wait_for(lambda: list(view.chosen_rule.x) == pytest.approx([f.lrs[7]] * 2, rel=1e-6), 5)
    wait_for(lambda: f"chosen {f.lrs[7]:.2e}" in view.status.value, 5)
    view.train_button.click()  # a run with the chosen LR, its dashboard under the chart
    wait_for(lambda: len(view.runs.children) == 1, 10)
    run = lmwidget.runs()[-1]
    assert run.lr == f.lrs[7] and view.runs.children[0] is run.dashboard
    run.stop()


def test_bad_arguments_say_what_would_be_accepted():
    with pytest.raises(ValueError, match="end must be larger than start"):
        lmwidget.lr_find(start=1e-2, end=1e-3, display=False)
    with pytest.raises(ValueError, match="steps must be an integer >= 10"):
        lmwidget.lr_find(steps=3, display=False)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        lmwidget.lr_find(start=0, display=False)
    with pytest.raises(TypeError, match="unknown option"):
        lmwidget.lr_find(max_lr=3, display=False)


def test_a_model_that_fails_is_reported():
    calls = []

    class Fails(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(200, 200)

        def forward(self, idx, targets=None):
            calls.append(1)
            if len(calls) > 2:  # the contract check and the first step pass
                raise FloatingPointError("bad step")
            logits = self.table(idx)
            return logits, logits.logsumexp(-1).mean()

        def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
            return idx

    finder = lmwidget.lr_find(model=Fails(), display=False, block_size=16)
    with pytest.raises(FloatingPointError, match="bad step"):
        finder.wait(30)
    assert finder.state == "failed" and isinstance(finder, LRFinder)


def test_a_users_model_is_never_trained_by_the_test_and_a_run_at_once():
    torch.manual_seed(0)
    net = lmwidget.GPT(200, 32, n_layer=1, n_head=2, n_embd=32)
    f = lmwidget.lr_find(model=net, display=False, steps=3000, end=1e-3, block_size=32, batch_size=8)
    f.choose(1e-4)
    view = f.widget
    assert view.train_button.disabled  # chosen, but the test still trains the model
    f.stop()
    run = f.train(max_steps=3, display=False)  # waits for the test to give the weights back
    assert f.done and f.state == "stopped" and run.model is net and run.lr == 1e-4
    run.wait(30)
    busy = lmwidget.train(model=net, max_steps=10**6, display=False, block_size=32, batch_size=8)
    with pytest.raises(ValueError, match=f"run {busy.id} is training this model"):
        lmwidget.lr_find(model=net, display=False)
    busy.stop()
    busy.wait(30)
