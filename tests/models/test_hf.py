"""Hugging Face causal LMs train under lmwidget's contract, checkpoint and resume."""

import sys

import pytest
import torch
import torch.nn as nn

import lmwidget
from lmwidget.checkpoint.saving import resolve
from lmwidget.data.dataset import Dataset
from lmwidget.models.hf import HFCausalLM, adapt, is_hf_causal_lm, unwrap

from tests.conftest import TINY

transformers = pytest.importorskip("transformers")

BLOCK = 32
DATA = Dataset.load("builtin")


def gpt2(seed=0, n_positions=64):
    config = transformers.GPT2Config(vocab_size=DATA.vocab_size, n_positions=n_positions,
                                     n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


OPTIONS = dict(TINY, block_size=BLOCK, display=False)


def test_only_hugging_face_causal_lms_are_adapted():
    model = gpt2()
    assert is_hf_causal_lm(model)
    wrapped = adapt(model)
    assert isinstance(wrapped, HFCausalLM) and wrapped.model is model and unwrap(wrapped) is model
    assert wrapped.block_size == 64 and wrapped.vocab_size == DATA.vocab_size
    plain = nn.Linear(2, 2)
    assert adapt(plain) is plain and unwrap(plain) is plain
    # a base model (no language-model head), a masked LM (it sees the tokens it predicts)
    # and an encoder-decoder are left to the contract check, which refuses them
    assert not is_hf_causal_lm(transformers.GPT2Model(model.config))
    bert = transformers.BertConfig(vocab_size=DATA.vocab_size, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64)
    assert not is_hf_causal_lm(transformers.BertForMaskedLM(bert))
    with pytest.raises(TypeError, match="BertForMaskedLM's forward"):
        lmwidget.train(model=transformers.BertForMaskedLM(bert), max_steps=2, **OPTIONS)
    t5 = transformers.T5Config(vocab_size=DATA.vocab_size, d_model=32, d_ff=64, num_layers=1,
                               num_heads=2, d_kv=16)
    assert not is_hf_causal_lm(transformers.T5ForConditionalGeneration(t5))


def test_no_transformers_imported_means_no_hugging_face_model(monkeypatch):
    model = gpt2()
    monkeypatch.delitem(sys.modules, "transformers")
    assert not is_hf_causal_lm(model)


def test_the_loss_is_the_models_own_next_token_loss():
    """lmwidget's targets are already shifted; the model's labels= shifts itself: same loss."""
    model = gpt2().eval()
    x, y = DATA.batch("train", 4, BLOCK, torch.Generator().manual_seed(0))
    logits, loss = HFCausalLM(model)(x, y)
    assert logits.shape == (4, BLOCK, DATA.vocab_size)
    full = torch.cat([x, y[:, -1:]], dim=1)  # y is x shifted by one
    with torch.no_grad():
        own = model(input_ids=full, labels=full).loss
    assert torch.allclose(loss, own, atol=1e-6), (loss.item(), own.item())


def test_a_gpt2_trains_samples_and_its_loss_falls():
    model = gpt2()
    run = lmwidget.train(model=model, data="builtin", max_steps=150, lr=3e-3, **OPTIONS)
    assert run.wait(120)
    assert run.state == "finished"
    assert unwrap(run.model) is model  # the user's own object was trained
    loss = run.history["loss"]
    assert loss.iloc[-20:].mean() < loss.iloc[:5].mean() - 0.5
    text = run.sample()
    assert isinstance(text, str) and len(text) > 0


def test_a_block_size_beyond_the_models_positions_is_refused():
    with pytest.raises(ValueError, match=r"block_size=128 exceeds model GPT2LMHeadModel's block_size=64"):
        lmwidget.train(model=gpt2(), data="builtin", max_steps=5, **{**OPTIONS, "block_size": 128})


def test_a_gpt2_run_resumes_exactly(tmp_path):
    whole = lmwidget.train(model=gpt2(), max_steps=40, lr=1e-3, **OPTIONS)
    assert whole.wait(120)
    half = lmwidget.train(model=gpt2(), max_steps=20, lr=1e-3, checkpoint_dir=str(tmp_path), **OPTIONS)
    assert half.wait(120)
    half.save()
    again = gpt2(seed=1)  # other weights: the checkpoint's replace them
    resumed = lmwidget.train(model=again, resume=str(tmp_path), max_steps=40, display=False)
    assert resumed.wait(120)
    assert unwrap(resumed.model) is again
    assert torch.allclose(torch.tensor(resumed.history["loss"].to_numpy()),
                          torch.tensor(whole.history["loss"].to_numpy()), atol=1e-6)
    saved = torch.load(resolve(tmp_path), weights_only=True)
    assert saved["model_class"] == "GPT2LMHeadModel"
    gpt2().load_state_dict(saved["trainer"]["model"])  # the model's own keys: loads as it is


def test_the_range_test_refuses_a_gpt2_that_a_run_is_training():
    model = gpt2()
    run = lmwidget.train(model=model, max_steps=100_000, **OPTIONS)
    try:
        with pytest.raises(ValueError, match="is training this model"):
            lmwidget.lr_find(model=model, data="builtin", steps=5, display=False,
                             **{k: v for k, v in OPTIONS.items() if k != "display"})
    finally:
        run.stop()
        run.wait(30)


def test_samples_stay_in_the_trained_context_and_the_datas_vocabulary():
    """A GPT-2 with 128 positions trained on 32-character blocks, and 50 more outputs than
    the data has characters: samples use neither the untrained positions nor those outputs."""
    config = transformers.GPT2Config(vocab_size=DATA.vocab_size + 50, n_positions=128, n_embd=32,
                                     n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    run = lmwidget.train(model=model, max_steps=3, **OPTIONS)
    assert run.wait(60)
    lengths = []
    forward = model.forward

    def watched(*args, **kwargs):
        lengths.append(kwargs["input_ids"].shape[1])
        out = forward(*args, **kwargs)
        out.logits[..., DATA.vocab_size:] = 1e4  # the extra outputs would win every draw
        return out

    model.forward = watched
    text = run.sample()
    assert len(text) == 200 and "\ufffd" not in text
    assert max(lengths) == BLOCK
