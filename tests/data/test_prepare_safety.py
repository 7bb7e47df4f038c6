"""prepare() never loses data: another tool's files, its own input and a previous token directory
are left whole whatever happens, even a kill midway; and a corpus of one line is read in bounded
memory, into the tokens its lines would give."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import lmwidget
from lmwidget.system import atomic
from lmwidget.data import corpus
from lmwidget.data import tokens
from lmwidget.data.dataset import Dataset

from tests.conftest import SHARED_SHAKESPEARE
from tests.data.test_token_checks import digests

SHAKESPEARE = SHARED_SHAKESPEARE.read_text(encoding="utf-8")
HERE = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(lmwidget.__file__))}  # this lmwidget
TEXT = "to be or not to be, that is the question\n" * 200


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))


def test_a_folder_of_another_tools_token_files_is_refused_and_left_byte_identical(tmp_path):
    nanogpt = tmp_path / "shakespeare_char"  # nanoGPT's layout: its own train.bin, val.bin, meta.pkl
    nanogpt.mkdir()
    for name, size in (("train.bin", 2000), ("val.bin", 200), ("meta.pkl", 300)):
        (nanogpt / name).write_bytes(os.urandom(size))
    before = digests(tmp_path)
    with pytest.raises(ValueError, match=r"holds files lmwidget.prepare did not write \(meta.pkl, train.bin, "
                                         r"val.bin\): they are left as they are"):
        lmwidget.prepare(TEXT, nanogpt, tokenizer="char", progress=False)
    assert digests(tmp_path) == before
    (nanogpt / "meta.pkl").unlink()  # its train.bin and val.bin alone: still not lmwidget's
    before = digests(tmp_path)
    with pytest.raises(ValueError, match=r"did not write \(train.bin, val.bin\)"):
        lmwidget.prepare(TEXT, nanogpt, tokenizer="char", progress=False)
    assert digests(tmp_path) == before
    (nanogpt / "meta.json").write_text('{"vocab": 65}')  # another tool's meta.json
    before = digests(tmp_path)
    with pytest.raises(ValueError, match=r"did not write \(meta.json, train.bin, val.bin\)"):
        lmwidget.prepare(TEXT, nanogpt, tokenizer="char", progress=False)
    assert digests(tmp_path) == before and sorted(set(os.listdir(tmp_path)) - {"cache"}) == ["shakespeare_char"]


def test_only_the_files_lmwidget_did_not_write_are_listed_and_os_litter_is_kept(tmp_path):
    out = lmwidget.prepare(TEXT, tmp_path / "tokens", tokenizer="char", progress=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"did not write \(notes.txt\): they are left"):
        lmwidget.prepare(TEXT, out, tokenizer="char", progress=False)
    (out / "notes.txt").unlink()
    (out / ".DS_Store").write_bytes(b"\x00\x01finder")  # not data: accepted, and never deleted
    (out / ".ipynb_checkpoints").mkdir()
    (out / ".ipynb_checkpoints" / "a-checkpoint.ipynb").write_text("{}")
    lmwidget.prepare("a b c\n" * 100, out, tokenizer="char", progress=False)
    assert (out / ".DS_Store").read_bytes() == b"\x00\x01finder"
    assert (out / ".ipynb_checkpoints" / "a-checkpoint.ipynb").read_text() == "{}"
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / ".DS_Store").write_bytes(b"x")
    lmwidget.prepare(TEXT, lone, tokenizer="char", progress=False)
    assert sorted(os.listdir(lone)) == [".DS_Store", "meta.json", "train.bin", "val.bin"]


def test_an_output_inside_the_input_or_holding_it_is_refused_naming_both(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text(TEXT)
    before = digests(tmp_path)
    with pytest.raises(ValueError, match=rf"out_dir=.*tokens.* is inside the input directory {src}"):
        lmwidget.prepare(src, src / "tokens", tokenizer="char", progress=False)
    with pytest.raises(ValueError, match=rf"is holding the input {src / 'a.txt'}"):
        lmwidget.prepare(src / "a.txt", src, tokenizer="char", progress=False)
    with pytest.raises(ValueError, match=rf"is holding the input {src}"):
        lmwidget.prepare(src, tmp_path, tokenizer="char", progress=False)
    assert digests(tmp_path) == before and sorted(os.listdir(src)) == ["a.txt"]


def test_a_token_directory_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path, monkeypatch):
    out = lmwidget.prepare(TEXT, tmp_path / "tokens", tokenizer="char", progress=False)
    first = Dataset.load(str(out)).tokenizer.vocab_size
    lmwidget.prepare("a b c\n" * 100, out, tokenizer="char", progress=False)
    assert Dataset.load(str(out)).tokenizer.vocab_size == 5 != first
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # no renameat2: renamed aside, then in
    lmwidget.prepare(TEXT, out, tokenizer="char", progress=False)
    assert Dataset.load(str(out)).tokenizer.vocab_size == first
    assert sorted(set(os.listdir(tmp_path)) - {"cache"}) == ["tokens"]
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]


def test_a_previous_directory_left_aside_by_a_crash_between_two_renames_is_put_back(tmp_path, monkeypatch):
    for fcntl in (atomic.fcntl, None):  # with locks, and without (Windows)
        monkeypatch.setattr(atomic, "fcntl", fcntl)
        out = lmwidget.prepare(TEXT, tmp_path / "tokens", tokenizer="char", progress=False)
        before = digests(out)
        aside = tmp_path / ".tokens.old-0a1b2c3d"
        atomic._mark(out)  # what replace_dir does before it renames it aside
        os.rename(out, aside)
        assert atomic.remove_stale_dirs(out) == [] and out.is_dir() and not aside.exists()
        assert digests(out) == before


def test_directories_that_only_look_like_lmwidgets_are_never_removed(tmp_path, monkeypatch):
    out = lmwidget.prepare(TEXT, tmp_path / "tokens", tokenizer="char", progress=False)
    for name in (".tokens.old-my-backup", ".tokens.partial-mine", ".tokens.old-0a1b2c3d", ".tokens.partial-0a1b2c3d",
                 ".tokens.partial-0a1b2c3d9", ".tokens.old-0A1B2C3D"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "precious.txt").write_text(f"mine: {name}")  # no marker of lmwidget's inside
    (tmp_path / ".tokens.old-my-backup" / atomic.MARKER).write_text("1")  # a marker, but not our name
    before = digests(tmp_path)
    for fcntl in (atomic.fcntl, None):
        monkeypatch.setattr(atomic, "fcntl", fcntl)
        lmwidget.prepare(TEXT, out, tokenizer="char", progress=False)
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
        lmwidget.prepare(TEXT, out, tokenizer="char", progress=False)
    after = digests(tmp_path)
    assert {k: v for k, v in after.items() if "precious" in k or "my-backup" in k} == \
           {k: v for k, v in before.items() if "precious" in k or "my-backup" in k}
    assert len([k for k in after if "precious" in k]) == 6


def test_without_fcntl_a_killed_prepares_partial_copy_is_removed_once_its_process_is_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "fcntl", None)
    out = tmp_path / "tokens"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ".tokens.partial-0a1b2c3d"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"\0" * 1000)
    (stale / atomic.MARKER).write_text(dead.stdout)
    live = tmp_path / ".tokens.partial-1a1b2c3d"
    live.mkdir()
    (live / atomic.MARKER).write_text(f"{os.getpid()}\n")  # a writer still alive: kept
    lmwidget.prepare(TEXT, out, tokenizer="char", progress=False)
    assert not stale.exists() and live.exists()
    assert Dataset.load(str(out)).tokenizer.vocab_size > 1


def test_a_failed_second_rename_puts_the_previous_directory_back(tmp_path, monkeypatch):
    out = lmwidget.prepare(TEXT, tmp_path / "tokens", tokenizer="char", progress=False)
    before = digests(out)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    rename, calls = os.rename, []

    def failing(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # the new directory into place
            raise OSError(16, "Device or resource busy")
        return rename(a, b)

    monkeypatch.setattr(atomic.os, "rename", failing)
    with pytest.raises(OSError, match="busy"):
        lmwidget.prepare("a b c\n" * 100, out, tokenizer="char", progress=False)
    monkeypatch.setattr(atomic.os, "rename", rename)
    assert digests(out) == before and sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]
    assert sorted(set(os.listdir(tmp_path)) - {"cache"}) == ["tokens"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_token_directory_keeps_its_mode_or_gets_the_umasks(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = lmwidget.prepare(TEXT, tmp_path / "tokens", tokenizer="char", progress=False)
        assert out.stat().st_mode & 0o777 == 0o777 & ~umask
        out.chmod(0o750)
        lmwidget.prepare(TEXT, out, tokenizer="char", progress=False)
        assert out.stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(old)


def test_an_out_dir_that_is_a_link_is_refused_before_any_training(tmp_path, monkeypatch):
    from lmwidget.data import corpus as corpus_module

    monkeypatch.setattr(corpus_module, "_tokenizer", lambda *a: pytest.fail("trained a tokenizer first"))
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    before = digests(tmp_path)
    with pytest.raises(ValueError, match=rf"out_dir='{tmp_path / 'link'}' is a symbolic link to '{tmp_path / 'real'}': "
                                         rf".*not a link; pass the directory it leads to, {tmp_path / 'real'}"):
        lmwidget.prepare(TEXT, tmp_path / "link", progress=False)
    with pytest.raises(ValueError, match=rf"out_dir='{tmp_path / 'dangling'}' is a symbolic link to "
                                         rf"'{tmp_path / 'nowhere'}', which does not exist"):
        lmwidget.prepare(TEXT, tmp_path / "dangling", progress=False)
    assert digests(tmp_path) == before


def test_an_out_dir_whose_parent_is_not_writable_is_refused_before_any_training(tmp_path, monkeypatch):
    from lmwidget.data import corpus as corpus_module

    monkeypatch.setattr(corpus_module, "_tokenizer", lambda *a: pytest.fail("trained a tokenizer first"))
    mkdir = os.mkdir

    def denied(path, *args, **kwargs):  # as a parent of mode 0555 does (the tests may run as root)
        if os.path.dirname(path) == str(tmp_path / "ro"):
            raise PermissionError(13, "Permission denied", str(path))
        return mkdir(path, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(atomic.os, "mkdir", denied)
    with pytest.raises(ValueError, match=rf"cannot write out_dir='{tmp_path / 'ro' / 'tokens'}': Permission "
                                         rf"denied \({tmp_path / 'ro'}/[^)]*\)\. .*accepted: "
                                         rf"a directory whose parent you can write to"):
        lmwidget.prepare(TEXT, tmp_path / "ro" / "tokens", progress=False)


def test_an_out_dir_that_is_a_mount_point_is_refused_before_any_training(tmp_path, monkeypatch):
    from lmwidget.data import corpus as corpus_module
    from lmwidget.data import tokencheck

    monkeypatch.setattr(corpus_module, "_tokenizer", lambda *a: pytest.fail("trained a tokenizer first"))
    (tmp_path / "mnt").mkdir()
    ismount = os.path.ismount
    monkeypatch.setattr(tokencheck.os.path, "ismount", lambda p: str(p) == str(tmp_path / "mnt") or ismount(p))
    with pytest.raises(ValueError, match=rf"out_dir='{tmp_path / 'mnt'}' is a mount point: .* e.g. {tmp_path / 'mnt' / 'tokens'}"):
        lmwidget.prepare(TEXT, tmp_path / "mnt", progress=False)


KILLED = textwrap.dedent("""
    import pathlib, sys, time
    import lmwidget
    from lmwidget.data import tokenfiles

    write = tokenfiles.TokenWriter.write

    def write_then_hang(self, split, ids, n_bytes=0):
        write(self, split, ids, n_bytes)
        self.files[split].flush()
        pathlib.Path(sys.argv[3]).write_text(str(self.partial))  # it has started writing
        time.sleep(600)

    tokenfiles.TokenWriter.write = write_then_hang
    lmwidget.prepare(sys.argv[1], sys.argv[2], tokenizer="char", progress=False)
