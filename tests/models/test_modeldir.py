"""A model directory is hostile until checked: it never runs code, prompts, allocates what its
config asks before its weights are seen to fit, or trains a model that sees the future."""

import builtins
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import lmwidget
from lmwidget.models import modeldir
from lmwidget.models import pretrained
from lmwidget.data import tokens
from lmwidget.data.text import builtin_text
from lmwidget.models.hf import adapt
from lmwidget.models.contract import check_user_model

transformers = pytest.importorskip("transformers")

TEXT = builtin_text()[:20_000]
OPTIONS = dict(data=TEXT, block_size=16, batch_size=2, eval_interval=0, display=False, max_steps=2)
VOCAB = 300
HUGE_VOCAB = 8_388_608


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Its own cache; no prompt can be answered (stdin closed, input() fails); no thread left."""
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("lmwidget prompted for input"))
    yield
    assert not [t.name for t in threading.enumerate() if t.name.startswith("lmwidget-run")]


def gpt2(vocab_size=VOCAB):
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=vocab_size,
                                     n_positions=64, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def tokenizer():
    return tokens.train_bpe(TEXT, VOCAB).tokenizer


@pytest.fixture
def saved(tmp_path, tokenizer):
    """A tiny GPT-2 and its tokenizer.json, as save_pretrained leaves them."""
    path = tmp_path / "tiny-gpt2"
    gpt2().save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return path


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def refused(path, match, **options):
    """lmwidget.train(model=path) raises in the caller with a message matching `match`, never
    advising a safety off, and leaves the directory byte-identical."""
    before = digest(path)
    with pytest.raises(ValueError, match=match) as error:
        lmwidget.train(model=str(path), **{**OPTIONS, **options})
    assert not any(s in str(error.value) for s in (
        "trust_remote_code", "weights_only", "ignore_mismatched_sizes", "above report"))
    assert digest(path) == before
    return str(error.value)


def test_a_directory_with_custom_code_is_refused_before_transformers_sees_it(saved, tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (saved / "configuration_evil.py").write_text(
        code + "from transformers import GPT2Config as EvilConfig\n")
    (saved / "modeling_evil.py").write_text(
        code + "from transformers import GPT2LMHeadModel as EvilLM\n")
    edit_config(saved, model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                    "AutoModelForCausalLM": "modeling_evil.EvilLM"})
    message = refused(saved, r"config\.json was refused: its auto_map .* points at Python code "
                             r"\(.*modeling_evil\.py; .*configuration_evil\.py\).*lmwidget never "
                             r"runs code from a model directory")
    assert not marker.exists()
    edit_config(saved, model_type="gpt2")  # a known type does not make the code safe
    refused(saved, r"modeling_evil\.py.*never runs code")
    assert not marker.exists() and "Nothing in it ran" in message


def test_an_unknown_or_missing_model_type_is_refused_naming_the_value(saved):
    edit_config(saved, model_type="no-such-model")
    refused(saved, r"config\.json was refused: its model_type 'no-such-model' is unknown to "
                   r"transformers .*never runs code")
    edit_config(saved, model_type=None)
    refused(saved, r"config\.json was refused: its model_type is None")
    edit_config(saved, model_type="t5")
    refused(saved, r"model_type 't5' is not a causal language model")


def test_an_attention_kernel_from_the_hub_is_refused(saved):
    edit_config(saved, attn_implementation="kernels-community/flash-attn")
    refused(saved, r"attn_implementation is 'kernels-community/flash-attn', a kernel from the "
                   r"Hugging Face Hub.*never runs code")


def test_an_adapter_directory_is_refused(saved):
    (saved / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "gpt2"}))
    refused(saved, r"adapter_config\.json was refused: it makes transformers load the base model")


def test_every_transformers_call_refuses_remote_code(saved, monkeypatch):
    """Each call is recorded under its class: the config's own call is told apart from the
    model's (which makes one more of AutoConfig inside it)."""
    calls = []
    for cls, name in [(transformers.AutoConfig, "from_pretrained"),
                      (transformers.AutoModelForCausalLM, "from_pretrained"),
                      (transformers.AutoModelForCausalLM, "from_config")]:
        real, label = getattr(cls, name), f"{cls.__name__}.{name}"
        monkeypatch.setattr(cls, name, lambda *a, _real=real, _n=label, **k: (
            calls.append((_n, k.get("trust_remote_code", "absent"))), _real(*a, **k))[1])
    pretrained.skeleton(saved)  # the config from its file, the model from the config
    assert calls == [("AutoConfig.from_pretrained", False),
                     ("AutoModelForCausalLM.from_config", False)], calls
    calls.clear()
    pretrained.load(saved)
    assert ("AutoModelForCausalLM.from_pretrained", False) in calls, calls
    assert calls.count(("AutoConfig.from_pretrained", False)) == 2, calls  # lmwidget's, the model's
    assert all(value is False for _, value in calls), calls


