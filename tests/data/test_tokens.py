"""Tokenizers: words and byte-level BPE trained offline, the field's tokenizers, their JSON
in checkpoints, bits per byte, and the refusals of bad input."""

import math

import numpy as np
import pytest
import torch

import lmwidget
from lmwidget.data import tokens
from lmwidget.data.dataset import Dataset
from lmwidget.data.text import builtin_text

from tests.conftest import SHARED_SHAKESPEARE, TINY

TEXT = builtin_text()[:200_000]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def train(**options):
    run = lmwidget.train(display=False, **{**TINY, "max_steps": 30, "eval_interval": 10, **options})
    assert run.wait(120) and run.state == "finished", run.error
    return run


def test_word_tokenizer_keeps_the_most_frequent_words_and_marks_the_rest_unknown():
    text = "the cat sat on the mat.\nthe dog sat.\n" * 50 + "a zebra, once.\n"
    tok = tokens.train_word(text, vocab_size=6)
    vocab = tok.tokenizer.get_vocab()
    assert tok.vocab_size == 6 and vocab[tokens.UNK] == 0
    assert {"the", "sat", ".", "\n"} <= set(vocab) and "zebra" not in vocab  # most frequent first
    ids = tok.encode("the zebra sat.\n")
    assert ids[1] == vocab[tokens.UNK] and len(ids) == 5  # words, punctuation and newlines
    assert tok.decode(tok.encode("the sat.\nthe sat.")) == "the sat.\nthe sat."


def test_bpe_has_its_size_and_is_lossless_on_any_text():
    tok = tokens.train_bpe(TEXT, vocab_size=400)
    assert tok.vocab_size == 400 and tok.kind == "bpe"
    for text in (TEXT[:2000], "naïve café — 東京 🚀\n\tx"):  # bytes it never saw still encode
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(TEXT[:2000])) < 2000 / 1.5  # merges: well under a token per character


def test_a_trained_tokenizer_is_cached_by_corpus_and_settings(isolated_cache, monkeypatch):
    first = tokens.build("bpe", TEXT, 300)
    assert len(list((isolated_cache / "tokenizers").glob("bpe-300-*.json"))) == 1
    with monkeypatch.context() as m:
        m.setattr(tokens, "train_bpe", lambda *a: pytest.fail("trained again"))
        assert tokens.build("bpe", TEXT, 300).same_as(first)  # read back, not trained
    tokens.build("bpe", TEXT, 301)  # other settings, another entry
    tokens.build("bpe", TEXT[:-1], 300)  # another corpus, another entry
    assert len(list((isolated_cache / "tokenizers").glob("*.json"))) == 3


def test_the_validation_text_never_shapes_the_vocabulary():
    text = "to be or not to be.\n" * 400 + "zyzzyva " * 50
    data = Dataset(text, val_fraction=0.05, tokenizer="word")
    assert "zyzzyva" not in data.tokenizer.tokenizer.get_vocab()
    assert (data.val == 0).sum() > 0  # the unknown token, in the validation split only
    assert (data.train != 0).all()


def test_bits_per_byte_of_a_character_model_on_ascii_text_is_loss_over_ln2():
    if not SHARED_SHAKESPEARE.is_file():
        pytest.skip("tiny Shakespeare is not beside the repository")
    text = SHARED_SHAKESPEARE.read_text()[:100_000]
    assert text.isascii()
    h = train(data=text).history
    np.testing.assert_allclose(h["bpb"], h["loss"] / math.log(2), rtol=1e-6)
    val = h.dropna(subset=["val_loss"])
    assert len(val) == 3
    np.testing.assert_allclose(val["val_bpb"], val["val_loss"] / math.log(2), rtol=1e-6)


def test_a_bpe_run_records_bits_per_byte_from_its_bytes_per_token():
    run = train(data=TEXT, tokenizer="bpe", vocab_size=300)
    bpt = Dataset(TEXT, tokenizer="bpe", vocab_size=300).bytes_per_token
    assert 1.2 < bpt["train"] < 4  # a few merges already pack more than a byte per token
    h = run.history
    np.testing.assert_allclose(h["bpb"], h["loss"] / math.log(2) / bpt["train"], rtol=1e-6)
    val = h.dropna(subset=["val_loss"])
    np.testing.assert_allclose(val["val_bpb"], val["val_loss"] / math.log(2) / bpt["val"], rtol=1e-6)
    assert run.describe()["tokenizer"] == "byte-level BPE (300)"
    sample = run.sample()  # decoded with the run's BPE: text, not token ids
    assert isinstance(sample, str) and len(sample) > 50


def test_the_tokenizer_is_kept_as_json_in_checkpoints_and_restored_on_resume(tmp_path, monkeypatch):
    run = train(data=TEXT, tokenizer="word", vocab_size=500, checkpoint_dir=tmp_path)
    path = run.save()
    payload = torch.load(path, weights_only=True)  # no pickle: plain values and tensors only
    assert payload["tokenizer"]["kind"] == "word" and isinstance(payload["tokenizer"]["json"], str)
    assert payload["config"]["tokenizer"] == "word"
    monkeypatch.setattr(tokens, "train_word", lambda *a: pytest.fail("trained again on resume"))
    resumed = lmwidget.train(resume=path, max_steps=40, display=False)
    assert resumed.wait(120) and resumed.state == "finished"
    assert resumed.tokenizer.same_as(run.tokenizer) and resumed.step == 40
    with pytest.raises(ValueError, match="tokenizer='bpe' differs from the tokenizer checkpoint"):
        lmwidget.train(resume=path, max_steps=50, tokenizer="bpe", display=False)
    same = lmwidget.train(resume=path, max_steps=41, tokenizer="word", display=False)  # the same: fine
    assert same.wait(120) and same.state == "finished"


