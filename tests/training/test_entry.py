"""A run starts from plain options: objects given (a module, a tokenizer) are kept beside the
config, never in it, and a resumed run's tokenizer comes from its checkpoint."""

import dataclasses
import json

import pytest

import lmwidget
from lmwidget.data.chars import CharTokenizer
from lmwidget.data.text import builtin_text
from lmwidget.training.config import TrainConfig
from lmwidget.training.entry import configure
from tests.conftest import TINY


def plain(config) -> str:
    return json.dumps(dataclasses.asdict(config))  # raises on anything but plain values


def test_a_tokenizer_object_is_kept_beside_the_config():
    tok = CharTokenizer.from_text(builtin_text())
    start = configure(None, None, {**TINY, "tokenizer": tok})
    assert start.config.tokenizer is None and start.tokenizer is tok and plain(start.config)
    run = lmwidget.train(display=False, max_steps=3, tokenizer=tok, **TINY)
    assert run.wait(60) and run.state == "finished", run.error
    assert run.tokenizer is tok and run.config.tokenizer is None and plain(run.config)
    assert run.options()["tokenizer"] == lmwidget.data.tokens.label(tok)


def test_paths_become_the_plain_strings_they_name(tmp_path):
    config = TrainConfig.from_options(checkpoint_dir=tmp_path / "ckpt", **TINY)
    assert config.checkpoint_dir == str(tmp_path / "ckpt") and plain(config)


def test_the_config_refuses_a_tokenizer_object():
    with pytest.raises(TypeError, match=r"TrainConfig keeps plain values: tokenizer is .*Run\(config, "
                                        r"tokenizer=\.\.\.\); got a CharTokenizer"):
        TrainConfig.from_options(tokenizer=CharTokenizer.from_text("abc"))


def test_a_config_that_leaves_the_tokenizer_beside_needs_one():
    config = dataclasses.replace(TrainConfig.from_options(**TINY), tokenizer=None)
    with pytest.raises(ValueError, match=r"the config's tokenizer is None.*pass tokenizer="):
        lmwidget.Run(config)


def test_a_resumed_run_takes_its_tokenizer_from_the_checkpoint(tmp_path):
    first = lmwidget.train(display=False, max_steps=4, tokenizer="word", checkpoint_dir=str(tmp_path), **TINY)
    assert first.wait(60) and first.state == "finished", first.error
    path = first.save(tmp_path / "end.pt")
    resumed = lmwidget.train(display=False, resume=path, max_steps=6)
    assert resumed.wait(60) and resumed.state == "finished", resumed.error
    assert resumed.config.tokenizer is None and plain(resumed.config)
    assert resumed.tokenizer.same_as(first.tokenizer) and resumed.options()["tokenizer"] == "word"