@pytest.mark.parametrize("change, message", [
    (dict(vocab_size=HUGE_VOCAB),
     r"model\.safetensors was refused: its weights do not fit .*config\.json: "
     r"transformer\.wte\.weight: saved \(300, 32\), config\.json implies \(8388608, 32\)"),
    (dict(n_embd=4096),
     r"transformer\.wte\.weight: saved \(300, 32\), config\.json implies \(300, 4096\)"),
    (dict(n_positions=1_000_000),
     r"transformer\.wpe\.weight: saved \(64, 32\), config\.json implies \(1000000, 32\)"),
])
def test_a_config_that_does_not_fit_its_weights_is_refused_naming_the_first_weight(
        saved, change, message):
    edit_config(saved, **change)
    refused(saved, message)


@pytest.mark.slow
def test_a_huge_config_is_refused_before_its_memory_is_allocated(saved):
    """Measured in a fresh process: ~1.1 GB above the baseline before this was checked."""
    edit_config(saved, vocab_size=HUGE_VOCAB)
    script = textwrap.dedent(f"""
        import resource, transformers, safetensors, lmwidget.models.pretrained as p
        transformers.GPT2LMHeadModel, transformers.AutoModelForCausalLM  # their lazy imports
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            p.load({str(saved)!r})
        except ValueError as e:
            print("refused:", e)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(lmwidget.__file__).parents[1], timeout=120).stdout.splitlines()
    assert out and out[0].startswith("refused:") and "(8388608, 32)" in out[0], out
    assert int(out[-1]) < 40, f"peak RSS grew {out[-1]} MB above the baseline"


def measured(path):
    """pretrained.load(path) in a fresh process: its refusal, and the peak RSS (MB) and seconds
    it took above the baseline of transformers, safetensors and the models' modules imported."""
    script = textwrap.dedent(f"""
        import resource, time, transformers, safetensors, lmwidget.models.pretrained as p
        transformers.GPT2LMHeadModel, transformers.MixtralForCausalLM  # their lazy imports
        transformers.AutoModelForCausalLM
        base, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
        try:
            p.load({str(path)!r})
            print("loaded")
        except ValueError as e:
            print("refused:", " ".join(str(e).split()))
        print(time.monotonic() - start)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(lmwidget.__file__).parents[1], timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(lmwidget.__file__).parents[1])})
    lines = out.stdout.splitlines()
    assert len(lines) >= 3, out.stderr[-2000:]
    return lines[0], int(lines[-1]), float(lines[-2])


def mixtral(path, **changes):
    config = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    transformers.MixtralForCausalLM(config).save_pretrained(path)
    edit_config(path, **changes)
    return path


@pytest.mark.slow
def test_experts_transformers_converts_are_bounded_before_the_model_is_built(tmp_path):
    """Mixtral's experts are saved one by one and fused as they load, so their shapes are not
    compared; what the whole model holds is. Before: +1,476 MB, then a bare RuntimeError."""
    message, grown, _ = measured(mixtral(tmp_path / "moe", intermediate_size=1_000_000))
    assert re.search(r"refused: model directory .*moe was refused: .*moe/config\.json implies a "
                     r"model holding 1\.43\d* GiB \(of which 1\.43\d* GiB not saved under its "
                     r"own name and shape: buffers, converted weights such as experts.*\), more "
                     r"than the [\d.]+ KiB of weights in model\.safetensors", message), message
    assert grown < 40, f"peak RSS grew {grown} MB above the baseline"


def test_a_small_mixtral_loads_and_more_experts_than_saved_are_refused(tmp_path):
    path = mixtral(tmp_path / "moe")
    assert pretrained.load(path).model.config.num_local_experts == 4
    edit_config(path, num_local_experts=5000)
    with pytest.raises(ValueError, match=r"moe/config\.json was refused: its num_local_experts is "
                                         r"5,000, but model\.safetensors holds weights for 4 "
                                         r"experts; the model was not built"):
        pretrained.load(path)


@pytest.mark.parametrize("key", ["n_layer", "num_hidden_layers"])
def test_more_layers_than_the_weights_hold_are_refused_before_any_is_built(saved, key):
    """Before: building the empty model took ~2.7 s and +49 MB per 1,000 layers (10^6: ~45 min)."""
    edit_config(saved, **{key: 100_000})
    message, grown, seconds = measured(saved)
    assert re.search(rf"refused: .*config\.json was refused: its {key} is 100,000, but "
                     rf"model\.safetensors holds weights for 1 layer; the model was not built",
                     message), message
    assert seconds < 2 and grown < 10, (seconds, grown)


def test_layers_are_capped_where_the_weights_names_number_none(saved):
    saved_keys = {"wte.weight": ((VOCAB, 32), "model.safetensors")}
    with pytest.raises(modeldir.ModelDirError, match=r"its n_layer is 5,000, but the weights' "
                                                     r"names in model\.safetensors number no "
                                                     r"layers, and lmwidget builds at most 1,024"):
        modeldir._check_counts(saved, {"model_type": "gpt2", "n_layer": 5000}, saved_keys)
    edit_config(saved, n_layer=100_000)  # a checkpoint's skeleton: the weights are not read
    with pytest.raises(ValueError, match=r"its n_layer is 100,000, but lmwidget builds at most "
                                         r"1,024 layers without reading weights"):
        pretrained.skeleton(saved)


def test_a_failure_inside_transformers_names_the_files_and_drops_its_advice(saved, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("You set `ignore_mismatched_sizes` to `False`, thus raising an error. "
                           "For details look at the above report!")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)
    message = refused(saved, r"could not load a causal language model from model directory "
                             r"'.*tiny-gpt2' \(.*tiny-gpt2/config\.json with .*tiny-gpt2/"
                             r"model\.safetensors\): transformers refused them \(RuntimeError: a "
                             r"saved weight's shape differs from the one config\.json implies\)\. "
                             r"Nothing was trained\. Accepted: the config\.json and weights")
    assert "report" not in message


def test_a_pytorch_model_bin_is_checked_as_a_checkpoint_is(saved):
    """ckptcheck's checks: a whole archive, records that do not overlap."""
    weights = dict(gpt2().state_dict())
    del weights["lm_head.weight"]
    (saved / "model.safetensors").unlink()
    torch.save(weights, saved / "pytorch_model.bin")
    data = (saved / "pytorch_model.bin").read_bytes()
    entry = data.index(b"PK\x01\x02")  # the first record's entry in the zip directory
    (saved / "pytorch_model.bin").write_bytes(
        data[:entry + 20] + struct.pack("<II", 1 << 31, 1 << 31) + data[entry + 28:])
    refused(saved, r"weights file .*pytorch_model\.bin was refused: its records add up to "
                   r"[\d,]+ bytes, more than the file's [\d,]+, so they overlap.*Accepted: "
                   r"model\.safetensors")
    (saved / "pytorch_model.bin").write_bytes(data[:len(data) // 2])
    refused(saved, r"weights file .*pytorch_model\.bin is truncated: its [\d,]+ bytes end "
                   r"before the end of the zip archive")


def test_a_sharded_directory_and_one_without_the_prefix_load(tmp_path):
    sharded = tmp_path / "sharded"
    gpt2().save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert pretrained.load(sharded).model.transformer.wte.weight.shape == (VOCAB, 32)
    edit_config(sharded, vocab_size=HUGE_VOCAB)
    with pytest.raises(ValueError, match=r"model-0000\d-of-0000\d\.safetensors was refused: .* "
                                         r"transformer\.wte\.weight: saved \(300, 32\)"):
        pretrained.load(sharded)
    base = tmp_path / "base"  # GPT2Model's keys: wte.weight, not transformer.wte.weight
    model = gpt2()
    model.transformer.save_pretrained(base)
    net = pretrained.load(base).model
    assert torch.equal(net.transformer.wte.weight, model.transformer.wte.weight)
    assert net.lm_head.weight is net.transformer.wte.weight
    edit_config(base, n_embd=64)
    with pytest.raises(ValueError, match=r"wte\.weight: saved \(300, 32\), config\.json implies "
                                         r"\(300, 64\)"):
        pretrained.load(base)


def test_what_a_config_makes_beyond_its_weights_is_bounded(tmp_path, tokenizer):
    path = tmp_path / "tiny-gptj"  # GPT-J's rotary table (n_positions, rotary_dim) is not saved
    config = transformers.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2,
                                     n_positions=64, rotary_dim=8, bos_token_id=0, eos_token_id=0)
    transformers.GPTJForCausalLM(config).save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    assert pretrained.load(path).model.transformer.rotary_emb.embed_positions.shape == (64, 8)
    edit_config(path, n_positions=10_000_000)  # 320 MB of table over 0.2 MB of weights
    refused(path, r"config\.json implies a model holding 305\.\d+ MiB \(of which 305\.\d+ MiB "
                  r"not saved under its own name and shape: buffers, .*\), more than the "
                  r"[\d.]+ KiB of weights in model\.safetensors and a margin of 64 MiB")


def test_missing_weights_are_refused(saved):
    from safetensors.torch import load_file, save_file

    weights = load_file(saved / "model.safetensors")
    del weights["transformer.h.0.mlp.c_fc.weight"]
    save_file(weights, saved / "model.safetensors", metadata={"format": "pt"})
    refused(saved, r"model\.safetensors lacks transformer\.h\.0\.mlp\.c_fc\.weight \(32, 128\), "
                   r"which .*config\.json implies; transformers would fill it with random numbers")


@pytest.mark.parametrize("name, size, message", [
    ("config.json", (1 << 20) + 1,
     r"model config .*config\.json has 1,048,577 bytes, more than the 1 MiB .*it was not read"),
    ("generation_config.json", (1 << 20) + 1,
     r"generation config .*generation_config\.json has 1,048,577 bytes, .*it was not read"),
    ("model.safetensors.index.json", (8 << 20) + 1,
     r"index of weight shards .*model\.safetensors\.index\.json has 8,388,609 bytes, more than "
     r"the 8 MiB such a file can need: it was not read"),
])
def test_metadata_files_over_their_limit_are_refused_unread(saved, name, size, message):
    if name.endswith("index.json"):
        (saved / "model.safetensors").unlink()
        (saved / name).write_text(json.dumps({"weight_map": {}}))
    with open(saved / name, "a") as f:
        f.truncate(size)  # padded with NUL bytes: not JSON, so only a refusal unread passes
    refused(saved, message)


@pytest.mark.parametrize("length, message", [
    (1 << 40, r"says its header is 1,099,511,627,776 bytes long, more than the 8,388,608 "
              r"lmwidget reads"),
    (1 << 20, r"says its header is 1,048,576 bytes long, but the file has only [\d,]+"),
])
def test_a_safetensors_header_is_read_within_bounds(saved, length, message):
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[:8] = length.to_bytes(8, "little")
    (saved / "model.safetensors").write_bytes(bytes(data))
    refused(saved, r"model\.safetensors was refused: it " + message)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pytorch_model_bin_of_tensors_loads_and_one_with_code_is_refused(saved, tmp_path):
    weights = dict(gpt2().state_dict())
    del weights["lm_head.weight"]  # tied, as save_pretrained leaves it out
    (saved / "model.safetensors").unlink()
    torch.save(weights, saved / "pytorch_model.bin")
    assert torch.equal(pretrained.load(saved).model.transformer.wte.weight,
                       weights["transformer.wte.weight"])
    marker = tmp_path / "ran"
    torch.save({**weights, "evil": Payload(marker)}, saved / "pytorch_model.bin")
    message = refused(saved, r"pytorch_model\.bin was refused: it holds objects other than tensors "
                             r"\(a reference to \S*system, a function or class that unpickling "
                             r"would import and call\), and lmwidget never unpickles those")
    assert not marker.exists() and "Accepted: tensors alone" in message
    (saved / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # a legacy (not zip) pickle
    refused(saved, r"pytorch_model\.bin was refused: it is not the zip archive torch\.save writes "
                   r"\(its first bytes are 80 02 7d 71\)")


def bert(is_decoder, seed=0):
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64, is_decoder=is_decoder)
    torch.manual_seed(seed)
    return transformers.BertLMHeadModel(config)


def test_a_bidirectional_model_is_refused_as_a_directory_and_as_a_module(tmp_path, tokenizer):
    path = tmp_path / "tiny-bert"
    bert(is_decoder=False).save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    refused(path, rf"model BertLMHeadModel from {path} sees the future: its logits at position 0 "
                  rf"changed when only the last token \(position 7\) changed.*Accepted: a causal "
                  rf"language model")
    with pytest.raises(ValueError, match=r"model BertLMHeadModel sees the future: its logits at "
                                         r"position 0 changed"):
        lmwidget.train(model=bert(is_decoder=False), tokenizer="char", **OPTIONS)


class Ids:
    """What check_user_model reads of a dataset: random ids below VOCAB, seeded by its caller."""
    vocab_size = VOCAB

    def batch(self, split, batch_size, block_size, generator):
        x = torch.randint(0, VOCAB, (batch_size, block_size + 1), generator=generator)
        return x[:, :-1], x[:, 1:]


def check(model):
    from types import SimpleNamespace

    check_user_model(model, Ids(), SimpleNamespace(block_size=16, model=model), "cpu")


@pytest.mark.parametrize("seed", range(5))
def test_even_a_freshly_initialised_bidirectional_model_is_caught(seed):
    model = adapt(bert(is_decoder=False, seed=seed))
    with pytest.raises(ValueError, match="BertLMHeadModel sees the future: its logits at "
                                         "position 0 changed"):
        check(model)


def test_a_causal_model_passes_and_keeps_its_mode():
    for model in (adapt(gpt2()), adapt(bert(is_decoder=True))):
        model.train()
        list(model.modules())[3].eval()  # one part frozen in eval mode stays so
        modes = [m.training for m in model.modules()]
        check(model)
        assert [m.training for m in model.modules()] == modes


def test_a_module_that_sees_the_future_is_refused():
    class Peek(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, VOCAB)

        def forward(self, idx, targets=None):
            logits = self.emb(idx) + self.emb(idx).mean(1, keepdim=True)  # every position sees all
            return logits, logits.sum() * 0

    with pytest.raises(ValueError, match=r"model Peek sees the future: its logits at position 0"):
        lmwidget.train(model=Peek(), tokenizer="char", **OPTIONS)


def test_reason_keeps_what_went_wrong_and_drops_advice():
    assert modeldir.reason(ValueError("Bad shape. Look at the above report!")) == (
        "ValueError: Bad shape")
    assert modeldir.reason(ValueError("Bad.\n\tx: shape (1,). Set weights_only=False")) == (
        "ValueError: Bad; x: shape (1,); a weights file holds objects other than tensors")
    assert modeldir.reason(ValueError("set trust_remote_code=True to run it")) == (
        "ValueError: it needs Python code of the directory's own")
    assert modeldir.reason(KeyError()) == "KeyError"
