"""Tests for lmwidget.models.builtin: the GPT and LSTM contract, generation and training signal."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lmwidget.models import builtin as models
from lmwidget.models.builtin import GPT, LSTM, build_model, count_params

V = 65  # tiny Shakespeare's vocabulary size
BLOCK = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; more thrash when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))


def make(name: str, seed: int = 0, vocab_size: int = V, block_size: int = BLOCK):
    torch.manual_seed(seed)
    if name == "gpt":
        return GPT(vocab_size, block_size, n_layer=2, n_head=4, n_embd=32)
    return LSTM(vocab_size, block_size, n_layer=2, n_embd=32)


def tokens(B: int, T: int, seed: int = 1, vocab_size: int = V) -> torch.Tensor:
    return torch.randint(vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


NAMES = ["gpt", "lstm"]


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_loss(name):
    model = make(name)
    x, y = tokens(3, BLOCK), tokens(3, BLOCK, seed=2)
    logits, loss = model(x, y)
    assert logits.shape == (3, BLOCK, V)
    assert loss.dim() == 0 and torch.isfinite(loss)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    assert torch.allclose(loss, expected)
    # a shorter sequence works as well
    logits, _ = model(x[:, :5], y[:, :5])
    assert logits.shape == (3, 5, V)


@pytest.mark.parametrize("name", NAMES)
def test_loss_without_targets_is_none(name):
    logits, loss = make(name)(tokens(2, 8))
    assert loss is None
    assert logits.shape == (2, 8, V)


@pytest.mark.parametrize("name", NAMES)
def test_initial_loss_is_close_to_uniform(name):
    model = make(name, seed=1234)
    x, y = tokens(8, BLOCK, seed=3), tokens(8, BLOCK, seed=4)
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(V)) < 0.15


@pytest.mark.parametrize("name", NAMES)
def test_models_are_causal(name):
    """Changing a later token never changes the logits at earlier positions."""
    model = make(name).eval()
    x = tokens(1, BLOCK)
    x2 = x.clone()
    x2[0, 10] = (x[0, 10] + 1) % V
    a, _ = model(x)
    b, _ = model(x2)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("name", NAMES)
def test_generate_appends_max_new_tokens(name):
    model = make(name).eval()
    idx = tokens(2, 3)
    torch.manual_seed(0)
    out = model.generate(idx, max_new_tokens=7)
    assert out.shape == (2, 10)
    assert out.dtype == torch.long
    assert torch.equal(out[:, :3], idx)
    assert ((0 <= out) & (out < V)).all()
    assert model.generate(idx, 0).shape == (2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_generate_crops_the_context_to_block_size(name):
    model = make(name).eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    long_prompt = tokens(1, BLOCK * 3)
    out = model.generate(long_prompt, max_new_tokens=5, top_k=1)
    assert out.shape == (1, BLOCK * 3 + 5)
    assert seen and max(seen) == BLOCK
    # only the last block_size tokens matter: another prefix gives the same continuation
    other = long_prompt.clone()
    other[0, :BLOCK] = (other[0, :BLOCK] + 7) % V
    out2 = model.generate(other, max_new_tokens=5, top_k=1)
    assert torch.equal(out[:, -5:], out2[:, -5:])


@pytest.mark.parametrize("name", NAMES)
def test_top_k_1_is_greedy_and_deterministic(name):
    model = make(name).eval()
    idx = tokens(2, 4)
    torch.manual_seed(1)
    a = model.generate(idx, max_new_tokens=12, top_k=1)
    torch.manual_seed(2)
    b = model.generate(idx, max_new_tokens=12, top_k=1, temperature=2.0)
    assert torch.equal(a, b)
    # and it is the argmax, token by token
    ctx = idx
    for _ in range(12):
        logits, _ = model(ctx[:, -BLOCK:])
        ctx = torch.cat((ctx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(a, ctx)


@pytest.mark.parametrize("name", NAMES)
def test_sampling_without_top_k_depends_on_the_seed(name):
    model = make(name).eval()
    idx = tokens(4, 4)
    torch.manual_seed(1)
    a = model.generate(idx, max_new_tokens=20)
    torch.manual_seed(1)
    b = model.generate(idx, max_new_tokens=20)
    torch.manual_seed(2)
    c = model.generate(idx, max_new_tokens=20)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_generate_rejects_bad_temperature(name, temperature):
    model = make(name)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(tokens(1, 2), max_new_tokens=3, temperature=temperature)


def test_gpt_ties_the_output_and_input_embeddings():
    model = make("gpt")
    assert model.lm_head.weight is model.wte.weight
    with torch.no_grad():
        model.wte.weight[3].fill_(0.5)
    assert torch.equal(model.lm_head.weight[3], torch.full((32,), 0.5))
    # counted once
    n_unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert count_params(model) == n_unique
    assert count_params(model) < n_unique + V * 32


def test_gpt_rejects_n_embd_not_divisible_by_n_head():
    with pytest.raises(ValueError) as info:
        GPT(V, BLOCK, n_layer=1, n_head=5, n_embd=48)
    assert re.search(r"\b48\b", str(info.value)) and re.search(r"\b5\b", str(info.value))
    with pytest.raises(ValueError, match="n_head"):
        build_model("gpt", V, BLOCK, n_layer=1, n_head=3, n_embd=64, dropout=0.0)


def test_gpt_forward_longer_than_block_size_raises():
    model = make("gpt")
    model(tokens(1, BLOCK))  # exactly block_size is fine
    with pytest.raises(ValueError, match=str(BLOCK)):
        model(tokens(1, BLOCK + 1))


def test_build_model_builds_both_and_rejects_unknown_names():
    gpt = build_model("gpt", V, BLOCK, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    lstm = build_model("lstm", V, BLOCK, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    assert isinstance(gpt, GPT) and isinstance(lstm, LSTM)
    assert len(gpt.blocks) == 1 and gpt.wte.weight.shape == (V, 16)
    assert lstm.lstm.num_layers == 1 and lstm.embed.weight.shape == (V, 16)
    with pytest.raises(ValueError) as info:
        build_model("transformer", V, BLOCK, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    msg = str(info.value)
    assert "transformer" in msg
    for valid in models.MODELS:
        assert valid in msg
    assert set(models.MODELS) == {"gpt", "lstm"}


@pytest.mark.parametrize("name", NAMES)
def test_a_few_adamw_steps_reduce_the_loss(name):
    model = make(name, seed=5)
    x, y = tokens(8, BLOCK, seed=6), tokens(8, BLOCK, seed=7)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, first = model(x, y)
    losses = []
    for _ in range(25):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _, last = model(x, y)
    assert last.item() < first.item() - 0.3, (first.item(), losses, last.item())
    assert all(p.grad is not None for p in model.parameters())
