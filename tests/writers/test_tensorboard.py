"""Live TensorBoard event files: read with TensorBoard's own reader while the run trains, and after."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import lmwidget
from lmwidget.writers.tensorboard import TensorBoardWriter, write_tensorboard

from tests.conftest import TINY, wait_for
from tests.harness.frameworks import own_loop
from tests.harness.jobs import TINY as TINY_ARGS

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read(logdir) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


def scalars(acc, tag) -> tuple[list, list]:
    found = acc.Scalars(tag) if tag in acc.Tags()["scalars"] else []
    return [e.step for e in found], [e.value for e in found]


def texts(acc, tag) -> str:
    name = f"{tag}/text_summary"
    if name not in acc.Tags()["tensors"]:
        return ""
    return "\n".join(s.decode() for e in acc.Tensors(name) for s in e.tensor_proto.string_val)


def writer_threads(run) -> list:
    return [t for t in threading.enumerate() if t.name == f"lmwidget-tensorboard-{run.id}"]


def open_files(directory) -> list:
    """The files under `directory` this process holds open (Linux: /proc/self/fd)."""
    fds = "/proc/self/fd"
    held = (os.path.realpath(os.path.join(fds, fd)) for fd in os.listdir(fds)) if os.path.isdir(fds) else ()
    return [p for p in held if p.startswith(str(directory.resolve()))]


def test_a_run_writes_what_tensorboard_reads_while_it_trains(tmp_path):
    logdir = tmp_path / "tb"
    run = lmwidget.train(display=False, max_steps=10**6, tensorboard=logdir, **{**TINY, "eval_interval": 20})
    try:
        wait_for(lambda: run.step >= 45, timeout=30)
        run.request_histogram(run.layers[0])
        wait_for(lambda: run.histograms, timeout=30)
        run.pause()
        wait_for(lambda: run.state == "paused", timeout=30)
        # the writer writes at once when the state changes: still training (paused), all is there
        # (one write's records reach the file in the order written: the events' text, then the
        # histograms; a read between the two sees the first only)
        layer_seen = lambda: f"weights/{run.layers[0]}" in read(logdir).Tags()["histograms"]  # noqa: E731
        wait_for(lambda: "**pause**" in texts(read(logdir), "events") and layer_seen(), timeout=10)
        acc, history = read(logdir), run.history
        assert run.state == "paused" and writer_threads(run)
        steps, losses = scalars(acc, "loss/train")
        assert steps == list(history.step) and len(steps) >= 45
        np.testing.assert_allclose(losses, history.loss, rtol=1e-6)
        np.testing.assert_allclose(scalars(acc, "lr")[1], history.lr, rtol=1e-6)
        assert scalars(acc, "loss/val")[0] == [s for s in history.step if s % 20 == 0]
        assert len(scalars(acc, "grad_norm")[0]) == len(steps)
        assert f"weights/{run.layers[0]}" in acc.Tags()["histograms"]
        assert "config/text_summary" in acc.Tags()["tensors"]
        run.stop()
        run.wait(30)
        wait_for(lambda: not writer_threads(run), timeout=10)  # ended by itself with the run
        acc, history = read(logdir), run.history
        assert scalars(acc, "loss/train")[0] == list(history.step)
        assert "**stop**" in texts(acc, "events")
        assert open_files(logdir) == []
    finally:
        run.stop()
        run.wait(30)


def test_your_own_loop_writes_them_too(tmp_path):
    model, optimizer, scheduler, train = own_loop(12)
    run = lmwidget.steer(model, optimizer, scheduler, display=False, tokens_per_step=8 * 32)
    writer = write_tensorboard(run, tmp_path)
    train.run = run
    losses = train()
    run.log_event("note", 1.5, "by hand")
    run.end()
    writer.thread.join(10)
    assert not writer.thread.is_alive() and writer.closed and writer.error is None
    acc = read(tmp_path)
    steps, values = scalars(acc, "loss/train")
    assert steps == list(range(1, 13))
    np.testing.assert_allclose(values, [float(x) for x in losses], rtol=1e-6)
    assert "**note** 1.5 by hand" in texts(acc, "events")
    writer.close()  # once ended: nothing to do


@pytest.mark.slow  # a fresh interpreter imports torch and lmwidget: ~4 s
def test_the_command_line_writes_them_from_rank_0(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lmwidget", "train", "--steps", "5", *TINY_ARGS, "--quiet",
                           "--run-dir", "r", "--tensorboard", "tb"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    acc = read(tmp_path / "tb")
    assert scalars(acc, "loss/train")[0] == [1, 2, 3, 4, 5]
    assert scalars(acc, "lr")[0] == [1, 2, 3, 4, 5] and "config/text_summary" in acc.Tags()["tensors"]
    attached = lmwidget.attach(tmp_path / "r", display=False)  # ended: read from its record
    writer = write_tensorboard(attached, tmp_path / "attached")
    writer.thread.join(10)
    assert not writer.thread.is_alive() and writer.error is None
    assert scalars(read(tmp_path / "attached"), "loss/train") == scalars(acc, "loss/train")
    attached.detach()


def test_it_says_what_to_install_and_which_logdir_it_refuses(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file; event files go into a directory"):
        TensorBoardWriter(None, tmp_path / "file")
    with pytest.raises(ValueError, match="must be a directory's path .* got 3"):
        TensorBoardWriter(None, 3)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install tensorboard, or pip install 'lmwidget\[export\]'"):
        TensorBoardWriter(None, tmp_path / "tb")
