"""Checkpoints: exact resume, atomic writes, safe loading, periodic and best saves."""

import hashlib
import io
import os
import signal
import subprocess
import threading
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import lmwidget
from lmwidget import Callback, CheckpointError, TrainConfig
from lmwidget.checkpoint import files as checkpoint
from lmwidget.training.run import Run

from tests.conftest import TINY, wait_for

N = 30


class At(Callback):
    """Calls `action(run)` at the end of step `step` (on the training thread)."""

    def __init__(self, step, action):
        self.step, self.action = step, action

    def on_step_end(self, run, step, metrics):
        if step == self.step:
            self.action(run)


def options(**changes):
    # dropout draws from the global RNG, accumulation and a warmed-up cosine schedule move
    # the optimizer and the LR: all of it must continue exactly
    return {**TINY, "eval_interval": 10, "dropout": 0.1, "grad_accum": 2, "schedule": "cosine",
            "warmup_steps": 5, "max_steps": 2 * N, **changes}


def train(**kw):
    run = lmwidget.train(display=False, **kw)
    assert run.wait(120)
    return run


def assert_same_curve(reference, resumed, from_step=0):
    a = reference.history.set_index("step").loc[from_step + 1:]
    b = resumed.history.set_index("step").loc[from_step + 1:]
    assert list(a.index) == list(b.index)
    for column in ("loss", "grad_norm", "lr", "val_loss"):
        np.testing.assert_allclose(b[column], a[column], rtol=0, atol=1e-6, err_msg=column)
    return float(np.abs(b["loss"] - a["loss"]).max())


