"""A token directory or a tokenizer from outside is hostile until checked: token ids past the
vocabulary, file names that leave the directory and malformed meta.json are refused before any
thread starts, naming the file, and leave every byte as it was."""

import hashlib
import json
import os
import re
import threading

import numpy as np
import pytest

import lmwidget
from lmwidget.data import tokens
from lmwidget.data.dataset import Dataset
from lmwidget.data.tokencheck import DIGEST, META_LIMIT, meta_digest

from tests.conftest import TINY

TEXT = "to be or not to be, that is the question\n" * 200


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def chars(tmp_path):
    return lmwidget.prepare(TEXT, tmp_path / "chars", tokenizer="char", progress=False)


def digests(directory):
    """Every file below `directory` (links not followed), by its SHA-256; lmwidget's cache (the
    tests keep it in <tmp_path>/cache) left out."""
    out = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not (root == str(directory) and d == "cache")]
        for name in files:
            path = os.path.join(root, name)
            out[path] = os.readlink(path) if os.path.islink(path) else hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def edit(out, change, sign=True):
    """Change meta.json with `change(meta)`; `sign`: recompute its digest, as a forger would."""
    meta = json.loads((out / "meta.json").read_text())
    change(meta)
    if sign:
        meta[DIGEST] = meta_digest(meta)
    else:
        meta.pop(DIGEST, None)
    (out / "meta.json").write_text(json.dumps(meta))


def refused(out, message, train=False):
    """Loading `out` raises ValueError matching `message` and naming a file; nothing is changed."""
    before = digests(out.parent)
    threads = {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError, match=message) as info:
        if train:
            lmwidget.train(data=str(out), display=False, **TINY)
        else:
            Dataset.load(str(out))
    assert str(out) in str(info.value) or str(out.resolve()) in str(info.value)
    assert digests(out.parent) == before
    assert not [t for t in threading.enumerate() if t.name.startswith("lmwidget-run") and t.name not in threads]
    return str(info.value)


# -- token ids against the vocabulary ------------------------------------------------------------

def test_ids_past_the_vocabulary_in_an_older_meta_json_are_found_by_reading_the_file(chars):
    meta = json.loads((chars / "meta.json").read_text())
    vocab = meta["vocab_size"]
    bad = np.zeros(meta["splits"]["train"]["tokens"], "<u2")
    bad[-1] = vocab + 5  # drawn only by the step that happens to reach it
    (chars / "train.bin").write_bytes(bad.tobytes())
    edit(chars, lambda m: [s.pop("max_id") for s in m["splits"].values()], sign=False)  # as 0.2 wrote it
    text = refused(chars, rf"train.bin: it holds token id {vocab + 5}, but its tokenizer, characters "
                          rf"\({vocab}\), has ids 0 to {vocab - 1} \(vocabulary size {vocab}\)", train=True)
    assert "prepare the directory again" in text


def test_a_recorded_largest_id_that_differs_from_the_file_is_refused_naming_both(chars):
    meta = json.loads((chars / "meta.json").read_text())
    top = meta["splits"]["val"]["max_id"]
    edit(chars, lambda m: m["splits"]["val"].update(max_id=top - 1))
    refused(chars, rf"val.bin holds ids up to {top}, but its meta.json records max_id = {top - 1}: the two do "
                   rf"not belong together", train=True)


def test_a_meta_json_changed_after_prepare_wrote_it_is_refused(chars):
    edit(chars, lambda m: m["splits"]["train"].update(max_id=0), sign=False)
    meta = json.loads((chars / "meta.json").read_text())
    meta[DIGEST] = "0" * 64
    (chars / "meta.json").write_text(json.dumps(meta))
    refused(chars, "does not match its meta_sha256 .*changed after lmwidget.prepare wrote it")


def test_prepare_records_each_splits_largest_id_under_the_digest(chars):
    meta = json.loads((chars / "meta.json").read_text())
    for split, name in (("train", "train.bin"), ("val", "val.bin")):
        assert meta["splits"][split]["max_id"] == int(np.fromfile(chars / name, "<u2").max())
    assert meta[DIGEST] == meta_digest(meta)