""")


def test_a_prepare_killed_midway_leaves_the_previous_directory_whole_and_the_next_one_cleans_up(tmp_path):
    out = lmwidget.prepare(TEXT, tmp_path / "tokens", tokenizer="char", progress=False)
    before, loaded = digests(out), Dataset.load(str(out))
    (tmp_path / "new.txt").write_text("a b c\n" * 1000)
    marker = tmp_path / "started"
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path / "new.txt"), str(out), str(marker)],
                             env=HERE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the preparation never started writing"
        partial = marker.read_text()
        assert os.path.dirname(partial) == str(tmp_path) and os.path.getsize(os.path.join(partial, "train.bin"))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert digests(out) == before  # the previous directory, every byte
    again = Dataset.load(str(out))
    assert np.array_equal(again.train, loaded.train) and again.tokenizer.same_as(loaded.tokenizer)
    assert os.path.isdir(partial)  # what the killed one left, until the next preparation
    lmwidget.prepare(tmp_path / "new.txt", out, tokenizer="char", progress=False)
    assert not os.path.exists(partial) and Dataset.load(str(out)).tokenizer.vocab_size == 5
    assert sorted(set(os.listdir(tmp_path)) - {"cache"}) == ["new.txt", "started", "tokens"]


# -- a corpus without newlines ------------------------------------------------------------------

def test_a_one_line_corpus_gives_the_tokens_of_the_whole_text_whatever_the_blocks(tmp_path, monkeypatch):
    one_line = SHAKESPEARE[:300_000].replace("\n", " ")
    (tmp_path / "one.txt").write_text(one_line)
    tok = tokens.train_bpe(SHAKESPEARE, 300)
    whole = lmwidget.prepare(tmp_path / "one.txt", tmp_path / "whole", tokenizer=tok, progress=False)
    monkeypatch.setattr(corpus, "BLOCK", 4096)  # 74 blocks and no newline: cut before spaces
    small = lmwidget.prepare(tmp_path / "one.txt", tmp_path / "small", tokenizer=tok, progress=False)
    for name in ("train.bin", "val.bin"):
        assert (whole / name).read_bytes() == (small / name).read_bytes()
    meta = json.loads((small / "meta.json").read_text())
    train_text = one_line.encode()[:meta["splits"]["train"]["bytes"]].decode()
    assert np.fromfile(small / "train.bin", "<u2").tolist() == tok.tokenizer.encode(train_text).ids
    assert max(map(len, tokens.pieces(one_line, 1000, spaces=True))) <= 1000  # a text of no newline is still cut
    assert "".join(tokens.pieces(one_line, 1000, spaces=True)) == one_line
    assert all(p.startswith(" ") for p in list(tokens.pieces(one_line, 1000, spaces=True))[1:])  # cut before a space
    no_space = "x" * 5000
    assert [len(p) for p in tokens.pieces(no_space, 1000, spaces=True)] == [1000] * 5  # nor a space: anywhere


def test_a_file_of_one_line_is_handed_on_in_pieces_of_about_a_block(tmp_path, monkeypatch):
    """The file reader never carries a whole line: text8 is one line of 100 MB."""
    monkeypatch.setattr(corpus, "BLOCK", 4096)
    one_line = SHAKESPEARE[:100_000].replace("\n", " ")
    (tmp_path / "one.txt").write_text(one_line)
    got = list(corpus.Corpus(tmp_path / "one.txt").pieces())
    assert max(len(text) for _, text in got) <= 2 * 4096, max(len(text) for _, text in got)
    assert "".join(text for _, text in got) == one_line


PEAK = textwrap.dedent("""
    import sys
    import lmwidget

    def status(key):  # kB
        return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])

    lmwidget.prepare("a b c\\n" * 1000, sys.argv[2] + "-warm", tokenizer="char", progress=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here
    before = status("VmRSS:")
    lmwidget.prepare(sys.argv[1], sys.argv[2], tokenizer="char", progress=False)
    print((status("VmHWM:") - before) / 1024)  # MB above the start
""")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures the peak with Linux's VmHWM")
def test_a_corpus_of_one_line_is_read_in_bounded_memory(tmp_path):
    rng = np.random.default_rng(0)
    words = np.array("the of and to in is that it was for on are with as his they be at one have".split())
    picked = words[rng.integers(0, len(words), 8_000_000)]  # about 30 MB
    seps = np.where(np.arange(len(picked)) % 12 == 11, "\n", " ")
    lines = "".join(np.char.add(picked, seps))
    (tmp_path / "lines.txt").write_text(lines)
    (tmp_path / "one.txt").write_text(lines.replace("\n", " "))  # text8's shape: the same words on one line
    del lines
    peaks = {}
    for name in ("lines", "one"):
        done = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / f"{name}.txt"), str(tmp_path / name)],
                              capture_output=True, text=True, timeout=600, env=HERE)
        assert done.returncode == 0, done.stderr
        peaks[name] = float(done.stdout.split()[-1])
    print(f"peak above the start: lines {peaks['lines']:.1f} MB, one line {peaks['one']:.1f} MB")
    assert peaks["one"] <= max(2 * peaks["lines"], peaks["lines"] + 20), peaks
    one, lines = Dataset.load(str(tmp_path / "one")), Dataset.load(str(tmp_path / "lines"))
    assert len(one.train) == len(lines.train) and len(one.val) == len(lines.val)  # a character each
    for split in ("train", "val"):  # the same characters, a space where the lines had a newline
        first_one = one.tokenizer.codepoints[np.asarray(getattr(one, split)[:1_000_000])]
        first_lines = lines.tokenizer.codepoints[np.asarray(getattr(lines, split)[:1_000_000])]
        assert np.array_equal(np.where(first_lines == ord("\n"), ord(" "), first_lines), first_one)
