"""Tests for lmwidget.data: the character tokenizer, the split, batches, corpora and the download."""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from lmwidget.data import text as data
from lmwidget.data.chars import CharTokenizer
from lmwidget.data.dataset import Dataset
from lmwidget.data.text import load_text

from tests.conftest import SHARED_SHAKESPEARE, LocalServer

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache dir and no proxy, so nothing leaves 127.0.0.1."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_ENV, str(cache))
    monkeypatch.delenv(data.URL_ENV, raising=False)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return cache


@pytest.fixture(scope="module")
def shakespeare_bytes():
    if not SHARED_SHAKESPEARE.is_file():
        pytest.skip(f"the shared tiny Shakespeare file is not at {SHARED_SHAKESPEARE}")
    return SHARED_SHAKESPEARE.read_bytes()


@pytest.fixture
def serve(monkeypatch):
    """serve(body) starts a local server for `body` and points LMWIDGET_SHAKESPEARE_URL at it."""
    servers = []

    def start(body: bytes) -> LocalServer:
        server = LocalServer(body)
        servers.append(server)
        monkeypatch.setenv(data.URL_ENV, server.url)
        return server

    yield start
    for server in servers:
        server.shutdown()


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# --------------------------------------------------------------------------- tokenizer

TRICKY = "héllo ✓ 日本\n\t"


def test_tokenizer_round_trips_non_ascii_text():
    tok = CharTokenizer.from_text(TRICKY)
    ids = tok.encode(TRICKY)
    assert len(ids) == len(TRICKY)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == TRICKY
    # decode also accepts a tensor of ids, as the trainer passes
    assert tok.decode(torch.tensor(ids)) == TRICKY
    # a substring in another order round-trips too
    other = "本日 ✓\tolléh\n"
    assert tok.decode(tok.encode(other)) == other


def test_tokenizer_round_trips_a_random_unicode_text():
    g = torch.Generator().manual_seed(0)
    codepoints = torch.randint(32, 0x3000, (2000,), generator=g).tolist()
    text = "".join(chr(c) for c in codepoints if not 0xD800 <= c <= 0xDFFF) + "\n\t"
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_vocab_is_sorted_and_unique():
    tok = CharTokenizer.from_text(TRICKY * 3 + "zzyyaa")
    assert tok.chars == sorted(set(TRICKY + "zya"))
    assert len(tok.chars) == len(set(tok.chars))
    assert tok.vocab_size == len(set(TRICKY + "zya"))
    assert [tok.stoi[c] for c in tok.chars] == list(range(tok.vocab_size))
    # ids follow the sorted order
    assert tok.encode("az") == [tok.chars.index("a"), tok.chars.index("z")]
    assert tok.encode("a") < tok.encode("z")


def test_tokenizer_unknown_character_raises_value_error_naming_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=re.escape(repr("✓"))):
        tok.encode("ab✓c")
    with pytest.raises(ValueError, match=re.escape(repr("Q"))):
        tok.encode("Q")


# --------------------------------------------------------------------------- dataset

