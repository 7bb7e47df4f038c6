"""The model is resolved once, at the entry: a name, your module, MODULE:NAME or a directory;
the config keeps plain values only."""

import dataclasses
import json
import sys

import pytest
import torch.nn as nn

import lmwidget
from lmwidget.models.resolve import Choice, choose
from lmwidget.training.config import TrainConfig
from tests.conftest import TINY


class Bigram(nn.Module):
    def __init__(self, vocab: int = 256):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx, targets=None):
        logits = self.table(idx)
        loss = None if targets is None else nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


@pytest.fixture
def mymodels(tmp_path, monkeypatch):
    (tmp_path / "mymodels_resolve.py").write_text(
        "from tests.models.test_resolve import Bigram\n"
        "def build():\n    return Bigram()\n"
        "made = Bigram()\n"
        "not_a_model = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mymodels_resolve"
    sys.modules.pop("mymodels_resolve", None)


def test_each_kind_of_model_option_resolves_to_a_plain_option_and_a_module(mymodels, tmp_path):
    assert choose(None) == Choice("gpt") and choose("lstm") == Choice("lstm")
    module = Bigram()
    assert choose(module) == Choice(None, module)
    built = choose(f"{mymodels}:build")
    assert built.option is None and isinstance(built.module, Bigram)
    assert isinstance(choose(f"{mymodels}:made").module, Bigram)
    assert choose(str(tmp_path)) == Choice(str(tmp_path))  # a directory: loaded once the data is known
    assert choose("transformer") == Choice("transformer")  # the config says what it accepts


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_here:build", r"model 'no_such_module_here:build': No module named 'no_such_module_here'"),
    ("{m}:missing", r"model '{m}:missing': module '{m}' has no attribute 'missing'"),
    ("{m}:not_a_model", r"model '{m}:not_a_model' gave a int, not an nn.Module"),
])
def test_a_module_and_name_that_gives_no_model_is_refused(mymodels, spec, message):
    with pytest.raises(ValueError, match=message.format(m=mymodels)):
        choose(spec.format(m=mymodels))


def test_on_the_command_line_any_other_string_is_a_module_and_name():
    with pytest.raises(ValueError, match=r"--model 'transformer' is neither gpt, lstm nor MODULE:NAME"):
        choose("transformer", command_line=True)


def test_the_config_keeps_plain_values_and_refuses_a_module():
    with pytest.raises(TypeError, match=r"TrainConfig keeps plain values: .*train\(model=module, \.\.\.\) or "
                                        r"Run\(config, model=module\); got a Bigram"):
        TrainConfig.from_options(model=Bigram())


def test_a_run_of_your_module_has_a_plain_config_and_names_the_class(mymodels):
    run = lmwidget.train(model=f"{mymodels}:build", display=False, max_steps=3,
                         **{k: v for k, v in TINY.items() if k not in ("n_layer", "n_head", "n_embd")})
    assert run.wait(60) and run.state == "finished", run.error
    assert run.config.model is None and isinstance(run.model, Bigram)
    json.dumps(dataclasses.asdict(run.config))  # plain data: serialisable as it is
    assert run.options()["model"] == "Bigram" and run.describe()["model"].startswith("Bigram (")
