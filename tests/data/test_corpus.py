"""prepare(): text files, directories of them, datasets and texts tokenized in pieces into
token directories; the command line; its progress bar."""

import json
import subprocess
import sys

import numpy as np
import pytest

import lmwidget
from lmwidget.data import corpus
from lmwidget.data import tokens
from lmwidget.data.chars import CharTokenizer
from lmwidget.data.dataset import Dataset
from lmwidget.data.dataset import open_dir
from lmwidget.data.tokenfiles import read_meta

from tests.conftest import SHARED_SHAKESPEARE

SHAKESPEARE = SHARED_SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))


def decoded(ds) -> tuple[str, str]:
    return ds.tokenizer.decode(ds.train), ds.tokenizer.decode(ds.val)


def test_a_text_file_becomes_uint16_tokens_that_decode_to_it(tmp_path):
    out = lmwidget.prepare(SHARED_SHAKESPEARE, tmp_path / "tokens", vocab_size=400, progress=False)
    meta = read_meta(out)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 400
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    ds = open_dir(out)
    assert isinstance(ds.train, np.memmap) and ds.train.dtype == np.uint16
    assert (out / "train.bin").stat().st_size == 2 * meta["splits"]["train"]["tokens"]
    train, val = decoded(ds)
    assert train + val == SHAKESPEARE  # byte-level BPE is lossless, and nothing is lost or doubled
    n_bytes = len(SHAKESPEARE.encode())
    assert meta["splits"]["val"]["bytes"] == len(val.encode()) == n_bytes - (n_bytes - int(n_bytes * 0.1))
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == n_bytes
    # the tokenizer learnt the training split only, as train(tokenizer="bpe") would
    assert ds.tokenizer.same_as(tokens.train_bpe(SHAKESPEARE[: len(train)], 400))


def test_reading_in_small_blocks_changes_nothing(tmp_path, monkeypatch):
    whole = lmwidget.prepare(SHARED_SHAKESPEARE, tmp_path / "whole", vocab_size=300, progress=False)
    monkeypatch.setattr(corpus, "BLOCK", 4096)  # 270 blocks: the pieces end at whole lines
    small = lmwidget.prepare(SHARED_SHAKESPEARE, tmp_path / "small", vocab_size=300, progress=False)
    for name in ("train.bin", "val.bin"):
        assert (whole / name).read_bytes() == (small / name).read_bytes()
    assert read_meta(whole)["sha256"] == read_meta(small)["sha256"]


def test_characters_match_the_in_memory_dataset(tmp_path):
    out = lmwidget.prepare(SHARED_SHAKESPEARE, tmp_path / "chars", tokenizer="char", progress=False)
    on_disk, in_memory = open_dir(out), Dataset(SHAKESPEARE)  # ASCII: bytes and characters agree
    assert isinstance(on_disk.tokenizer, CharTokenizer) and on_disk.tokenizer.same_as(in_memory.tokenizer)
    assert np.array_equal(on_disk.train, in_memory.train) and np.array_equal(on_disk.val, in_memory.val)
    assert on_disk.bytes_per_token == {"train": 1.0, "val": 1.0}


def test_a_directory_of_files_in_name_order_skipping_hidden_ones(tmp_path):
    src = tmp_path / "corpus"
    (src / "b").mkdir(parents=True)
    (src / ".git").mkdir()
    parts = {"a.txt": "first file\n" * 300, "b/c.txt": "second, nested\n" * 300, "d.md": "third é ü\n" * 300}
    for name, text in parts.items():
        (src / name).write_text(text, encoding="utf-8")
    (src / ".git" / "HEAD").write_text("not corpus\n")
    (src / ".hidden.txt").write_text("not corpus either\n")
    out = lmwidget.prepare(src, tmp_path / "tokens", tokenizer="char", progress=False)
    train, val = decoded(open_dir(out))
    assert train + val == "".join(parts[k] for k in sorted(parts))
    assert read_meta(out)["source"] == f"{src} (3 files)"


def test_a_hugging_face_dataset_by_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    lines = [line for line in SHAKESPEARE.splitlines() if line][:2000]
    ds = datasets.Dataset.from_dict({"text": lines, "id": list(range(len(lines)))})
    out = lmwidget.prepare(ds, tmp_path / "tokens", vocab_size=300, progress=False)
    train, val = decoded(open_dir(out))
    assert val.splitlines() == lines[1800:] and train.splitlines() == lines[:1800]  # the last 10% of rows
    words = lmwidget.prepare(ds, tmp_path / "words", tokenizer="word", vocab_size=800, progress=False)
    assert read_meta(words)["vocab_size"] == 800 and open_dir(words).tokenizer.kind == "word"
    with pytest.raises(ValueError, match=r"text_column='body' is not a column of this dataset; its columns: 'text', 'id'"):
        lmwidget.prepare(ds, tmp_path / "x", text_column="body", progress=False)
    with pytest.raises(TypeError, match="streaming dataset"):
        lmwidget.prepare(ds.to_iterable_dataset(), tmp_path / "x", progress=False)


def test_a_vocabulary_past_65536_is_stored_as_uint32(tmp_path):
    chars = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000)
    text = (chars + "\n") * 2
    out = lmwidget.prepare(text, tmp_path / "tokens", tokenizer="char", progress=False)
    ds = open_dir(out)
    assert read_meta(out)["dtype"] == "uint32" and ds.train.dtype == np.uint32
    assert ds.vocab_size == len(set(text)) > 65_536 and "".join(decoded(ds)) == text
    assert Dataset(text).train.dtype == np.uint32  # in memory too


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 10)
    cases = [
        (dict(data=tmp_path / "latin1.txt"), ValueError, r"latin1.txt is not UTF-8 text \(invalid"),
        (dict(data="no/such/file.txt"), ValueError, "neither a corpus name nor an existing file"),
        (dict(data=SHARED_SHAKESPEARE, tokenizer="sentencepiece"), ValueError, "unknown tokenizer 'sentencepiece'"),
        (dict(data=SHARED_SHAKESPEARE, vocab_size=100), ValueError, "too small for byte-level BPE"),
        (dict(data="to be or not to be\n" * 20, vocab_size=5000), ValueError, "larger than this corpus allows"),
        (dict(data=SHARED_SHAKESPEARE, val_fraction=1.0), ValueError, "val_fraction must be between 0 and 1"),
    ]
    for i, (options, error, message) in enumerate(cases):
        with pytest.raises(error, match=message):
            lmwidget.prepare(out_dir=tmp_path / f"out{i}", progress=False, **options)
        assert not (tmp_path / f"out{i}" / "meta.json").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no files to prepare"):
        lmwidget.prepare(tmp_path / "empty", tmp_path / "out", progress=False)
    done = lmwidget.prepare("to be or not to be\n" * 50, tmp_path / "done", tokenizer="char", progress=False)
    with pytest.raises(ValueError, match="is a token directory already"):
        lmwidget.prepare(done, tmp_path / "again", progress=False)


def test_the_command_line_shows_progress_in_bytes_per_second(tmp_path):
    out = tmp_path / "tokens"
    done = subprocess.run([sys.executable, "-m", "lmwidget", "prepare", str(SHARED_SHAKESPEARE), str(out),
                           "--vocab-size", "300"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert f"train {meta['splits']['train']['tokens']:,} tokens" in done.stdout
    assert "tokenizing" in done.stderr and "B/s" in done.stderr  # tqdm: MB/s (or kB/s)
    bad = subprocess.run([sys.executable, "-m", "lmwidget", "prepare", str(tmp_path / "missing.txt"), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: data=" in bad.stderr and "Traceback" not in bad.stderr
