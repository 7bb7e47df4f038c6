"""Files written whole or not at all: a full disk named as such with nothing left behind, and
the temporaries of killed saves removed by the next save, never those of a save in progress."""

import errno
import os
import re
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path

import pytest
import torch

import lmwidget
from lmwidget.system import atomic
from lmwidget.checkpoint import saving as checkpoint

from tests.conftest import TINY, scaled

REPO = Path(__file__).resolve().parents[2]


def test_a_full_disk_is_named_and_leaves_no_temporary(tmp_path, monkeypatch):
    """The checkpoint's temporary is /dev/full, so every write to it fails as on a full disk
    (ENOSPC from the kernel), through torch.save itself."""
    path = tmp_path / "run.pt"
    checkpoint.write({"format": "old"}, path)
    before = path.read_bytes()

    def full(dir, prefix, suffix):
        fd, name = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(atomic, "tempfile", types.SimpleNamespace(mkstemp=full))
    with pytest.raises(OSError) as error:
        checkpoint.write({"format": "new", "w": torch.zeros(100_000)}, path)
    assert error.value.errno == errno.ENOSPC
    assert re.fullmatch(
        re.escape(f"[Errno 28] no space left on device: {path} was not written (0 bytes of it were "
                  f"written first, then removed). Any earlier run.pt is unchanged; ")
        + r"[\d,]+ bytes are free there now: free some space, or write it elsewhere, and try again",
        str(error.value)), str(error.value)
    assert os.listdir(tmp_path) == ["run.pt"] and path.read_bytes() == before


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (only where this process may mount one: as root, with the capability)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_save_onto_a_disk_that_fills_up_says_so(small_disk):
    """A real full disk: torch reports it as "unexpected pos"; the message says what it is."""
    run = lmwidget.train(display=False, max_steps=2, **{**TINY, "n_embd": 64})
    assert run.wait(120)
    (small_disk / "filler").write_bytes(b"x" * ((1 << 20) - (128 << 10)))  # 128 KiB left
    target = small_disk / "run.pt"
    with pytest.raises(OSError) as error:
        run.save(target)
    assert re.fullmatch(
        re.escape(f"[Errno 28] no space left on device: {target} was not written (") + r"[1-9][\d,]* "
        + re.escape("bytes of it were written first, then removed). Any earlier run.pt is unchanged; ")
        + r"[\d,]+ bytes are free there now: free some space, or write it elsewhere, and try again",
        str(error.value)), str(error.value)
    assert os.listdir(small_disk) == ["filler"]


KILLED = r"""
import sys, threading, time
from lmwidget.checkpoint import saving as checkpoint

def half(payload, f):
    f.write(b"PK\x03\x04 half a checkpoint")
    f.flush()
    print("HALF", flush=True)
    time.sleep(60)

checkpoint.torch.save = half
for path in sys.argv[1:]:
    threading.Thread(target=checkpoint.write, args=({"format": "x"}, path)).start()
"""


def killed_saves(*paths: Path) -> list[Path]:
    """The temporaries that saves to `paths` leave when their process is killed (SIGKILL)
    mid-write."""
    child = subprocess.Popen([sys.executable, "-c", KILLED, *map(str, paths)], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        halves = 0  # one "HALF" a save; the saves' threads may print them on one line
        while halves < len(paths):
            line = child.stdout.readline()
            assert line and set(line.split("HALF")) <= {"", "\n"}, (line, child.stderr.read())
            halves += line.count("HALF")
    finally:
        child.kill()
        child.wait(scaled(30))
    return [next(p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))
            for path in paths]


def test_the_temporaries_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    stale = killed_saves(*(tmp_path / name for name in ("step-0000010.pt", "best.pt", "mine.pt")))
    others = [tmp_path / ".notes.txt.abcd1234.tmp", tmp_path / "x.tmp", tmp_path / ".cache"]
    for p in others:
        p.write_text("not lmwidget's")
    checkpoint.write({"format": "x"}, tmp_path / "step-0000020.pt")
    assert not stale[0].exists() and not stale[1].exists()  # of the checkpoints lmwidget names
    assert stale[2].exists()  # a name of the user's own is only lmwidget's when saved to again
    checkpoint.write({"format": "x"}, tmp_path / "mine.pt")
    assert not stale[2].exists() and all(p.exists() for p in others)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".pt")) == [
        "mine.pt", "step-0000020.pt"]


def test_a_save_in_progress_keeps_its_temporary_while_another_save_cleans_up(tmp_path, monkeypatch):
    real_save, started, go = torch.save, threading.Event(), threading.Event()

    def slow(payload, f):  # the save in progress: half written, waiting
        if payload.get("slow"):
            started.set()
            assert go.wait(scaled(30))
        real_save(payload, f)

    monkeypatch.setattr(checkpoint.torch, "save", slow)
    results = []
    writer = threading.Thread(target=lambda: results.append(
        checkpoint.write({"format": "x", "slow": True}, tmp_path / "step-0000010.pt")))
    writer.start()
    assert started.wait(scaled(30))
    (live,) = [p for p in tmp_path.iterdir() if p.name.startswith(".step-0000010.pt.")]
    checkpoint.write({"format": "x"}, tmp_path / "step-0000020.pt")
    assert live.exists()  # locked by its writer: not stale
    go.set()
    writer.join(scaled(30))
    assert results and sorted(os.listdir(tmp_path)) == ["step-0000010.pt", "step-0000020.pt"]
    assert torch.load(tmp_path / "step-0000010.pt", weights_only=True)["slow"] is True