def test_a_forged_meta_json_with_a_low_max_id_is_refused_before_any_thread_starts(chars, monkeypatch):
    """meta_sha256 is a plain hash anyone can compute: the ids are read from the files themselves."""
    meta = json.loads((chars / "meta.json").read_text())
    vocab, n = meta["vocab_size"], meta["splits"]["train"]["tokens"]
    bad = np.zeros(n, "<u2")
    bad[n // 2] = vocab + 3
    (chars / "train.bin").write_bytes(bad.tobytes())
    edit(chars, lambda m: m["splits"]["train"].update(max_id=0))  # re-digested, as a forger would
    text = refused(chars, rf"train.bin: it holds token id {vocab + 3}, but its tokenizer", train=True)
    assert "was changed after" not in text


def scans(monkeypatch):
    """The list of files tokencheck.largest_id reads, as they are read."""
    from lmwidget.data import tokenfiles

    read, seen = tokenfiles.largest_id, []
    monkeypatch.setattr(tokenfiles, "largest_id", lambda file, *a: seen.append(file.name) or read(file, *a))
    return seen


def test_each_split_is_read_once_then_its_largest_id_is_known_until_the_file_changes(tmp_path, monkeypatch):
    seen = scans(monkeypatch)
    out = lmwidget.prepare(TEXT, tmp_path / "chars", tokenizer="char", progress=False)
    Dataset.load(str(out))
    assert seen == []  # prepare seeded the cache with what it wrote
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache" / "second"))  # a cache of its own: read once
    Dataset.load(str(out))
    Dataset.load(str(out))
    assert seen == ["train.bin", "val.bin"]
    os.utime(out / "train.bin")  # touched: its ctime changes, whatever times are set
    Dataset.load(str(out))
    assert seen == ["train.bin", "val.bin", "train.bin"]
    meta = json.loads((out / "meta.json").read_text())
    bad = np.full(meta["splits"]["train"]["tokens"], meta["vocab_size"], "<u2")
    (out / "train.bin").write_bytes(bad.tobytes())  # changed in place, of the same size
    refused(out, rf"train.bin: it holds token id {meta['vocab_size']}, but")


def test_a_cache_entry_copied_from_elsewhere_does_not_vouch_for_a_file(tmp_path, monkeypatch):
    seen = scans(monkeypatch)
    out = lmwidget.prepare(TEXT, tmp_path / "chars", tokenizer="char", progress=False)
    entries = sorted((tmp_path / "cache" / "token-ids").glob("*.json"))
    assert len(entries) == 2
    copy = tmp_path / "copy"
    os.system(f"cp -a {out} {copy}")  # the same times, the same sizes: not the same ctime or inode
    Dataset.load(str(copy))
    assert seen == ["train.bin", "val.bin"]


def test_a_tokenizer_that_misreports_its_size_is_refused_before_any_thread_starts(monkeypatch):
    from lmwidget.data.tokencheck import check_encoded

    tok = tokens.train_bpe(TEXT, 280)
    monkeypatch.setattr(type(tok), "vocab_size", property(lambda self: 260))  # ids up to 299 given
    with pytest.raises(ValueError, match=r"the tokenizer byte-level BPE \(260\) gave token id 2\d\d for this "
                                         r"text, past the vocabulary size 260 it reports"):
        Dataset(TEXT, tokenizer=tok)
    check_encoded(tok, np.array([259], "<u2"), np.empty(0, "<u2"))  # within it: accepted


def word_level(vocab, added=()):
    t = pytest.importorskip("tokenizers")
    state = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added),
             "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
             "decoder": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}}
    return json.dumps(state), t


def test_a_vocabulary_is_sized_by_its_largest_id_not_its_count():
    text, t = word_level({"[UNK]": 0, "to": 1, "be": 7})
    gapped = tokens.load(t.Tokenizer.from_str(text))
    assert gapped.tokenizer.get_vocab_size() == 3 and gapped.vocab_size == 8
    repeated = text.replace('"to": 1', '"to": 1, "to": 4')  # the last one wins: ids 0, 4, 7
    assert tokens.load(t.Tokenizer.from_str(repeated)).vocab_size == 8
    bpe = t.Tokenizer(t.models.BPE(vocab={"a": 0, "b": 1, "ab": 30}, merges=[("a", "b")]))
    assert bpe.get_vocab_size() == 3 and tokens.load(bpe).vocab_size == 31  # BPE: the same
    huge, _ = word_level({"[UNK]": 0, "to": tokens.MAX_VOCAB})
    with pytest.raises(ValueError, match=f"has a token of id {tokens.MAX_VOCAB:,}: a model would need"):
        tokens.load(t.Tokenizer.from_str(huge))


def test_a_tiny_tokenizer_demanding_a_huge_vocabulary_is_refused_naming_the_file(tmp_path):
    text, t = word_level({"[UNK]": 0, "to": 4_000_000})
    (tmp_path / "tokenizer.json").write_text(text)
    assert len(text) < 400
    with pytest.raises(ValueError) as info:
        tokens.load(tmp_path / "tokenizer.json")
    assert str(info.value).startswith(f"{tmp_path / 'tokenizer.json'} has 2 tokens but a token of id 4,000,000: "
                                      "a model would need 4,000,001 rows of embeddings"), info.value
    assert "Accepted: ids below 1,028 for 2 tokens" in str(info.value)
    edge, _ = word_level({"[UNK]": 0, "to": 1, "be": 2 * 3 + tokens.GAP_SLACK - 1})  # the most accepted
    assert tokens.load(t.Tokenizer.from_str(edge)).vocab_size == 2 * 3 + tokens.GAP_SLACK