def _text(n: int) -> str:
    g = torch.Generator().manual_seed(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz \n"
    return "".join(alphabet[i] for i in torch.randint(len(alphabet), (n,), generator=g).tolist())


@pytest.mark.parametrize("n", [1000, 12345])
def test_dataset_split_is_90_10_with_val_as_the_tail(n):
    text = _text(n)
    ds = Dataset(text)
    n_val = int(n * 0.1)
    assert len(ds.val) == n_val
    assert len(ds.train) == n - n_val
    assert ds.train.dtype == np.uint16 and ds.val.dtype == np.uint16  # 2 bytes a character
    ids = np.array(ds.tokenizer.encode(text))
    assert np.array_equal(ds.train, ids[: n - n_val])
    assert np.array_equal(ds.val, ids[n - n_val:])
    assert ds.tokenizer.decode(ds.val) == text[n - n_val:]
    assert ds.vocab_size == len(set(text))


def test_dataset_val_fraction_is_honoured_and_validated():
    ds = Dataset(_text(1000), val_fraction=0.25)
    assert (len(ds.train), len(ds.val)) == (750, 250)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            Dataset(_text(100), val_fraction=bad)


def _assert_blocks_come_from(split, x: torch.Tensor, y: torch.Tensor):
    T = x.shape[1]
    windows = torch.from_numpy(split.astype(np.int64)).unfold(0, T + 1, 1)  # every contiguous block of T+1 tokens
    blocks = torch.cat((x, y[:, -1:]), dim=1)
    for row in range(x.shape[0]):
        assert (windows == blocks[row]).all(dim=1).any(), f"row {row} is not a block of the split"


@pytest.mark.parametrize("split", ["train", "val"])
def test_batch_shapes_and_targets_are_the_next_tokens(split):
    ds = Dataset(_text(5000))
    B, T = 6, 16
    x, y = ds.batch(split, B, T, torch.Generator().manual_seed(0))
    assert x.shape == (B, T) and y.shape == (B, T)
    assert x.dtype == torch.long and y.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted by one
    _assert_blocks_come_from(getattr(ds, split), x, y)


def test_batch_draws_from_the_requested_split_only():
    # train has only 'a' and 'b'; the val tail only 'c' and 'd'
    text = "ab" * 450 + "cd" * 50
    ds = Dataset(text)
    tok = ds.tokenizer
    x, y = ds.batch("val", 32, 8, torch.Generator().manual_seed(0))
    assert set(tok.decode(x.flatten())) | set(tok.decode(y.flatten())) == {"c", "d"}
    x, y = ds.batch("train", 32, 8, torch.Generator().manual_seed(0))
    assert set(tok.decode(x.flatten())) | set(tok.decode(y.flatten())) == {"a", "b"}


def test_batch_is_reproducible_from_the_generator_seed():
    ds = Dataset(_text(5000))
    x1, y1 = ds.batch("train", 8, 12, torch.Generator().manual_seed(123))
    x2, y2 = ds.batch("train", 8, 12, torch.Generator().manual_seed(123))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = ds.batch("train", 8, 12, torch.Generator().manual_seed(124))
    assert not torch.equal(x1, x3)
    # the generator advances: two draws from one generator differ
    g = torch.Generator().manual_seed(123)
    a, _ = ds.batch("train", 8, 12, g)
    b, _ = ds.batch("train", 8, 12, g)
    assert torch.equal(a, x1) and not torch.equal(a, b)


def test_check_block_size_against_the_val_split():
    ds = Dataset(_text(1000))  # val has 100 tokens
    assert len(ds.val) == 100
    ds.check_block_size(99)  # 99 + 1 tokens fit exactly
    x, y = ds.batch("val", 4, 99, torch.Generator().manual_seed(0))  # and batching works
    assert torch.equal(torch.cat((x[:1], y[:1, -1:]), 1)[0], torch.from_numpy(ds.val.astype(np.int64)))
    with pytest.raises(ValueError) as info:
        ds.check_block_size(100)
    msg = str(info.value)
    assert "block_size=100" in msg
    assert "validation" in msg
    assert "100 tokens" in msg and "at most 99" in msg
    with pytest.raises(ValueError, match="block_size"):
        ds.check_block_size(5000)


# --------------------------------------------------------------------------- corpora

def test_builtin_text_is_large_english_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("builtin_text must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    text = data.builtin_text()
    assert isinstance(text, str) and len(text) > 100_000
    lowered = text.lower()
    for word in (" the ", " and ", " of ", " is "):
        assert lowered.count(word) > 100, word
    ascii_letters = sum(c.isascii() and c.isalpha() for c in text)
    assert ascii_letters / len(text) > 0.5
    assert load_text("builtin") == text


def test_load_text_from_a_path_and_a_str_path(tmp_path):
    content = "First line, héllo ✓\nsecond line 日本\n"
    path = tmp_path / "corpus.txt"
    path.write_text(content, encoding="utf-8")
    assert load_text(path) == content
    assert load_text(str(path)) == content


def test_load_text_of_a_str_of_text_is_the_text_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for text in ("hello world\nthis is text\n", "the quick brown fox jumps", "a\nb"):
        assert load_text(text) == text


@pytest.mark.parametrize("make", ["empty_file_path", "empty_file_str", "empty_str"])
def test_load_text_empty_corpus_is_an_error(tmp_path, make):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    arg = {"empty_file_path": path, "empty_file_str": str(path), "empty_str": ""}[make]
    with pytest.raises(ValueError, match="empty"):
        load_text(arg)


def test_load_text_unknown_corpus_name_lists_the_valid_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        load_text("shakspeare")
    msg = str(info.value)
    assert "shakspeare" in msg
    assert "builtin" in msg and "shakespeare" in msg


def test_load_text_missing_file_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape("missing/file.txt")):
        load_text("missing/file.txt")
    with pytest.raises(ValueError, match=re.escape("missing/file.txt")):
        load_text(Path("missing/file.txt"))


def test_load_text_non_utf8_file_names_the_path(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"\xff\xfe abc")
    for arg in (path, str(path)):
        with pytest.raises(ValueError) as info:
            load_text(arg)
        assert str(path) in str(info.value)
        assert "UTF-8" in str(info.value)


def test_load_text_directory_is_a_clear_error_naming_it(tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    for arg in (folder, str(folder)):
        with pytest.raises(ValueError, match=re.escape(str(folder))):
            load_text(arg)


@pytest.mark.parametrize("bad", [42, 3.5, None, b"bytes of text", ["builtin"]])
def test_load_text_wrong_type_is_a_type_error(bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        load_text(bad)


# --------------------------------------------------------------------------- tiny Shakespeare

def test_shakespeare_download_verifies_and_caches(serve, isolated_cache, shakespeare_bytes):
    server = serve(shakespeare_bytes)
    text = data.shakespeare_text(timeout=10)
    assert len(text) == 1_115_394
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == data.SHAKESPEARE_SHA256
    assert text.startswith("First Citizen:")
    assert server.requests == 1
    cached = isolated_cache / "tinyshakespeare.txt"
    assert cached.read_bytes() == shakespeare_bytes
    assert _cache_files(isolated_cache) == ["tinyshakespeare.txt"]  # no temp file left

    server.shutdown()  # the second load must come from the cache
    again = load_text("shakespeare")
    assert again == text
    assert server.requests == 1
    assert _cache_files(isolated_cache) == ["tinyshakespeare.txt"]


def test_shakespeare_corrupted_cache_is_downloaded_again(serve, isolated_cache, shakespeare_bytes):
    isolated_cache.mkdir(parents=True)
    cached = isolated_cache / "tinyshakespeare.txt"
    cached.write_bytes(shakespeare_bytes[:-100] + b"corrupted!" * 10)
    server = serve(shakespeare_bytes)
    text = load_text("shakespeare")
    assert server.requests == 1
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == data.SHAKESPEARE_SHA256
    assert cached.read_bytes() == shakespeare_bytes
    assert _cache_files(isolated_cache) == ["tinyshakespeare.txt"]


def test_shakespeare_wrong_bytes_are_refused_and_nothing_cached(serve, isolated_cache,
                                                               shakespeare_bytes):
    wrong = shakespeare_bytes.replace(b"First Citizen", b"Final Citizen", 1)
    assert len(wrong) == len(shakespeare_bytes)
    server = serve(wrong)
    with pytest.raises(ValueError) as info:
        data.shakespeare_text(timeout=10)
    assert "sha256" in str(info.value)
    assert server.requests == 1
    assert _cache_files(isolated_cache) == []
    with pytest.raises(ValueError, match="sha256"):
        load_text("shakespeare")
    assert _cache_files(isolated_cache) == []


def test_shakespeare_unreachable_url_is_a_connection_error_with_the_offline_options(
        monkeypatch, isolated_cache):
    # a socket bound but not listening: connecting to its port is refused, and no one
    # else can take the port while the test runs
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/tinyshakespeare.txt"
        monkeypatch.setenv(data.URL_ENV, url)
        for call in (lambda: data.shakespeare_text(timeout=5), lambda: load_text("shakespeare")):
            with pytest.raises(ConnectionError) as info:
                call()
            msg = str(info.value)
            assert "builtin" in msg
            assert "path" in msg and ".txt" in msg  # the pass-a-file option
            assert url in msg
    assert _cache_files(isolated_cache) == []


def test_shared_file_is_the_real_tiny_shakespeare(shakespeare_bytes):
    assert len(shakespeare_bytes) == data.SHAKESPEARE_BYTES
    assert hashlib.sha256(shakespeare_bytes).hexdigest() == data.SHAKESPEARE_SHA256


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "mine"))
    assert data.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(data.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "lmwidget"


@pytest.mark.parametrize("text", ["The ratio is 1/2 and that is fine", "I keep my notes.txt here"])
def test_one_line_text_with_a_slash_or_txt_is_text(text):
    assert load_text(text) == text


def test_corpus_names_and_home_paths_are_understood(tmp_path, monkeypatch):
    assert load_text(" builtin\n") == load_text("builtin")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.txt").write_text("hello there", encoding="utf-8")
    assert load_text("~/mine.txt") == "hello there"


def test_ids_outside_the_vocabulary_decode_as_the_replacement_character():
    tok = CharTokenizer.from_text("ab")
    assert tok.decode([0, 1, 2, -1, 99]) == "ab\ufffd\ufffd\ufffd"


def test_ranks_draw_different_blocks_from_generators_that_stay_equal():
    ds = Dataset(load_text("builtin"), 0.1)
    gens = [torch.Generator().manual_seed(5) for _ in range(3)]
    shards = [ds.batch("train", 4, 16, g, shard=(rank, 2)) for rank, g in zip((0, 1), gens)]
    alone = ds.batch("train", 8, 16, gens[2])  # one process with both ranks' batch
    assert not torch.equal(shards[0][0], shards[1][0])
    assert torch.equal(torch.cat([shards[0][0], shards[1][0]]), alone[0])
    assert all(torch.equal(g.get_state(), gens[0].get_state()) for g in gens)
    one = ds.batch("train", 4, 16, torch.Generator().manual_seed(5))  # world size 1: as before
    assert torch.equal(one[0], ds.batch("train", 4, 16, torch.Generator().manual_seed(5), shard=(0, 1))[0])


def test_ids_gives_a_split_as_an_int64_tensor():
    ds = Dataset(_text(1000))
    train = ds.ids("train")
    assert train.dtype == torch.long and train.tolist() == ds.train.tolist()
    assert torch.equal(ds.ids("val"), torch.tensor(ds.val.astype(np.int64)))
