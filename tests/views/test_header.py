"""The dashboard's header says what trains in a person's words: no Python class, no placeholder."""

import re

import pytest

import lmwidget
from lmwidget.data import tokens
from lmwidget.data.text import builtin_text

from tests.conftest import TINY
from tests.harness.frameworks import hf_tokenizer

CLASS_NAME = re.compile(r"\b[A-Z]\w*(Tokenizer|TokenizerFast|Backend)\b")


def header(run) -> str:
    return re.sub(r"<[^>]+>", "", run.dashboard.title.value)


def test_a_text_given_as_a_string_is_named_by_its_length():
    text = builtin_text()[:30_000]
    run = lmwidget.train(display=False, data=text, **{**TINY, "max_steps": 2})
    run.wait(30)
    assert run.describe()["data"] == f"a text of {len(text):,} characters"
    assert "<text of" not in header(run) and f"{len(text):,} characters" in header(run)


def test_a_file_is_named_by_its_name(tmp_path):
    path = tmp_path / "my-corpus.txt"
    path.write_text(builtin_text()[:30_000], encoding="utf-8")
    run = lmwidget.train(display=False, data=str(path), **{**TINY, "max_steps": 2})
    run.wait(30)
    assert run.describe()["data"] == "my-corpus.txt"


def test_a_transformers_tokenizer_is_named_by_what_it_is_not_its_class():
    pytest.importorskip("transformers")
    tok = tokens.load(hf_tokenizer())  # named after its class by the loader
    assert tok.describe() == f"word-level tokenizer ({tok.vocab_size:,})"
    assert not CLASS_NAME.search(tok.describe())


def test_a_byte_level_bpe_tokenizer_says_so():
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.add_tokens(["a", "b", "c"])
    assert tokens.load(raw).describe() == "byte-level BPE tokenizer (3)"