def test_a_run_with_a_gapped_vocabulary_trains_past_the_steps_that_draw_its_largest_id():
    text, t = word_level({"[UNK]": 0, "to": 1, "or": 2, "not": 3, "be": 40})
    run = lmwidget.train(data="to be or not to be " * 300, tokenizer=t.Tokenizer.from_str(text), display=False,
                         **{**TINY, "max_steps": 20, "block_size": 8})
    assert run.wait(120) and run.state == "finished", run.error
    assert run.dataset.vocab_size == 41


def test_a_tokenizer_saved_as_json_that_does_not_parse_is_refused_naming_where():
    for state, message in [({"json": '{"a": 1}'}, r"is no tokenizer the tokenizers library reads \("),
                           ({"json": 5}, r"is \{'json': 5\}; expected an object with \"json\""),
                           ("text", r"is 'text'; expected an object"),
                           ({"vocab": ["ab", 3]}, r"has the character vocabulary \['ab', 3\]; expected"),
                           ({"vocab": ["a", "a"]}, "distinct single characters")]:
        with pytest.raises(ValueError, match=message) as info:
            tokens.restored(state if "json" not in state else {"tokenizer": state}, "checkpoint run/step-10.pt")
        assert "checkpoint run/step-10.pt" in str(info.value)


def test_a_malformed_tokenizer_in_a_checkpoint_is_refused_naming_the_checkpoint():
    from lmwidget.checkpoint import saving as checkpoint

    with pytest.raises(ValueError, match=r"^the tokenizer in checkpoint run/step-10.pt has the character vocabulary "
                                         r"\['ab'\]; expected a non-empty list of distinct single characters"):
        checkpoint.tokenizer_of({"path": "run/step-10.pt", "vocab": ["ab"]})


# -- files that leave the directory -------------------------------------------------------------

@pytest.mark.parametrize("name", ["../outside.bin", "sub/../../outside.bin", "ABSOLUTE", "../../../etc/passwd",
                                  "", "."])
@pytest.mark.parametrize("sign", [True, False])
def test_a_split_file_named_outside_the_directory_is_refused(chars, name, sign):
    outside = chars.parent / "outside.bin"
    outside.write_bytes(np.zeros(1000, "<u2").tobytes())
    name = str(outside) if name == "ABSOLUTE" else name
    edit(chars, lambda m: m["splits"]["train"].update(file=name, tokens=1000, max_id=0), sign)
    text = refused(chars, r"meta.json names splits.train.file ")
    assert repr(name) in text and "accepted: the name of a file inside the directory" in text


def test_a_split_file_or_meta_json_linked_outside_the_directory_is_refused(chars, tmp_path):
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes((chars / "train.bin").read_bytes())
    (chars / "train.bin").unlink()
    (chars / "train.bin").symlink_to(outside)
    refused(chars, r"names splits.train.file 'train.bin', which leads to '.*elsewhere.bin', outside")
    (chars / "train.bin").unlink()
    (chars / "train.bin").write_bytes(outside.read_bytes())
    (tmp_path / "meta-elsewhere.json").write_bytes((chars / "meta.json").read_bytes())
    (chars / "meta.json").unlink()
    (chars / "meta.json").symlink_to(tmp_path / "meta-elsewhere.json")
    refused(chars, r"meta.json is a link to '.*meta-elsewhere.json', outside the directory")


def test_a_split_file_linked_inside_the_directory_is_read(chars):
    (chars / "copy.bin").write_bytes((chars / "train.bin").read_bytes())
    (chars / "train.bin").unlink()
    (chars / "train.bin").symlink_to("copy.bin")
    assert len(Dataset.load(str(chars)).train) == json.loads((chars / "meta.json").read_text())["splits"]["train"]["tokens"]


# -- malformed meta.json ------------------------------------------------------------------------

def splits(value):
    return lambda m: m.update(splits=value)


def train_field(key, value):
    return lambda m: m["splits"]["train"].update({key: value})


