"""Token directories: training memory-maps them, resumes from them, refuses broken ones; and
the in-memory corpus' compact tokens."""

import json
import math
import threading
import tracemalloc

import numpy as np
import pytest
import torch

import lmwidget
from lmwidget.data.dataset import Dataset
from lmwidget.data.text import builtin_text
from lmwidget.data.tokenfiles import TokenWriter, dtype_for

from tests.conftest import SHARED_SHAKESPEARE, TINY


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return lmwidget.prepare(SHARED_SHAKESPEARE, tmp_path_factory.mktemp("tok") / "bpe", vocab_size=400,
                            progress=False)


def train(**options):
    run = lmwidget.train(display=False, **{**TINY, "max_steps": 30, "eval_interval": 10, **options})
    assert run.wait(120) and run.state == "finished", run.error
    return run


def test_a_run_trains_from_the_memory_mapped_files(bpe_dir, tmp_path):
    run = train(data=str(bpe_dir), checkpoint_dir=tmp_path)
    assert isinstance(run.dataset.train, np.memmap)  # never loaded: batches read only their blocks
    assert run.tokenizer.describe() == "byte-level BPE (400)" and run.describe()["tokenizer"] == "byte-level BPE (400)"
    meta = json.loads((bpe_dir / "meta.json").read_text())
    bpt = meta["splits"]["train"]["bytes"] / meta["splits"]["train"]["tokens"]
    h = run.history
    assert np.allclose(h["bpb"], h["loss"] / math.log(2) / bpt)
    text = run.sample()  # decoded with the directory's tokenizer
    assert isinstance(text, str) and text
    # resume: the same directory continues; a directory prepared otherwise is refused
    path = run.save()
    resumed = lmwidget.train(resume=path, max_steps=40, display=False)
    assert resumed.wait(120) and resumed.state == "finished" and resumed.step == 40
    other = lmwidget.prepare(SHARED_SHAKESPEARE, tmp_path / "other", vocab_size=300, progress=False)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["config"]["data"] == str(bpe_dir)
    with pytest.raises(ValueError, match="is not the one token directory"):
        Dataset.load(str(other), tokenizer=lmwidget.checkpoint.saving.tokenizer_of(ckpt))


def test_batches_from_a_memory_map_equal_those_in_memory(bpe_dir):
    mapped = Dataset.load(str(bpe_dir))
    in_memory = Dataset.from_tokens(np.array(mapped.train), np.array(mapped.val), mapped.tokenizer,
                                    mapped.bytes_per_token, "x")
    for split in ("train", "val"):
        a = mapped.batch(split, 8, 64, torch.Generator().manual_seed(3))
        b = in_memory.batch(split, 8, 64, torch.Generator().manual_seed(3))
        assert all(torch.equal(u, v) and u.dtype == torch.long for u, v in zip(a, b))


def test_memory_mapped_tokens_stay_on_disk_and_batches_go_to_the_device(bpe_dir):
    moved = Dataset.load(str(bpe_dir)).to("meta")  # as to a GPU: the files are not loaded there
    assert isinstance(moved.train, np.memmap)
    x, y = moved.batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert x.device.type == "meta" and y.device.type == "meta" and x.dtype == torch.long


def broken(bpe_dir, tmp_path, change):
    """A copy of the token directory, then `change` applied to it."""
    import shutil

    out = tmp_path / "broken"
    shutil.copytree(bpe_dir, out)
    change(out)
    return out


def _edit_meta(out, **fields):
    meta = json.loads((out / "meta.json").read_text())
    meta.update(fields)
    (out / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "meta.json").unlink(), "is a directory but not a token directory: it has no meta.json"),
    (lambda d: (d / "train.bin").unlink(), "has no train.bin"),
    (lambda d: (d / "val.bin").write_bytes((d / "val.bin").read_bytes()[:-2]),
     r"val.bin has [\d,]+ bytes but meta.json lists [\d,]+ uint16 tokens"),
    (lambda d: (d / "meta.json").write_text("{not json"), "is not readable JSON"),
    (lambda d: _edit_meta(d, format="other"), "is not the meta.json of an lmwidget token directory"),
    (lambda d: _edit_meta(d, dtype="int64"), "has dtype 'int64'; expected 'uint16' or 'uint32'"),
    (lambda d: _edit_meta(d, vocab_size=500), "its tokenizer has 400 tokens but the file says vocab_size=500"),
])
def test_a_broken_token_directory_is_refused_before_any_thread_starts(bpe_dir, tmp_path, change, message):
    out = broken(bpe_dir, tmp_path, change)
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError, match=message):
        lmwidget.train(data=str(out), display=False, **TINY)
    assert {t.name for t in threading.enumerate()} - before == set()


def test_options_that_cannot_apply_to_a_token_directory_are_refused(bpe_dir):
    with pytest.raises(ValueError, match="tokenizer='word' cannot apply to token directory"):
        lmwidget.train(data=str(bpe_dir), tokenizer="word", display=False, **TINY)
    with pytest.raises(ValueError, match="vocab_size=300 cannot apply to token directory"):
        lmwidget.train(data=str(bpe_dir), vocab_size=300, display=False, **TINY)


def test_an_interrupted_preparation_is_not_a_token_directory(tmp_path):
    writer = TokenWriter(tmp_path / "tokens", 300)
    writer.write("train", np.arange(100), 200)
    writer.abort()
    with pytest.raises(ValueError, match="has no meta.json"):
        Dataset.load(str(tmp_path / "tokens"))
    assert dtype_for(65_536) == np.uint16 and dtype_for(65_537) == np.uint32


def test_an_in_memory_corpus_costs_at_most_4_bytes_a_character():
    """uint16 tokens made a piece at a time: 0.1 held a Python list and int64 tensors (about
    18 bytes a character at its peak)."""
    text = builtin_text() * 10  # 4.7 M characters
    tracemalloc.start()
    try:
        data = Dataset(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data.train.dtype == np.uint16 and data.train.base is data.val.base  # one array, two views
    assert peak / len(text) <= 4, f"{peak / len(text):.2f} bytes a character at the peak"
    assert data.tokenizer.decode(data.val[:50]) == text[len(text) - len(data.val):][:50]