def test_the_fields_tokenizers_by_object_file_and_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = tokens.train_bpe(TEXT, 320).tokenizer
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.save_pretrained(tmp_path / "tok")
    tok.save(str(tmp_path / "tokenizer.json"))
    for spec in (tok, fast, tmp_path / "tok", str(tmp_path / "tokenizer.json")):
        run = train(data=TEXT, tokenizer=spec, max_steps=5, eval_interval=0)
        assert run.tokenizer.vocab_size == 320, spec
        assert run.tokenizer.encode(TEXT[:500]) == tok.encode(TEXT[:500]).ids


@pytest.mark.parametrize("options, message", [
    (dict(tokenizer="bpf"), "unknown tokenizer 'bpf'; valid: 'char', 'word', 'bpe'"),
    (dict(tokenizer="bpe", vocab_size=100), "vocab_size=100 is too small for byte-level BPE"),
    (dict(tokenizer="bpe", vocab_size=100_000, data="a tiny corpus of a few words\n" * 20),
     "vocab_size=100000 is larger than this corpus allows"),
    (dict(tokenizer="missing/tokenizer.json"), "nor an existing tokenizer.json file"),
    (dict(vocab_size=100), "vocab_size=100 applies to tokenizer='word' or 'bpe'"),
    (dict(tokenizer="word", vocab_size=-1), "vocab_size must be an integer >= 0"),
    (dict(tokenizer=3), "tokenizer must be one of 'char', 'word', 'bpe'"),
])
def test_bad_tokenizer_options_are_refused_before_any_thread_starts(options, message):
    import threading

    from tqdm._monitor import TMonitor

    def threads():  # tqdm's monitor starts with the first progress bar of the process: not lmwidget's
        return [t for t in threading.enumerate() if not isinstance(t, TMonitor)]

    before = threads()
    with pytest.raises((ValueError, TypeError), match=message):
        lmwidget.train(display=False, **{**TINY, **options})
    assert threads() == before


def test_a_directory_without_tokenizer_json_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        lmwidget.train(display=False, tokenizer=tmp_path, **TINY)


def test_compare_overlays_bits_per_byte_when_tokenizers_differ():
    char = train(data=TEXT)
    bpe = train(data=TEXT, tokenizer="bpe", vocab_size=300)
    view = lmwidget.compare(char, bpe, display=False)
    assert view.per_byte and [m.name for m in view.metrics][:1] == ["bpb"]
    assert "bits/byte" in view.table_html() and "tokenizer=bpe" in " ".join(view.labels)
    same = lmwidget.compare(char, train(data=TEXT, lr=1e-3), display=False)
    assert not same.per_byte and [m.name for m in same.metrics][:1] == ["loss"]


def test_command_line_and_magic_take_a_tokenizer():
    from lmwidget.remote.cli import parser

    args = vars(parser().parse_args(["--tokenizer", "bpe", "--vocab-size", "512"]))
    assert args["tokenizer"] == "bpe" and args["vocab_size"] == 512


@pytest.mark.slow
def test_a_word_level_lstm_learns_tiny_shakespeare():
    """The classic teaching example, end to end: words, an LSTM, a falling validation loss."""
    if not SHARED_SHAKESPEARE.is_file():
        pytest.skip("tiny Shakespeare is not beside the repository")
    run = lmwidget.train(model="lstm", data=str(SHARED_SHAKESPEARE), tokenizer="word", vocab_size=4000,
                         max_steps=150, eval_interval=50, eval_iters=5, n_layer=1, n_embd=64,
                         batch_size=16, block_size=32, lr=1e-2, display=False)
    assert run.wait(300) and run.state == "finished", run.error
    val = run.history["val_loss"].dropna().to_numpy()
    assert val[-1] < math.log(4000) - 1.0, val  # well below guessing among 4,000 words
    assert run.describe()["tokenizer"] == "words (4,000)"
    text = run.sample()
    assert len(text.split()) > 20  # decoded into words


def head_pieces(text, size=1 << 16):
    """0.2's tokens.pieces, ported as it was: a piece ends at its last newline, else at `size`."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end


def test_a_text_in_memory_is_encoded_as_0_2_did_whatever_its_lines(tmp_path, monkeypatch):
    """Its tokens make the fingerprint that resuming a checkpoint compares: cutting a line of
    over 64k characters anywhere else would make the same data look different."""
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path))
    shakespeare = SHARED_SHAKESPEARE.read_text(encoding="utf-8")
    one_line = shakespeare[:400_000].replace("\n", " ")
    tok = tokens.train_bpe(shakespeare, 1024)
    expected = [i for p in head_pieces(one_line) for i in tok.tokenizer.encode(p, add_special_tokens=False).ids]
    got = tokens.encode_array(tok, one_line)
    assert got.tolist() == expected
    assert [len(p) for p in tokens.pieces(one_line)] == [len(p) for p in head_pieces(one_line)]
    assert tok.encode(one_line) == expected
    assert len(expected) == 158_992  # as measured with 0.2 (HEAD) itself
    print(f"{len(expected):,} ids as 0.2 gave; whitespace-cut pieces give "
          f"{sum(len(a) for a in tok.encode_pieces(tokens.pieces(one_line, spaces=True))):,}")