MALFORMED = {
    "a string": '"meta"', "a number": "42", "a list": "[1, 2]", "null": "null",
    "nested 100000 deep": "[" * 100_000 + "]" * 100_000,
    "nested objects": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "an integer of 5000 digits": '{"format": "lmwidget-tokens", "version": ' + "9" * 5000 + "}",
    "not UTF-8": b'{"format": "\xff\xfe"}', "cut short": '{"format": "lmwidget-tokens", "spl',
    "no splits": lambda m: m.pop("splits"), "splits a list": splits([1, 2]), "no val": lambda m: m["splits"].pop("val"),
    "a split a string": splits({"train": "train.bin", "val": "val.bin"}),
    "negative tokens": train_field("tokens", -2), "huge tokens": train_field("tokens", 10 ** 30),
    "tokens a string": train_field("tokens", "12"), "tokens a float": train_field("tokens", 12.0),
    "tokens true": train_field("tokens", True), "bytes null": train_field("bytes", None),
    "negative max_id": train_field("max_id", -1), "file a number": train_field("file", 3),
    "file null": train_field("file", None), "file a list": train_field("file", ["train.bin"]),
    "no file": lambda m: m["splits"]["train"].pop("file"),
    "dtype a list": lambda m: m.update(dtype=["uint16"]), "dtype float32": lambda m: m.update(dtype="float32"),
    "vocab_size a string": lambda m: m.update(vocab_size="40"), "vocab_size 0": lambda m: m.update(vocab_size=0),
    "version a string": lambda m: m.update(version="1"), "version 99": lambda m: m.update(version=99),
    "no format": lambda m: m.pop("format"), "format a list": lambda m: m.update(format=[1]),
    "sha256 a number": lambda m: m.update(sha256=7), "no tokenizer": lambda m: m.pop("tokenizer"),
    "tokenizer a string": lambda m: m.update(tokenizer="char"),
    "vocab of numbers": lambda m: m.update(tokenizer={"vocab": [1, 2, 3]}),
    "tokenizer json that does not parse": lambda m: m.update(tokenizer={"vocab": [], "tokenizer": {"json": "{"}}),
    "tokenizer json a number": lambda m: m.update(tokenizer={"vocab": [], "tokenizer": {"json": 3}}),
}


@pytest.mark.parametrize("variant", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_meta_json_is_refused_naming_it(chars, variant):
    change = MALFORMED[variant]
    if callable(change):
        edit(chars, change)
    else:
        (chars / "meta.json").write_bytes(change if isinstance(change, bytes) else change.encode())
    text = refused(chars, ".")
    assert str(chars / "meta.json") in text or "train.bin" in text, text
    assert "Traceback" not in text and len(text) < 1000
    assert re.search(r"expected|accepted|Prepare the directory again|prepare the directory again|prepare it "
                     r"again|upgrade lmwidget|with lmwidget.prepare", text), text  # what is accepted, or what to do
    found = {"negative tokens": "splits.train.tokens = -2",
             "tokens a string": "splits.train.tokens = '12'", "tokens a float": "splits.train.tokens = 12.0",
             "bytes null": "splits.train.bytes = None", "negative max_id": "splits.train.max_id = -1",
             "file a number": "splits.train.file = 3", "dtype a list": "dtype ['uint16']",
             "dtype float32": "dtype 'float32'", "vocab_size 0": "vocab_size = 0", "version 99": "version 99",
             "version a string": "version = '1'", "no splits": "no splits", "no file": "no splits.train.file",
             "sha256 a number": "sha256 = 7", "no tokenizer": "no tokenizer", "a list": "it holds [1, 2]",
             "nested 100000 deep": "nests its values too deep", "not UTF-8": "is not UTF-8",
             "cut short": "is not readable JSON", "tokenizer a string": "tokenizer = 'char'; expected an object",
             "vocab of numbers": "character vocabulary [1, 2, 3]", "format a list": "\"format\" is [1]"}
    if variant in found:
        assert found[variant] in text, text


def test_a_meta_json_over_the_limit_is_refused_unread(chars):
    with open(chars / "meta.json", "r+b") as f:
        f.truncate(META_LIMIT + 1)  # sparse: nothing to read, and it is not read
    refused(chars, rf"meta.json has {META_LIMIT + 1:,} bytes, more than the 64 MiB such a file can need: it was not read")


META_PEAK = """
import sys
from lmwidget.data.tokencheck import read_meta

def status(key):  # kB
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from here
before = status("VmRSS:")
try:
    read_meta(sys.argv[1])
except ValueError as e:
    print(e, file=sys.stderr)
print((status("VmHWM:") - before) / 1024)  # MB above the start
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures the peak with Linux's VmHWM")
def test_a_meta_json_of_millions_of_values_is_refused_before_it_is_parsed(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "hostile"
    out.mkdir()
    (out / "meta.json").write_bytes(b"[" + b"{}," * 21_000_000 + b"{}]")  # 63 MB, under META_LIMIT
    assert (out / "meta.json").stat().st_size <= META_LIMIT
    done = subprocess.run([sys.executable, "-c", META_PEAK, str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(lmwidget.__file__))})
    assert done.returncode == 0, done.stderr
    assert f"{out / 'meta.json'} opens or separates more than 4,194,304 JSON values" in done.stderr, done.stderr
    assert "it was not parsed; expected the meta.json that lmwidget.prepare writes" in done.stderr
    peak = float(done.stdout.split()[-1])
    print(f"refused for {peak:.1f} MB above the start")
    assert peak < 40, f"{peak:.1f} MB to refuse it"