def test_stop_save_resume_continues_exactly(tmp_path):
    """2N steps in one go, and N steps + save + resume + N steps: the same loss at every step."""
    reference = train(**options())
    first = train(**options(), callbacks=At(N, lambda run: run.stop()), checkpoint_dir=tmp_path)
    assert first.state == "stopped" and first.step == N
    path = first.save()
    assert path == tmp_path / f"saved-{N:07d}.pt"
    resumed = train(resume=path)
    assert resumed.step == 2 * N and resumed.restored_from == str(path)
    worst = assert_same_curve(reference, resumed)
    assert worst <= 1e-6
    for a, b in zip(reference.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_save_while_paused_then_resume_continues_exactly(tmp_path):
    """An LSTM paused at step N by a callback, saved while paused (while other code draws
    from the global RNG), then stopped; the resumed run repeats the reference."""
    lstm = options(model="lstm", n_layer=2, n_embd=32)  # dropout between its two layers
    reference = train(**lstm)
    run = lmwidget.train(display=False, **lstm, callbacks=At(N, lambda r: r.pause()),
                         checkpoint_dir=tmp_path)
    wait_for(lambda: run.state == "paused", 60)
    torch.rand(100)  # the user's own code draws while the run waits
    path = run.save(tmp_path / "paused.pt")
    run.stop()
    run.wait(30)
    resumed = train(resume=path)
    assert_same_curve(reference, resumed)


def test_save_while_running_from_another_thread(tmp_path):
    """A save asked for while the loop runs is taken between two steps: whichever step it
    lands on, resuming from it repeats the rest of the reference curve."""
    reference = train(**options(max_steps=200))
    run = lmwidget.train(display=False, **options(max_steps=200), checkpoint_dir=tmp_path)
    wait_for(lambda: run.step >= 20, 60)
    path = run.save()
    run.wait(60)
    step = torch.load(path, weights_only=True)["step"]
    assert 20 <= step < 200
    resumed = train(resume=path)
    assert_same_curve(reference, resumed, from_step=step)


def test_save_from_a_callback_does_not_deadlock(tmp_path):
    paths = []
    run = train(**options(), callbacks=At(10, lambda r: paths.append(r.save())), checkpoint_dir=tmp_path)
    assert paths == [tmp_path / "saved-0000010.pt"] and run.state == "finished"


def test_save_before_start_resumes_like_a_fresh_run(tmp_path):
    reference = train(**options(max_steps=20))
    config = TrainConfig.from_options(**options(max_steps=20))
    path = Run(config).save(tmp_path / "step0.pt")
    resumed = train(resume=path)
    assert_same_curve(reference, resumed)


def test_checkpoint_holds_the_whole_run(tmp_path):
    run = train(**options(max_steps=20), checkpoint_dir=tmp_path)
    run.sample()
    run.log_event("note", 1.5, "mine")
    payload = torch.load(run.save(), weights_only=True)  # plain torch can read it, safely
    state = payload["trainer"]
    assert payload["format"] == checkpoint.FORMAT and payload["step"] == 20
    assert set(state["rng"]) == {"torch", "cuda", "python", "numpy", "batch", "eval"}
    assert state["rng"]["cuda"] is None  # a CPU run
    assert set(state["model"]) == set(run.model.state_dict())
    assert len(state["optimizer"]["state"]) == len(list(run.model.parameters()))
    assert payload["vocab"] == run.tokenizer.chars
    assert payload["config"]["dropout"] == 0.1 and payload["config"]["checkpoint_dir"] == str(tmp_path)
    assert payload["history"]["samples"][0][0] == 20  # with the history since 0.2 (0.1.0: the trainer)
    assert len(payload["history"]["columns"]["loss"]) == 20
    assert ["note", 1.5, "mine"] in [e[2:] for e in payload["history"]["events"]]


def test_resume_shows_the_earlier_history(tmp_path):
    first = train(**options(), callbacks=At(N, lambda r: r.stop()), checkpoint_dir=tmp_path)
    first.sample()
    resumed = train(resume=first.save())
    h = resumed.history
    assert list(h.step) == list(range(1, 2 * N + 1))
    assert (np.diff(h.time) >= 0).all()  # the clock goes on from where it stopped
    events = resumed.events
    assert list(events[events.kind == "restore"].step) == [N]
    assert "stop" in list(events.kind)  # the first session's events are kept
    assert resumed.samples[0][0] == N


def test_periodic_saves_keep_the_newest_and_best_follows_val_loss(tmp_path):
    run = train(**options(max_steps=55), checkpoint_every=10, keep_checkpoints=2, save_best=True,
                checkpoint_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "step-0000050.pt", "step-0000055.pt"]  # and one where it ended
    val = run.history.dropna(subset=["val_loss"])
    best = val.loc[val.val_loss.idxmin()]
    saved = checkpoint.read(tmp_path / "best.pt")
    assert saved["step"] == int(best.step)
    assert saved["trainer"]["best_val_loss"] == pytest.approx(best.val_loss)
    kinds = [c["kind"] for c in run.checkpoints]
    assert kinds.count("periodic") == 6 and kinds.count("best") >= 1
    assert checkpoint.resolve(tmp_path) == tmp_path / "step-0000055.pt"  # a directory: its newest
    assert (run.events.kind == "checkpoint").sum() == len(run.checkpoints)


def test_a_failed_periodic_save_keeps_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    run = train(**options(max_steps=20), checkpoint_every=5, checkpoint_dir=blocker / "sub")
    assert run.state == "finished" and run.checkpoints == []
    outcome, message = run._trainer.checkpointer.last
    assert outcome == "error" and "periodic save at step" in message
    with pytest.raises(OSError):
        run.save()  # asked for explicitly: the caller gets the error
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        run.save(3)


def test_save_path_variants(tmp_path):
    run = train(**options(max_steps=5), checkpoint_dir=tmp_path / "default")
    assert run.save() == tmp_path / "default" / "saved-0000005.pt"
    (tmp_path / "into").mkdir()
    assert run.save(tmp_path / "into") == tmp_path / "into" / "saved-0000005.pt"
    assert run.save(tmp_path / "named.ckpt") == tmp_path / "named.ckpt"
    assert run.save(str(tmp_path / "new") + os.sep) == tmp_path / "new" / "saved-0000005.pt"


def write_half(payload, f):
    """torch.save that dies halfway through writing the file."""
    buffer = io.BytesIO()
    REAL_SAVE(payload, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    raise KeyboardInterrupt


REAL_SAVE = torch.save


def test_interrupted_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    run = train(**options(max_steps=5))
    path = run.save(tmp_path / "run.pt")
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint.torch, "save", write_half)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.write({"format": "x"}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.pt"]  # no temporary left
    assert checkpoint.read(path)["step"] == 5


CRASH = r"""
import io, sys, time, torch, lmwidget
from lmwidget.checkpoint import files as checkpoint
from tests.conftest import TINY
run = lmwidget.train(display=False, max_steps=5, **TINY)
run.wait()
path = run.save(sys.argv[1])
real = torch.save
def slow(payload, f):
    data = io.BytesIO(); real(payload, data); data = data.getvalue()
    f.write(data[: len(data) // 2]); f.flush()
    print("HALF", flush=True)
    time.sleep(60)
checkpoint.torch.save = slow
run2 = lmwidget.train(display=False, max_steps=9, concurrent=True, **TINY)
run2.wait()
run2.save(sys.argv[1])
"""


@pytest.mark.slow
def test_process_killed_mid_write_leaves_the_old_checkpoint(tmp_path):
    """SIGKILL while the new checkpoint is half written: the old one still loads and a
    resume from the directory uses it; the partial file is a hidden temporary."""
    path = tmp_path / "ckpt" / "saved-0000005.pt"
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", CRASH, str(path)], cwd=repo, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == "HALF", child.stderr.read()
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    partial = [p for p in path.parent.iterdir() if p != path]
    assert len(partial) == 1 and partial[0].name.startswith(".saved-0000005.pt.")
    assert 0 < partial[0].stat().st_size < path.stat().st_size
    assert checkpoint.read(path)["step"] == 5
    assert checkpoint.resolve(path.parent) == path
    with pytest.raises(CheckpointError, match="is truncated"):
        checkpoint.read(partial[0])
    resumed = train(resume=path.parent, max_steps=8)
    assert resumed.step == 8


@pytest.fixture
def saved(tmp_path):
    run = train(**options(max_steps=5))
    return run.save(tmp_path / "good.pt")


def test_truncated_file_is_refused_by_name_in_whole_words(saved, tmp_path):
    bad = tmp_path / "cut.pt"
    for size in (saved.stat().st_size // 2, saved.stat().st_size - 1, 100, 3, 0):
        bad.write_bytes(saved.read_bytes()[:size])
        with pytest.raises(CheckpointError) as error:
            lmwidget.train(resume=bad, display=False)
        assert str(error.value) == (
            f"checkpoint {bad} is truncated: its {size:,} bytes end before the end of the zip archive "
            f"a whole checkpoint is (a copy or a save that was cut short, or a file still being "
            f"written). Nothing was loaded")


def rewrite_record(src: Path, dest: Path, change) -> None:
    """A valid zip (every CRC right) whose first tensor record was altered."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        tensors = [i.filename for i in zin.infolist() if "/data/" in i.filename]
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == tensors[0]:
                data = change(data)
            zout.writestr(info, data)


def test_tampered_file_is_detected(saved, tmp_path):
    bad = tmp_path / "tampered.pt"
    rewrite_record(saved, bad, lambda b: bytes([b[0] ^ 0x40]) + b[1:])
    torch.load(bad, weights_only=True)  # torch alone does not notice
    with pytest.raises(CheckpointError, match=f"{bad} does not match the digest"):
        lmwidget.train(resume=bad, display=False)


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_checkpoint_is_refused_and_its_code_never_runs(saved, tmp_path):
    marker = tmp_path / "pwned"
    payload = torch.load(saved, weights_only=True)
    payload["history"]["events"].append(Exploit(marker))
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)
    with pytest.raises(CheckpointError, match="refused.*weights_only=True") as error:
        lmwidget.train(resume=evil, display=False)
    assert str(evil) in str(error.value) and "a reference to builtins.exec" in str(error.value)
    assert "safe_globals" not in str(error.value)  # no advice to allow it
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # what an unsafe loader would have done
    assert marker.read_text() == "pwned"


def test_files_that_are_not_checkpoints(tmp_path, saved):
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match="not an lmwidget checkpoint"):
        checkpoint.read(plain)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=f"{noise}"):
        checkpoint.read(noise)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        lmwidget.train(resume=tmp_path / "missing.pt", display=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in directory"):
        checkpoint.read(tmp_path / "empty")


def test_a_refused_resume_changes_no_file(tmp_path):
    run = train(**options(max_steps=10), checkpoint_every=5, checkpoint_dir=tmp_path)
    newest = tmp_path / "step-0000010.pt"
    rewrite_record(newest, newest.with_suffix(".tmp"), lambda b: b[::-1])
    os.replace(newest.with_suffix(".tmp"), newest)

    def snapshot():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}

    before = snapshot()
    with pytest.raises(CheckpointError, match="step-0000010.pt"):
        lmwidget.train(resume=tmp_path, display=False)
    assert snapshot() == before
    assert run.state == "finished" and len(lmwidget.runs()) and lmwidget.runs()[-1] is run


def test_resume_refuses_what_would_not_continue_the_run(saved, tmp_path):
    with pytest.raises(ValueError, match="n_embd=64 differs from checkpoint .* n_embd=32"):
        lmwidget.train(resume=saved, n_embd=64, display=False)
    with pytest.raises(ValueError, match="is at step 5, and max_steps is 5: pass max_steps > 5"):
        lmwidget.train(resume=saved, max_steps=5, display=False)
    with pytest.raises(CheckpointError, match="is not what checkpoint .* was trained on"):
        lmwidget.train(resume=saved, data="hello world " * 400, max_steps=10, display=False)
    with pytest.raises(ValueError, match="model='lstm' differs"):
        lmwidget.train(resume=saved, model="lstm", max_steps=10, display=False)


def test_resume_overrides_and_keeps_the_lr_set_during_the_run(tmp_path):
    run = lmwidget.train(display=False, **options(max_steps=400, schedule="constant"),
                         checkpoint_dir=tmp_path)
    run.set_lr(1e-3)
    wait_for(lambda: run.lr == 1e-3 and run.step > 5, 60)
    run.stop()
    run.wait(30)
    path = run.save()
    assert train(resume=path, max_steps=run.step + 2).lr == 1e-3
    faster = train(resume=path, max_steps=run.step + 2, lr=5e-3, eval_interval=0)
    assert faster.lr == 5e-3 and faster.config.eval_interval == 0
    assert faster.history.lr.iloc[-1] == 5e-3


class Tiny(torch.nn.Module):
    def __init__(self, vocab=200, d=16):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.out = torch.nn.Linear(d, vocab)

    def forward(self, idx, targets=None):
        logits = self.out(self.emb(idx))
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        return torch.cat([idx, idx[:, -1:].repeat(1, max_new_tokens)], 1)


def test_resume_a_users_own_model(tmp_path):
    torch.manual_seed(0)
    reference = train(model=Tiny(), **options(max_steps=20, dropout=0.0))
    torch.manual_seed(0)
    first = train(model=Tiny(), **options(max_steps=20, dropout=0.0),
                  callbacks=At(10, lambda r: r.stop()), checkpoint_dir=tmp_path)
    path = first.save()
    with pytest.raises(ValueError, match="your own model Tiny: pass model="):
        lmwidget.train(resume=path, display=False)
    with pytest.raises(CheckpointError, match="do not fit model Tiny"):
        lmwidget.train(resume=path, model=Tiny(d=8), display=False)
    resumed = train(resume=path, model=Tiny())
    assert_same_curve(reference, resumed)


def test_digest_covers_values_and_tensor_bytes():
    a = {"x": torch.arange(4.0), "y": [1, "two", None, (3.0,)], "z": torch.tensor(5)}
    assert checkpoint.digest(a) == checkpoint.digest({**a, "x": torch.arange(4.0)})
    assert checkpoint.digest(a) != checkpoint.digest({**a, "x": torch.tensor([0.0, 1, 2, 3.5])})
    assert checkpoint.digest(a) != checkpoint.digest({**a, "y": [1, "two", None, (3.5,)]})
    assert checkpoint.digest(a) != checkpoint.digest({**a, "z": torch.tensor(5.0)})  # dtype
    with pytest.raises(TypeError, match="tensors and plain values only"):
        checkpoint.digest({"bad": np.float32(1)})


def test_a_resumed_run_saves_in_its_own_directory_and_prunes_only_its_files(tmp_path):
    """Resumed from an older checkpoint, a run is a branch: its saves must not delete or
    replace the first run's files."""
    first_dir = tmp_path / "first"
    train(**options(max_steps=20), checkpoint_every=5, keep_checkpoints=2, checkpoint_dir=first_dir)
    older = first_dir / "step-0000015.pt"
    before = {p.name: p.read_bytes() for p in first_dir.iterdir()}
    assert sorted(before) == ["step-0000015.pt", "step-0000020.pt"]
    branch = train(resume=older, max_steps=30, checkpoint_every=5, keep_checkpoints=1)
    assert branch.checkpoint_dir != first_dir and branch.checkpoint_dir.name.startswith("run-")
    assert {p.name: p.read_bytes() for p in first_dir.iterdir()} == before
    assert [p.name for p in branch.checkpoint_dir.iterdir()] == ["step-0000030.pt"]
    shared = train(resume=older, max_steps=25, checkpoint_every=5, keep_checkpoints=1,
                   checkpoint_dir=first_dir)  # asked to share: beside the first's files, never over them
    assert [c["path"] for c in shared.checkpoints] == [str(first_dir / "step-0000020.1.pt"),
                                                       str(first_dir / "step-0000025.pt")]
    assert sorted(p.name for p in first_dir.iterdir()) == ["step-0000015.pt", "step-0000020.pt",
                                                          "step-0000025.pt"]
    assert first_dir.joinpath("step-0000020.pt").read_bytes() == before["step-0000020.pt"]
    assert checkpoint.resolve(first_dir) == first_dir / "step-0000025.pt"


def test_a_save_asked_for_as_the_run_fails_is_answered(tmp_path):
    class Boom(Callback):
        def on_step_end(self, run, step, metrics):
            if step == 3:  # another thread asks for a save, due at the next boundary...
                asker = threading.Thread(target=lambda: setattr(self, "job", run.request_save(tmp_path / "late.pt")))
                asker.start()
                asker.join()
                raise RuntimeError("boom")  # ...which never comes

    boom = Boom()
    run = lmwidget.train(display=False, **options(max_steps=10), callbacks=boom)
    with pytest.raises(RuntimeError, match="boom"):
        run.wait(30)
    with pytest.raises(RuntimeError, match="the run failed at step 3 before this checkpoint"):
        boom.job.wait(5)
    assert run.save(tmp_path / "after.pt").exists()  # saving the failed run as it is works


def test_numpy_numbers_in_the_options_are_saved_as_plain_numbers(tmp_path):
    run = train(**options(max_steps=np.int64(5), lr=np.float32(3e-3)))
    payload = checkpoint.read(run.save(tmp_path / "np.pt"))
    assert type(payload["config"]["max_steps"]) is int and type(payload["config"]["lr"]) is float


def test_a_callbacks_lr_change_at_a_periodic_save_is_in_it(tmp_path):
    """A periodic checkpoint is written at the step boundary, after the requests made during
    its step: a callback halving the LR at step 10 is in step-10.pt, and resuming repeats
    the reference exactly."""
    def halve(run):
        run.set_lr(run.lr / 2)

    reference = train(**options(schedule="constant"), callbacks=At(10, halve))
    first = train(**options(schedule="constant"), callbacks=[At(10, halve), At(10, lambda r: r.stop())],
                  checkpoint_every=10, checkpoint_dir=tmp_path)
    saved = checkpoint.read(tmp_path / "step-0000010.pt")
    assert saved["trainer"]["base_lr"] == first.lr == 1.5e-3
    resumed = train(resume=tmp_path / "step-0000010.pt")
    assert_same_curve(reference, resumed)


def test_policies_resume_where_they_were(tmp_path):
    """EarlyStopping's best value and patience count travel in the checkpoint."""
    def policy():
        return lmwidget.EarlyStopping(patience=3, min_delta=0.05)

    flat = options(lr=1e-9, max_steps=200, eval_interval=10)
    reference = train(**flat, callbacks=policy())
    first = train(**flat, callbacks=[policy(), At(20, lambda r: r.stop())], checkpoint_dir=tmp_path)
    assert first.step == 20
    resumed = train(resume=first.save(), callbacks=policy())
    assert resumed.state == reference.state == "stopped"
    assert resumed.step == reference.step < 200


def test_a_refused_user_model_is_left_untouched(tmp_path):
    class TinyPlus(Tiny):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(2, 2)

    first = train(model=Tiny(), **options(max_steps=5, dropout=0.0))
    path = first.save(tmp_path / "tiny.pt")
    mine = TinyPlus()
    before = mine.emb.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"do not fit model TinyPlus: missing extra\.bias, extra\.weight"):
        lmwidget.train(resume=path, model=mine, max_steps=10, display=False)
    assert torch.equal(mine.emb.weight, before)
